"""Audit figures of one image's explanation: the numbers ``results.parquet`` holds per class.

An auditing pipeline reads these instead of millions of maps: how concentrated each VAR map is,
where it peaks, how much of the image VAR keeps, and how decided the class distribution M is.

Every figure is defined on the *pixel map* of a class: a VAR map [C, H, W] of an input-space method
([H, W, C] for channels-last models, ``layout="nhwc"``) summed over its channels (signed), a CAM's
[H, W] map as it is. ``pixel_maps`` computes them; the
same reduction is what ``varrt explain --save var`` stores.

- ``top_mass_share``: of the map's positive mass, sum(max(v, 0)), the share that lies in its
  top 5% of pixels (ceil(0.05 * H * W) pixels with the largest values). 1.0 = all the evidence in
  a few pixels; 0.05 = spread evenly. NaN when the map has no positive value.
- ``peak``: (row, col) of the map's largest value (the first in row-major order on ties);
  (-1, -1) when the map is zero everywhere.
- ``kept_fraction``: the fraction of pixels where VAR is nonzero (in any channel): what VAR's
  mask [M_k - 1/K > tau] and the attribution itself left of the image.
- ``class_entropy``: M = softmax(T * |A|) over the K classes at every position (every channel of
  every pixel; |A| divided by the image's largest |A| first with ``var_scale="max"``), exactly
  the M of ``varrt.kernels.var_maps``; its entropy -sum_k M_k ln M_k in nats, averaged over the
  positions. ln K = M uniform (no class stands out anywhere), 0 = one class takes all everywhere.
  One number per image, not per class.

>>> import numpy as np
>>> var = np.zeros((1, 4, 5), np.float32); var[0, 1, 2] = 3.0
>>> top_mass_share(var[0]), peak(var[0]), kept_fraction(var[0])
(1.0, (1, 2), 0.05)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from varrt.core import layout as image_layout

#: The share of pixels whose mass ``top_mass_share`` measures.
TOP_FRACTION = 0.05


def pixel_maps(maps: np.ndarray, layout: str = image_layout.NCHW) -> np.ndarray:
    """[K, C, H, W] ([K, H, W, C] with ``layout="nhwc"``) input-space maps summed over channels, or
    [K, H, W] CAMs as they are: [K, H, W]."""
    maps = np.asarray(maps)
    return maps.sum(axis=image_layout.channel_axis(layout, 4)) if maps.ndim == 4 else maps


def top_mass_share(pixel_map: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Share of the positive mass of ``pixel_map`` [H, W] held by its top ``fraction`` of pixels."""
    positive = np.maximum(np.asarray(pixel_map, np.float64).ravel(), 0.0)
    total = positive.sum()
    if total <= 0:
        return math.nan
    count = max(1, math.ceil(fraction * positive.size))
    top = np.partition(positive, positive.size - count)[positive.size - count:]
    return float(top.sum() / total)


def peak(pixel_map: np.ndarray) -> tuple[int, int]:
    """(row, col) of the largest value of ``pixel_map`` [H, W]; (-1, -1) when it is all zero."""
    pixel_map = np.asarray(pixel_map)
    if not pixel_map.any():
        return (-1, -1)
    row, col = np.unravel_index(int(np.argmax(pixel_map)), pixel_map.shape)
    return (int(row), int(col))


def kept_fraction(var_map: np.ndarray, layout: str = image_layout.NCHW) -> float:
    """Fraction of pixels where ``var_map`` ([C, H, W], [H, W, C] with ``layout="nhwc"``, or [H, W])
    is nonzero in any channel."""
    var_map = np.asarray(var_map)
    kept = var_map.any(axis=image_layout.channel_axis(layout, 3)) if var_map.ndim == 3 else var_map != 0
    return float(kept.mean())


def class_entropy(attributions: np.ndarray, temperature: float, var_scale: str = "none") -> float:
    """Mean over positions of the entropy (nats) of M = softmax(T * |A|) over the K classes.

    ``attributions`` is one image's [K, ...]; ``var_scale`` as in ``varrt.kernels.var_maps``.
    """
    z = np.abs(np.asarray(attributions, np.float64))
    if var_scale == "max":
        largest = z.max()
        z = z / largest if largest > 0 else z
    z = temperature * z
    z -= z.max(axis=0, keepdims=True)
    total = np.exp(z).sum(axis=0)
    m = np.exp(z) / total
    # -sum M ln M with ln M = z - ln(total): finite even where M underflows to 0.
    entropy = np.log(total) - (m * z).sum(axis=0)
    return float(entropy.mean())


def image_figures(attributions: np.ndarray, var: np.ndarray | None, temperature: float,
                  var_scale: str = "none", layout: str = image_layout.NCHW) -> dict[str, Any]:
    """The audit figures of one image: per-class lists (None without VAR) and the entropy of M;
    ``layout`` says where input-space maps keep their channels."""
    figures: dict[str, Any] = {"class_entropy": class_entropy(attributions, temperature, var_scale)}
    if var is None:
        return figures | {"top_mass_share": None, "peak_row": None, "peak_col": None, "kept_fraction": None}
    maps = pixel_maps(var, layout)
    peaks = [peak(m) for m in maps]
    return figures | {
        "top_mass_share": [top_mass_share(m) for m in maps],
        "peak_row": [p[0] for p in peaks],
        "peak_col": [p[1] for p in peaks],
        "kept_fraction": [kept_fraction(v, layout) for v in var],
    }
