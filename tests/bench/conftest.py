"""Fixtures of the benchmark tests: tiny models on disk and photos they classify."""

import numpy as np
import onnx
import pytest
import testbed
from bench_models import COLOURS

TINY_SIZE = 16


@pytest.fixture
def tiny_model():
    """testbed.tiny_cnn at 16x16 with preset 'none': three layers with weights (conv1, conv2, fc)."""
    return testbed.tiny_cnn(size=TINY_SIZE, opset=17, preset="none")


@pytest.fixture
def tiny_model_path(tmp_path, tiny_model):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model, path)
    return path


@pytest.fixture
def colour_setup(tmp_path):
    """The colour classifier on disk and a folder of four solid-colour photos (classes 0..3)."""
    from PIL import Image

    model_path = tmp_path / "colours.onnx"
    onnx.save(testbed.colour_classifier(), model_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        pixels = np.clip(np.array(rgb) + rng.normal(0, 5, size=(40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(photos / f"{name}.png")
    return model_path, photos
