"""varrt.core.layout: the one rule that says where an image input keeps its channels."""

import numpy as np
import pytest
from varrt import audit, overlay
from varrt.core import layout
from varrt.core.errors import UsageError


@pytest.mark.parametrize(("dims", "expected"), [
    ((1, 224, 224, 3), "nhwc"),          # Keras / tf2onnx
    ((None, 28, 28, 1), "nhwc"),         # grayscale, dynamic batch
    ((None, None, None, 3), "nhwc"),     # TensorFlow's None sizes
    ((1, 3, 224, 224), "nchw"),          # PyTorch
    ((None, 1, 28, 28), "nchw"),
    ((None, 3, None, None), "nchw"),
    ((1, 3, 32, 3), "nchw"),             # 3 both second and last: ONNX's convention wins
    ((1, 1, 8, 1), "nchw"),
    ((1, 64, 64, 4), "nchw"),            # 4 bands: not an image channel count, needs the override
    ((None, None, None, None), "nchw"),
    ((1, 784), "nchw"),                  # not an image: the attributions keep the input's own axes
    ((1, 3, 8, 8, 3), "nchw"),
])
def test_detect(dims, expected):
    assert layout.detect(dims) == expected


def test_resolve_checks_the_override():
    assert layout.resolve((1, 64, 64, 4), "nhwc") == "nhwc"
    assert layout.resolve((1, 224, 224, 3), "nchw") == "nchw"
    with pytest.raises(UsageError, match="--layout must be one of nchw, nhwc"):
        layout.resolve((1, 224, 224, 3), "hwc")
    with pytest.raises(UsageError, match="4-D image inputs"):
        layout.resolve((1, 784), "nhwc")


def test_axes():
    assert [layout.channel_axis("nchw", n) for n in (3, 4, 5)] == [0, 1, 2]
    assert [layout.channel_axis("nhwc", n) for n in (3, 4, 5)] == [2, 3, 4]
    assert layout.image_dims("nhwc", 3, 24, 32) == (24, 32, 3)
    assert layout.channels_height_width("nhwc", (None, 24, 32, 3)) == (3, 24, 32)
    assert layout.channels_height_width("nchw", (None, 3, 24, 32)) == (3, 24, 32)


def test_check_batch_names_the_layouts():
    layout.check_batch((2, 24, 32, 3), (None, 24, 32, 3), "nhwc", "image", "m.onnx")
    with pytest.raises(UsageError, match=r"are channels-first \[N, C, H, W\], but input 'image' of m.onnx is "
                       r"channels-last \[N, H, W, C\]"):
        layout.check_batch((2, 3, 24, 32), (None, 24, 32, 3), "nhwc", "image", "m.onnx")
    with pytest.raises(UsageError, match="images have 1 channels, but input 'image' of m.onnx takes 3 on axis 3"):
        layout.check_batch((2, 24, 32, 1), (None, 24, 32, 3), "nhwc", "image", "m.onnx")
    layout.check_batch((2, 24, 32, 4), (None, 24, 32, None), "nhwc", "image", "m.onnx")  # dynamic channels


def test_overlay_and_audit_sum_the_last_axis_of_channels_last_maps():
    maps = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype(np.float32)  # [K, H, W, C]
    first = maps.transpose(0, 3, 1, 2)  # the same maps channels-first
    np.testing.assert_allclose(overlay.reduce_channels(maps[0], "nhwc"), overlay.reduce_channels(first[0]))
    np.testing.assert_allclose(overlay.reduce_channels(maps[0], "nhwc"), np.abs(maps[0]).sum(axis=-1), rtol=1e-6)
    np.testing.assert_array_equal(audit.pixel_maps(maps, "nhwc"), audit.pixel_maps(first))
    sparse = np.zeros((5, 6, 3), np.float32)
    sparse[1, 2, 0] = sparse[3, 4, 2] = 1.0
    assert audit.kept_fraction(sparse, "nhwc") == pytest.approx(2 / 30)
    assert overlay.heatmap_overlay(np.zeros((5, 6, 3), np.uint8), maps[0], layout="nhwc").size == (6, 5)
