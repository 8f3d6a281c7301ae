"""The numbers the quality benchmarks report, in plain NumPy (no SciPy needed at run time).

- ``channel_sum`` / ``channel_abs_sum``: one 2-D map per explanation, from [.., C, H, W] (or
  channels-last [.., H, W, C]) or [.., H, W] attributions.
- ``positive_mass_share``: the grid pointing game score of one map and one cell.
- ``bootstrap_mean_interval``: mean and a seeded percentile-bootstrap interval.
- ``spearman`` and ``ssim``: similarity of two maps for the randomization sanity checks.
- ``normalised_auc``: area under a perturbation curve (insertion / deletion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from varrt.core import layout as image_layout


def to_host(array: Any) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy one (GPU backends return CuPy arrays)."""
    if type(array).__module__.split(".")[0] == "cupy":
        array = array.get()
    return np.asarray(array)


def channel_sum(attributions: np.ndarray, spatial_ndim: int = 2, has_channels: bool | None = None,
                layout: str = image_layout.NCHW) -> np.ndarray:
    """Sum a signed attribution over its channel axis, keeping the sign.

    Input-space methods give [..., C, H, W] ([..., H, W, C] for channels-last models, ``layout="nhwc"``);
    CAM methods already give [..., H, W]. Pass
    ``has_channels`` when the leading shape alone cannot tell (the benchmarks know the
    explanation's rank). Summing before taking the positive part follows the pointing game's
    reading of a map: a pixel points at a class when its channels together raise the logit.
    """
    attributions = np.asarray(attributions, dtype=np.float64)
    if has_channels is None:
        has_channels = attributions.ndim > spatial_ndim + 2
    if not has_channels:
        return attributions
    return attributions.sum(axis=-spatial_ndim - 1 if layout == image_layout.NCHW else -1)


def channel_abs_sum(attributions: np.ndarray, has_channels: bool | None = None,
                    layout: str = image_layout.NCHW) -> np.ndarray:
    """Sum of absolute values over the channel axis: how much a pixel matters, either sign.

    The sanity checks compare magnitudes, as Adebayo et al. do, so channels with opposite
    signs must not cancel.
    """
    return channel_sum(np.abs(np.asarray(attributions, dtype=np.float64)), has_channels=has_channels, layout=layout)


def positive_mass_share(saliency: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Share of the positive saliency mass that lies inside ``region``.

    ``saliency`` is [..., H, W] (channel-reduced); ``region`` a boolean [H, W] mask. A map with
    no positive mass points nowhere and scores 0, not NaN: an empty explanation is a failure.
    """
    positive = np.clip(np.asarray(saliency, dtype=np.float64), 0.0, None)
    total = positive.sum(axis=(-2, -1))
    inside = (positive * np.asarray(region, dtype=bool)).sum(axis=(-2, -1))
    share = np.zeros_like(total)
    np.divide(inside, total, out=share, where=total > 0)
    return share


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def bootstrap_mean_interval(
    values: np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Interval:
    """Mean of ``values`` and a percentile-bootstrap interval (same seed, same interval)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(float(values.mean()), float(low), float(high), int(values.size))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties sharing the average of their ranks."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], values.size]
    group_rank = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened); NaN when either map is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.size != rb.size:
        raise ValueError(f"maps differ in size: {ra.size} vs {rb.size}")
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def _box_means(image: np.ndarray, size: int) -> np.ndarray:
    """Means over every full size x size window (the 'valid' part of a uniform filter)."""
    integral = np.pad(image, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)
    sums = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    return sums / float(size * size)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, window: int = 7) -> float:
    """Mean structural similarity of two 2-D maps (Wang et al. 2004, uniform window).

    Same definition as scikit-image's ``structural_similarity`` with its defaults (7x7 uniform
    window, K1 = 0.01, K2 = 0.03, sample covariance, mean over windows that lie fully inside
    the image), so the two agree to rounding.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim needs two 2-D maps of one shape, got {a.shape} and {b.shape}")
    if min(a.shape) < window:
        raise ValueError(f"maps of shape {a.shape} are smaller than the {window}x{window} window")
    pixels = window * window
    sample = pixels / (pixels - 1.0)
    mean_a, mean_b = _box_means(a, window), _box_means(b, window)
    var_a = sample * (_box_means(a * a, window) - mean_a * mean_a)
    var_b = sample * (_box_means(b * b, window) - mean_b * mean_b)
    cov = sample * (_box_means(a * b, window) - mean_a * mean_b)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    numerator = (2 * mean_a * mean_b + c1) * (2 * cov + c2)
    denominator = (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    return float((numerator / denominator).mean())


def unit_scale(saliency: np.ndarray) -> np.ndarray:
    """Divide a non-negative map by its maximum so SSIM's data range is 1 (all-zero stays zero)."""
    saliency = np.asarray(saliency, dtype=np.float64)
    peak = saliency.max() if saliency.size else 0.0
    return saliency / peak if peak > 0 else np.zeros_like(saliency)


def normalised_auc(curve: np.ndarray) -> float:
    """Trapezoidal area under a curve sampled at evenly spaced fractions 0..1."""
    curve = np.asarray(curve, dtype=np.float64).ravel()
    if curve.size < 2:
        raise ValueError("a perturbation curve needs at least two points")
    return float(((curve[1:] + curve[:-1]) / 2.0).mean())
