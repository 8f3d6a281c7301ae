"""Overlays: colormaps, robust scaling, channel reduction, figure layout, readable PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from varrt.overlay import (
    DIVERGING_LUT,
    SEQUENTIAL_LUT,
    colorize,
    explanation_figure,
    heatmap_overlay,
    reduce_channels,
    robust_scale,
    short_label,
)


def test_luts_run_dark_to_bright_and_blue_white_red():
    assert SEQUENTIAL_LUT.shape == (256, 3) and SEQUENTIAL_LUT.dtype == np.uint8
    brightness = SEQUENTIAL_LUT.astype(int).sum(axis=1)
    assert brightness[0] < 20 and brightness[-1] > 600
    assert np.all(np.diff(brightness[::32]) > 0)
    assert tuple(DIVERGING_LUT[128]) == pytest.approx((255, 255, 255), abs=2)
    assert DIVERGING_LUT[0, 2] > DIVERGING_LUT[0, 0]  # blue end
    assert DIVERGING_LUT[-1, 0] > DIVERGING_LUT[-1, 2]  # red end


def test_reduce_channels_is_sum_of_absolute_values():
    attribution = np.array([[[1.0, -2.0]], [[-3.0, 0.5]], [[0.0, 0.5]]], np.float32)  # [3, 1, 2]
    np.testing.assert_allclose(reduce_channels(attribution), [[4.0, 3.0]])
    cam = np.array([[1.0, -1.0]], np.float32)
    np.testing.assert_array_equal(reduce_channels(cam), cam)
    with pytest.raises(ValueError):
        reduce_channels(np.zeros((1, 1, 1, 1)))


def test_robust_scale_uses_nonzero_magnitudes():
    values = np.zeros(1000)
    values[:100] = np.arange(1, 101)  # 90% zeros, as VAR maps often are
    assert robust_scale(values) == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert robust_scale(np.zeros((4, 4))) == 1.0
    assert robust_scale(np.array([np.nan, 2.0])) == pytest.approx(2.0)


def test_colorize_clips_outliers_and_picks_the_colormap_by_sign():
    values = np.linspace(0, 1, 1600).reshape(40, 40)
    values[0, 0] = 1e6  # one hot pixel must not wash out the rest
    rgb = colorize(values)
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == tuple(SEQUENTIAL_LUT[-1])
    assert rgb[39, 30].astype(int).sum() > 500  # 0.98 of the range is still bright
    signed = colorize(np.array([[-1.0, 0.0, 1.0]]))
    assert tuple(signed[0, 0]) == tuple(DIVERGING_LUT[0])
    assert tuple(signed[0, 1]) == tuple(DIVERGING_LUT[128])
    assert tuple(signed[0, 2]) == tuple(DIVERGING_LUT[-1])
    assert tuple(colorize(np.zeros((2, 2)))[0, 0]) == tuple(SEQUENTIAL_LUT[0])


def test_heatmap_overlay_size_and_resizing():
    photo = np.full((40, 60, 3), 200, np.uint8)
    assert heatmap_overlay(photo, np.random.rand(3, 40, 60)).size == (60, 40)
    # A map at another resolution is resized to the photo.
    assert heatmap_overlay(photo, np.random.rand(10, 15)).size == (60, 40)


@pytest.mark.parametrize("with_var", [True, False])
def test_explanation_figure_layout_and_png(with_var):
    rng = np.random.default_rng(0)
    k, size = 3, 64
    photo = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    base = rng.standard_normal((k, 3, size, size)).astype(np.float32)
    var = base * (rng.random((k, 1, size, size)) > 0.8) if with_var else None
    names = ["tiger cat, Felis", "Egyptian cat", "a class name far too long to fit in one narrow tile"]
    figure = explanation_figure(
        photo, base, var, names, [0.5, 0.3, 0.001], method="guided_backprop", title="x"
    )
    columns = 2 if with_var else 1
    assert figure.width == columns * size + (columns + 1) * 6
    assert figure.height > (k + 1) * size
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG")
    reread = Image.open(io.BytesIO(buffer.getvalue()))
    reread.load()
    assert reread.format == "PNG" and reread.size == figure.size and reread.mode == "RGB"


def test_explanation_figure_for_cam_maps():
    photo = np.zeros((32, 32, 3), np.uint8)
    cams = np.random.rand(2, 32, 32).astype(np.float32)
    figure = explanation_figure(photo, cams, cams * 0.5, ["a", "b"], None, method="gradcam")
    assert figure.width == 2 * 32 + 3 * 6


def test_short_label():
    assert short_label("tiger cat, Felis tigris") == "tiger cat"
    assert short_label("class 7") == "class 7"
