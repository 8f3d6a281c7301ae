"""Images in: decode PNG/JPEG, resize and crop the way ImageNet models expect, normalise, batch.

The default geometry is the ImageNet evaluation convention: scale the image so that it covers the
model's input at ``1 / 0.875`` of its size (shorter side 256 for a 224 input), then cut the
centre. ``resize="stretch"`` instead resizes straight to the input size, ignoring aspect ratio.

>>> import varrt.data, varrt.images
>>> prep = varrt.images.Preprocessing(size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3)
>>> x = varrt.images.load_image(varrt.data.demo_images()[0], prep)
>>> x.shape, x.dtype
((3, 224, 224), dtype('float32'))

Channels-last models (``varrt.core.layout``) get [H, W, C] images: ``preprocessing_for`` reads the
layout off the model, ``Preprocessing(layout="nhwc")`` sets it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
from PIL import Image, UnidentifiedImageError
from varrt.core import layout as image_layout
from varrt.core.errors import ModelError, UsageError, VarrtError
from varrt.export.model_loading import read_model

ResizeMode = Literal["crop", "stretch"]

# Fraction of the resized image kept by the centre crop (224 of 256), as ImageNet evaluation does.
CROP_FRACTION = 0.875

# Pixel normalisation presets on 0..1 pixels: (mean, std) per RGB channel.
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # (x - 0.5) / 0.5, i.e. pixels in -1..1: Inception, TF-slim and EfficientNet-Lite checkpoints.
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

# Keys varrt reads from an ONNX model's metadata_props to learn its preprocessing.
META_PRESET = "varrt.preset"
META_MEAN = "varrt.mean"
META_STD = "varrt.std"

DEFAULT_SIZE = (224, 224)


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes a model input: target size (H, W), per-channel mean/std on 0..1 pixels.

    ``channels`` is 3 (RGB) or 1 (grayscale, for models with a one-channel input); ``layout`` is
    "nchw" (inputs [C, H, W]) or "nhwc" (inputs [H, W, C], for channels-last models).
    """

    size: tuple[int, int] = DEFAULT_SIZE
    mean: tuple[float, ...] = PRESETS["imagenet"][0]
    std: tuple[float, ...] = PRESETS["imagenet"][1]
    resize: ResizeMode = "crop"
    channels: int = 3
    layout: str = image_layout.NCHW

    def __post_init__(self) -> None:
        if self.layout not in image_layout.LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(image_layout.LAYOUTS)}, not {self.layout!r}")
        if self.channels not in (1, 3):
            raise UsageError(f"images must have 1 or 3 channels, not {self.channels}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise UsageError(f"--{name} needs 1 or {self.channels} values, got {len(values)}")
        if any(s == 0 for s in self.std):
            raise UsageError("--std values must be non-zero")
        if min(self.size) < 1:
            raise UsageError(f"image size must be positive, got {self.size}")
        if self.resize not in ("crop", "stretch"):
            raise UsageError(f"unknown resize mode {self.resize!r}; use 'crop' or 'stretch'")


def preset(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) of a named preset; a UsageError lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def image_input_shape(model: onnx.ModelProto | str | os.PathLike[str]) -> tuple[int | None, ...]:
    """Shape of the model's first real input (not an initializer); None for symbolic dimensions.

    A path is read with ``varrt.export.model_loading.read_model``; pass the ModelProto when the
    model is used for more than this, so it is read once."""
    proto = read_model(model)
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initializers]
    if not inputs:
        raise ModelError("the model has no inputs")
    dims = inputs[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def input_size(model: onnx.ModelProto | str | os.PathLike[str], layout: str | None = None) -> tuple[int, int] | None:
    """The static (H, W) of the model's image input (its layout detected, or ``layout``), or None
    when they are symbolic."""
    shape = image_input_shape(model)
    if len(shape) != 4:
        raise ModelError(f"expected a 4-D image input [N, C, H, W] or [N, H, W, C], the model's is {len(shape)}-D")
    _, height, width = image_layout.channels_height_width(image_layout.resolve(shape, layout), shape)
    if height is None or width is None:
        return None
    return height, width


def preprocessing_for(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    preset_name: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: tuple[int, int] | None = None,
    resize: ResizeMode = "crop",
    layout: str | None = None,
) -> Preprocessing:
    """Preprocessing for ``model``: explicit arguments win, then the model's metadata, then ImageNet.

    The layout is the model input's (``varrt.core.layout``), or ``layout`` when given. The size
    comes from the graph when its input is static, else ``size``, else 224x224. The
    normalisation comes from ``mean``/``std`` (each overrides the preset's), else ``preset_name``,
    else the model's ``varrt.mean``/``varrt.std`` or ``varrt.preset`` metadata, else "imagenet".
    """
    proto = read_model(model)
    shape = image_input_shape(proto)
    if len(shape) != 4:
        raise ModelError(f"expected a 4-D image input [N, C, H, W] or [N, H, W, C], the model's is {len(shape)}-D")
    chosen_layout = image_layout.resolve(shape, layout)
    model_channels = image_layout.channels_height_width(chosen_layout, shape)[0]
    if model_channels is not None and model_channels > 0 and model_channels not in (1, 3):
        raise UsageError(f"the model's input {shape} takes {model_channels} channels (axis "
                         f"{image_layout.channel_axis(chosen_layout, 4)}) as {image_layout.describe(chosen_layout)}; "
                         "images have 3 (RGB) or 1 (grayscale): pass --layout if the layout is wrong")
    channels = model_channels if model_channels in (1, 3) else 3
    graph_size = input_size(proto, chosen_layout)
    if graph_size is not None and size is not None and tuple(size) != graph_size:
        raise UsageError(
            f"the model's input is fixed at {graph_size[0]}x{graph_size[1]}, not {size[0]}x{size[1]}"
        )
    chosen_size = graph_size or size or DEFAULT_SIZE

    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    if preset_name is not None:
        base_mean, base_std = preset(preset_name)
    elif META_MEAN in metadata and META_STD in metadata:
        base_mean = _parse_floats(metadata[META_MEAN], META_MEAN)
        base_std = _parse_floats(metadata[META_STD], META_STD)
    elif META_PRESET in metadata:
        base_mean, base_std = preset(metadata[META_PRESET])
    else:
        base_mean, base_std = PRESETS["imagenet"]
    final_mean = tuple(float(v) for v in mean) if mean is not None else base_mean
    final_std = tuple(float(v) for v in std) if std is not None else base_std
    if channels == 1:
        # A grayscale model takes one channel: fold three-channel statistics to their average.
        final_mean = (float(np.mean(final_mean)),) if len(final_mean) == 3 else final_mean
        final_std = (float(np.mean(final_std)),) if len(final_std) == 3 else final_std
    return Preprocessing(size=chosen_size, mean=final_mean, std=final_std, resize=resize, channels=channels,
                         layout=chosen_layout)


def _parse_floats(text: str, key: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ModelError(f"model metadata {key}={text!r} is not a comma-separated list of numbers") from None


def read_image(path: str | os.PathLike[str], channels: int = 3) -> Image.Image:
    """Decode a PNG/JPEG (anything Pillow reads) to RGB (or L); a VarrtError names bad files."""
    name = os.fspath(path)
    try:
        with Image.open(name) as image:
            # Pillow decodes lazily: convert() forces the decode inside this try, so a truncated
            # file fails here with its name rather than later in the pipeline.
            return image.convert("RGB" if channels == 3 else "L")
    except FileNotFoundError:
        raise VarrtError(f"no such image file: {name}") from None
    except IsADirectoryError:
        raise VarrtError(f"{name} is a directory, not an image") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise VarrtError(f"cannot decode image {name}: {error}") from None


def check_readable(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Raise a VarrtError naming the first file that is not an image Pillow can read.

    Reads headers (and, where the format allows, checks the data without decoding it: PNG CRCs),
    so a run fails on a bad file before it writes any output, without holding any pixels.
    """
    for path in paths:
        name = os.fspath(path)
        try:
            with Image.open(name) as image:
                image.verify()
        except FileNotFoundError:
            raise VarrtError(f"no such image file: {name}") from None
        except IsADirectoryError:
            raise VarrtError(f"{name} is a directory, not an image") from None
        except Exception as error:  # UnidentifiedImageError, SyntaxError from verify(), OSError...
            raise VarrtError(f"cannot decode image {name}: {str(error).strip() or type(error).__name__}") from None


def fit(image: Image.Image, size: tuple[int, int], resize: ResizeMode = "crop") -> Image.Image:
    """Resize to (H, W): scale to cover ``size / 0.875`` and centre-crop, or stretch."""
    height, width = size
    if resize == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    # One scale for both axes keeps the aspect ratio; for a square input this is exactly
    # "shorter side to size / 0.875" (256 for 224).
    scale = max(height / image.height, width / image.width) / CROP_FRACTION
    scaled_w = max(width, round(image.width * scale))
    scaled_h = max(height, round(image.height * scale))
    scaled = image.resize((scaled_w, scaled_h), Image.Resampling.BILINEAR)
    top = int(round((scaled_h - height) / 2.0))
    left = int(round((scaled_w - width) / 2.0))
    return scaled.crop((left, top, left + width, top + height))


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float],
              layout: str = image_layout.NCHW) -> np.ndarray:
    """uint8 pixels [H, W, C] or [H, W] -> float32 (pixels / 255 - mean) / std, [C, H, W] (or
    [H, W, C] for ``layout="nhwc"``)."""
    values = pixels.astype(np.float32) / np.float32(255.0)
    if values.ndim == 2:
        values = values[:, :, None]
    mean_array = np.asarray(mean, dtype=np.float32)
    std_array = np.asarray(std, dtype=np.float32)
    normalized = (values - mean_array) / std_array
    return np.ascontiguousarray(normalized.transpose(2, 0, 1) if layout == image_layout.NCHW else normalized)


def load_pixels(path: str | os.PathLike[str], prep: Preprocessing) -> np.ndarray:
    """The resized, cropped uint8 pixels of a file, [H, W, 3] or [H, W] - what overlays draw on."""
    return np.asarray(fit(read_image(path, prep.channels), prep.size, prep.resize))


def load_image(
    path: str | os.PathLike[str], prep: Preprocessing | None = None, **options: Any
) -> np.ndarray:
    """One file as a model input, float32 [C, H, W] ([H, W, C] for a channels-last ``prep``);
    ``options`` build a Preprocessing if none given."""
    prep = prep if prep is not None else Preprocessing(**options)
    return normalize(load_pixels(path, prep), prep.mean, prep.std, prep.layout)


@dataclass
class Batch:
    """A batch of files: their paths, display pixels [B, H, W, 3] uint8 and inputs [B, C, H, W]
    ([B, H, W, C] for a channels-last Preprocessing)."""

    paths: list[str]
    pixels: np.ndarray
    inputs: np.ndarray


def iter_batches(
    paths: Sequence[str | os.PathLike[str]], prep: Preprocessing, batch_size: int = 16
) -> Iterator[Batch]:
    """Stream batches of at most ``batch_size`` images; only one batch is in memory at a time."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, len(paths), batch_size):
        chunk = [os.fspath(p) for p in paths[start : start + batch_size]]
        pixels = np.stack([load_pixels(p, prep) for p in chunk])
        inputs = np.stack([normalize(p, prep.mean, prep.std, prep.layout) for p in pixels])
        yield Batch(paths=chunk, pixels=pixels, inputs=inputs)
