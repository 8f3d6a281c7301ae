"""Bundled data: the demo model (EfficientNet-Lite0), photos and ImageNet labels.

Everything here ships inside the wheel, so ``varrt demo`` needs no network. Sources and
licenses are recorded in README.md beside this file.

>>> import varrt.data
>>> varrt.data.demo_model_path().name
'efficientnet_lite0.onnx'
>>> len(varrt.data.imagenet_labels())
1000
"""

from __future__ import annotations

import functools
import pathlib

__all__ = ["DATA_DIR", "demo_images", "demo_model_path", "imagenet_labels"]

DATA_DIR = pathlib.Path(__file__).resolve().parent

DEMO_MODEL = "efficientnet_lite0.onnx"
DEMO_PHOTOS = ("chelsea.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg")
IMAGENET_LABELS = "imagenet_classes.txt"


def demo_model_path() -> pathlib.Path:
    """Path of the bundled EfficientNet-Lite0 ImageNet classifier (ONNX, opset 17, input 224x224)."""
    return DATA_DIR / DEMO_MODEL


def demo_images() -> list[pathlib.Path]:
    """Paths of the bundled photos (a cat, a coffee cup, a rocket launch, an astronaut)."""
    return [DATA_DIR / name for name in DEMO_PHOTOS]


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index = class id (WordNet synonyms, comma-separated)."""
    text = (DATA_DIR / IMAGENET_LABELS).read_text(encoding="utf-8")
    return tuple(text.splitlines())
