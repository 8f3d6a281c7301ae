"""Fixtures of the reliability tests (the tiny models and helpers are in tests/testbed.py)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import testbed as models


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    onnx.save(models.tiny_cnn(), tmp_path / "tiny.onnx")
    for k in range(3):
        models.write_png(tmp_path / f"img{k}.png", seed=k)
    return tmp_path
