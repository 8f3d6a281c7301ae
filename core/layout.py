"""Where an image input keeps its channels: the one place that decides it.

PyTorch and ONNX's own ops are channels-first, [N, C, H, W] ("nchw"); Keras/TensorFlow models
converted with tf2onnx and TFLite conversions are channels-last, [N, H, W, C] ("nhwc"). varrt
follows the model: input-space attributions come out with the image's own axes ([N, K, C, H, W]
or [N, K, H, W, C]), CAMs as [N, K, H, W] either way, and preprocessing, overlays and audits read
the channel axis from here.

The rule, on the image input's shape (None for a dynamic dimension):

    channels-last  when the last dimension is 1 or 3 and the second is not
    channels-first otherwise (ONNX's convention; also every input that is not 4-D)

A 4-channel or 16-band model, or an input whose sizes are all dynamic, needs ``layout="nhwc"``
(``--layout nhwc``) when it is channels-last.

>>> detect((1, 224, 224, 3)), detect((None, 3, None, None)), detect((1, 3, 32, 3))
('nhwc', 'nchw', 'nchw')
>>> channel_axis("nhwc", 4), channel_axis("nchw", 5)
(3, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from varrt.core.errors import UsageError

NCHW, NHWC = "nchw", "nhwc"
LAYOUTS = (NCHW, NHWC)
_IMAGE_CHANNELS = (1, 3)

Dims = Sequence[int | None]


def detect(dims: Dims) -> str:
    """The layout of an image input of shape ``dims`` (None for dynamic dimensions), by the rule above."""
    if len(dims) == 4 and dims[3] in _IMAGE_CHANNELS and dims[1] not in _IMAGE_CHANNELS:
        return NHWC
    return NCHW


def resolve(dims: Dims, override: str | None = None) -> str:
    """``override`` when given (checked), else the detected layout of ``dims``."""
    if override is None:
        return detect(dims)
    if override not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, not {override!r}")
    if len(dims) != 4:
        raise UsageError(f"--layout {override} is for 4-D image inputs, but the model's input has {len(dims)} "
                         "dimensions")
    return override


def channel_axis(layout: str, ndim: int) -> int:
    """The channel axis of an array whose last three axes are one image's ((C, H, W) or (H, W, C)):
    an image batch (ndim 4), one image's maps [K, ...] (4), attributions [N, K, ...] (5)."""
    return ndim - 3 if layout == NCHW else ndim - 1


def image_dims(layout: str, channels: int | None, height: int | None, width: int | None) -> tuple:
    """One image's shape in ``layout``: (C, H, W) or (H, W, C)."""
    return (channels, height, width) if layout == NCHW else (height, width, channels)


def channels_height_width(layout: str, dims: Dims) -> tuple:
    """(C, H, W) of a 4-D image batch shape [N, ...] in ``layout``."""
    if layout == NCHW:
        return tuple(dims[1:4])
    return (dims[3], dims[1], dims[2])


def to_channels_first(array: Any, layout: str) -> Any:
    """An array whose last three axes are one image's: (H, W, C) -> (C, H, W) for "nhwc"; "nchw" as is."""
    if layout == NCHW:
        return array
    n = array.ndim
    return array.transpose(*range(n - 3), n - 1, n - 3, n - 2)


def from_channels_first(array: Any, layout: str) -> Any:
    """The inverse of ``to_channels_first``: (C, H, W) -> (H, W, C) for "nhwc"."""
    if layout == NCHW:
        return array
    n = array.ndim
    return array.transpose(*range(n - 3), n - 2, n - 1, n - 3)


def describe(layout: str) -> str:
    """How messages name a layout: "channels-first [N, C, H, W]"."""
    return "channels-first [N, C, H, W]" if layout == NCHW else "channels-last [N, H, W, C]"


def check_batch(shape: Dims, model_dims: Dims, layout: str, input_name: str, model: str) -> None:
    """Refuse, in one line, an image batch whose channel axis is not where the model keeps it: an
    [N, C, H, W] batch for a channels-last model, or the other way round. Sizes other than the channel
    count are the graph's to check."""
    if len(shape) != 4 or len(model_dims) != 4:
        return
    want = channels_height_width(layout, model_dims)[0]
    have = channels_height_width(layout, shape)[0]
    if want is None or want < 1 or have == want:
        return
    other = NHWC if layout == NCHW else NCHW
    if channels_height_width(other, shape)[0] == want:
        raise UsageError(f"images of shape {tuple(shape)} are {describe(other)}, but input '{input_name}' of {model} "
                         f"is {describe(layout)}: give the images as {describe(layout)}, or pass --layout "
                         "(layout=...) if the detected layout is wrong")
    raise UsageError(f"images have {have} channels, but input '{input_name}' of {model} takes {want} on axis "
                     f"{channel_axis(layout, 4)} (shape {tuple(shape)}; the input is {describe(layout)})")
