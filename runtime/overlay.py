"""Attribution maps drawn over photos, as PNG-ready Pillow images (no matplotlib needed).

Display choices, made once here so every figure varrt writes reads the same way:

- Input-space maps [C, H, W] ([H, W, C] for channels-last models, ``layout="nhwc"``; gradient,
  guided backprop, integrated gradients...) are reduced to
  one value per pixel by the sum of absolute values over channels: it shows where the model is
  sensitive whatever the sign, the usual way such maps are shown (Simonyan et al. take the max
  over channels; the sum is smoother and keeps every channel's evidence).
- Maps already at [H, W] (Grad-CAM and its VAR) are drawn as they are: non-negative ones with the
  sequential colormap, maps with negative values with a blue-white-red diverging one (0 is white).
- Each map is scaled by the 99th percentile of its non-zero magnitudes and clipped, so a few hot
  pixels do not wash the rest out. Non-zero only because VAR zeroes most positions by design: a
  percentile over all pixels would often be 0.

>>> import numpy as np, varrt.overlay
>>> photo = np.zeros((32, 32, 3), np.uint8)
>>> varrt.overlay.heatmap_overlay(photo, np.random.rand(3, 32, 32)).size
(32, 32)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from varrt.core import layout as image_layout

# Anchor colours of a perceptually ordered dark-to-bright map in the manner of matplotlib's
# 'inferno' (values sampled by eye, interpolated linearly to 256 entries).
_SEQUENTIAL_ANCHORS = np.array(
    [
        (0, 0, 4),
        (40, 11, 84),
        (101, 21, 110),
        (159, 42, 99),
        (212, 72, 66),
        (245, 125, 21),
        (250, 193, 39),
        (252, 255, 164),
    ],
    dtype=np.float64,
)
# Blue - white - red, for signed maps: negative evidence blue, positive red.
_DIVERGING_ANCHORS = np.array([(59, 76, 192), (255, 255, 255), (180, 4, 38)], dtype=np.float64)

ROBUST_PERCENTILE = 99.0
# How much of the heatmap shows over the photo; the sequential map's dark end then dims
# irrelevant regions instead of hiding them.
OVERLAY_ALPHA = 0.6

_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
_MARGIN = 6


def _lut(anchors: np.ndarray, entries: int = 256) -> np.ndarray:
    positions = np.linspace(0.0, 1.0, len(anchors))
    grid = np.linspace(0.0, 1.0, entries)
    channels = [np.interp(grid, positions, anchors[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=1)).astype(np.uint8)


SEQUENTIAL_LUT = _lut(_SEQUENTIAL_ANCHORS)
DIVERGING_LUT = _lut(_DIVERGING_ANCHORS)


def reduce_channels(attribution: np.ndarray, layout: str = image_layout.NCHW) -> np.ndarray:
    """[C, H, W] ([H, W, C] with ``layout="nhwc"``) -> [H, W] by the sum of absolute values over
    channels; [H, W] passes through."""
    values = np.asarray(attribution, dtype=np.float32)
    if values.ndim == 3:
        return np.abs(values).sum(axis=image_layout.channel_axis(layout, 3))
    if values.ndim == 2:
        return values
    raise ValueError(f"expected an attribution map [C, H, W] or [H, W], got shape {values.shape}")


def robust_scale(values: np.ndarray, percentile: float = ROBUST_PERCENTILE) -> float:
    """The percentile of the non-zero magnitudes of ``values``; 1.0 for an all-zero map."""
    magnitudes = np.abs(values[np.isfinite(values)])
    magnitudes = magnitudes[magnitudes > 0]
    if magnitudes.size == 0:
        return 1.0
    scale = float(np.percentile(magnitudes, percentile))
    return scale if scale > 0 else float(magnitudes.max())


def colorize(map2d: np.ndarray, signed: bool | None = None) -> np.ndarray:
    """A 2-D map as uint8 RGB [H, W, 3], robustly normalised; ``signed=None`` picks by the data."""
    values = np.nan_to_num(np.asarray(map2d, dtype=np.float32))
    if signed is None:
        signed = bool(values.min() < 0)
    scale = robust_scale(values)
    if signed:
        unit = np.clip(values / scale, -1.0, 1.0) * 0.5 + 0.5
        lut = DIVERGING_LUT
    else:
        unit = np.clip(values / scale, 0.0, 1.0)
        lut = SEQUENTIAL_LUT
    return lut[np.round(unit * 255).astype(np.intp)]


def heatmap_overlay(pixels: np.ndarray, attribution: np.ndarray, alpha: float = OVERLAY_ALPHA,
                    layout: str = image_layout.NCHW) -> Image.Image:
    """Blend one attribution map (input-space [C, H, W], or [H, W, C] with ``layout="nhwc"``, or
    [H, W]) over a uint8 photo [H, W, 3]."""
    photo = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
    heat = Image.fromarray(colorize(reduce_channels(attribution, layout)))
    if heat.size != photo.size:
        # CAM maps are at input resolution already; this covers maps from other pipelines.
        heat = heat.resize(photo.size, Image.Resampling.BILINEAR)
    return Image.blend(photo, heat, alpha)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _fit_text(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def short_label(name: str) -> str:
    """The first synonym of an ImageNet-style label ("tiger cat, Felis..." -> "tiger cat")."""
    return name.split(",")[0].strip()


def explanation_figure(
    pixels: np.ndarray,
    attributions: np.ndarray,
    var: np.ndarray | None,
    class_names: Sequence[str],
    probabilities: Sequence[float] | None = None,
    *,
    method: str = "attribution",
    title: str = "",
    layout: str = image_layout.NCHW,
) -> Image.Image:
    """One figure per image: the photo on top, then per class a row [base map | VAR map].

    ``attributions`` and ``var`` are [K, C, H, W] ([K, H, W, C] with ``layout="nhwc"``) or
    [K, H, W]; ``class_names`` and
    ``probabilities`` have K entries and label each row. Without ``var`` the rows hold the base
    map alone.
    """
    photo = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
    tile_w, tile_h = photo.size
    kinds = [method] + (["VAR"] if var is not None else [])
    font = _font(max(11, tile_w // 16))
    line_h = int(getattr(font, "size", 11)) + 2 * _MARGIN
    width = len(kinds) * tile_w + (len(kinds) + 1) * _MARGIN
    rows = len(class_names)
    height = 2 * line_h + tile_h + rows * (line_h + tile_h) + _MARGIN * (rows + 2)

    figure = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(figure)

    def write(x: int, y: int, text: str, room: int) -> None:
        draw.text((x, y + _MARGIN // 2), _fit_text(draw, text, font, room), fill=_TEXT, font=font)

    y = _MARGIN
    write(_MARGIN, y, title or "input", width - 2 * _MARGIN)
    y += line_h
    figure.paste(photo, ((width - tile_w) // 2, y))
    y += tile_h + _MARGIN
    # Column headers once; each row is then labelled with its class over the full width.
    for column, kind in enumerate(kinds):
        write(_MARGIN + column * (tile_w + _MARGIN), y, kind, tile_w)
    y += line_h
    for k, name in enumerate(class_names):
        label = f"#{k + 1} {short_label(name)}"
        if probabilities is not None:
            label += f"  p={float(probabilities[k]):.3f}"
        write(_MARGIN, y, label, width - 2 * _MARGIN)
        y += line_h
        maps = [attributions[k]] + ([var[k]] if var is not None else [])
        for column, attribution in enumerate(maps):
            figure.paste(heatmap_overlay(pixels, attribution, layout=layout),
                         (_MARGIN + column * (tile_w + _MARGIN), y))
        y += tile_h + _MARGIN
    return figure
