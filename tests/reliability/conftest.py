"""Shared fixtures of the reliability tests: tiny models and images on disk, and a `varrt` runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import reliability_models as models
from PIL import Image


def varrt_command() -> list[str]:
    script = Path(sys.executable).parent / "varrt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "varrt.cli"]


def run_varrt(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VARRT_CACHE_DIR=str(cwd / ".varrt-cache"))
    return subprocess.run([*varrt_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def write_png(path: Path, size: tuple[int, int] = (12, 12), seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    onnx.save(models.tiny_cnn(), tmp_path / "tiny.onnx")
    for k in range(3):
        write_png(tmp_path / f"img{k}.png", seed=k)
    return tmp_path
