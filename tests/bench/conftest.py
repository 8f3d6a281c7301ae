"""Fixtures of the benchmark tests: tiny models on disk and photos they classify."""

import numpy as np
import onnx
import pytest
from bench_models import COLOURS, color_classifier, tiny_classifier


@pytest.fixture
def tiny_model():
    return tiny_classifier()


@pytest.fixture
def tiny_model_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(), path)
    return path


@pytest.fixture
def colour_setup(tmp_path):
    """The colour classifier on disk and a folder of four solid-colour photos (classes 0..3)."""
    from PIL import Image

    model_path = tmp_path / "colours.onnx"
    onnx.save(color_classifier(), model_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        pixels = np.clip(np.array(rgb) + rng.normal(0, 5, size=(40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(photos / f"{name}.png")
    return model_path, photos
