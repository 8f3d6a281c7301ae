"""varrt.audit: each figure of results.parquet against a value computed by hand on a tiny map."""

from __future__ import annotations

import math

import numpy as np
import pytest
from varrt import audit


def test_pixel_maps_sum_channels_and_keep_cams():
    maps = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # K=2, C=3
    np.testing.assert_array_equal(audit.pixel_maps(maps)[1, 0, 0], 12 + 16 + 20)
    cams = np.ones((2, 4, 5), np.float32)
    np.testing.assert_array_equal(audit.pixel_maps(cams), cams)


def test_top_mass_share_by_hand():
    # 20 pixels, so the top 5% is one pixel. Positive mass 6 + 3 * 2 = 12; the -5 does not count.
    pixel_map = np.zeros((2, 10), np.float32)
    pixel_map[0, 4] = 6.0
    pixel_map[1, [0, 1, 2]] = 2.0
    pixel_map[1, 9] = -5.0
    assert audit.top_mass_share(pixel_map) == pytest.approx(6 / 12)
    # The top 20% = ceil(4) pixels: 6 + 2 + 2 + 2, all of it.
    assert audit.top_mass_share(pixel_map, fraction=0.2) == pytest.approx(1.0)
    # 21 pixels: 5% is 1.05, rounded up to 2 pixels: 6 + 2.
    assert audit.top_mass_share(np.concatenate([pixel_map.ravel(), [0.0]])[None], 0.05) == pytest.approx(8 / 12)
    assert math.isnan(audit.top_mass_share(-np.abs(pixel_map)))  # no positive mass


def test_peak_by_hand():
    pixel_map = np.zeros((3, 4), np.float32)
    pixel_map[1, 3] = 2.0
    pixel_map[2, 0] = 2.0  # a tie: the first in row-major order wins
    pixel_map[0, 0] = -9.0
    assert audit.peak(pixel_map) == (1, 3)
    assert audit.peak(np.zeros((3, 4))) == (-1, -1)


def test_kept_fraction_counts_pixels_not_channels():
    var = np.zeros((2, 2, 2), np.float32)  # C=2, H=W=2
    var[0, 0, 0] = 1.0
    var[1, 0, 0] = -1.0  # the same pixel again
    var[1, 1, 1] = 0.5
    assert audit.kept_fraction(var) == 0.5  # pixels (0,0) and (1,1) of 4
    assert audit.kept_fraction(var[1]) == 0.5  # a CAM-like [H, W] map
    assert audit.kept_fraction(np.zeros((2, 2))) == 0.0


def test_class_entropy_by_hand():
    # K=2, two positions. Position 0: T|A| = [ln 3, 0], so M = [3/4, 1/4] and its entropy is
    # ln 4 - (3/4) ln 3; position 1: A = 0, M uniform, entropy ln 2. The sign of A does not matter.
    t = 10.0
    a = np.array([[-math.log(3) / t, 0.0], [0.0, 0.0]], np.float32)
    expected = ((math.log(4) - 0.75 * math.log(3)) + math.log(2)) / 2
    assert audit.class_entropy(a, t) == pytest.approx(expected, rel=1e-6)
    # var_scale="max" divides |A| by the image's largest |A| (here 2) before T = ln 3 multiplies it.
    scaled = np.array([[2.0, 0.0], [0.0, 0.0]], np.float32)
    assert audit.class_entropy(scaled, math.log(3), "max") == pytest.approx(expected, rel=1e-6)
    # One class taking everything: entropy 0 (no NaN where M underflows).
    assert audit.class_entropy(np.array([[1e4], [0.0]]), t) == pytest.approx(0.0, abs=1e-12)


def test_image_figures_per_class_and_without_var():
    var = np.zeros((2, 3, 4, 5), np.float32)  # K=2, C=3, 4x5 pixels
    var[0, :, 1, 2] = 1.0
    var[1, 0, 3, 4] = 2.0
    var[1, 1, 0, 0] = 1.0
    figures = audit.image_figures(var, var, temperature=10.0)
    assert figures["peak_row"] == [1, 3] and figures["peak_col"] == [2, 4]
    assert figures["kept_fraction"] == [1 / 20, 2 / 20]
    assert figures["top_mass_share"] == [1.0, pytest.approx(2 / 3)]
    none = audit.image_figures(var, None, temperature=10.0)
    assert none["top_mass_share"] is None and none["peak_row"] is None and none["kept_fraction"] is None
    assert none["class_entropy"] == figures["class_entropy"]
