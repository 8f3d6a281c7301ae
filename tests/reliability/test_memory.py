"""Memory stays bounded: large batches are split, and `varrt explain` streams its images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import testbed as models
from varrt.explainer import Explainer

_CHILD = """
import resource, sys
from varrt.cli import main
status = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(status)
"""


@pytest.mark.parametrize(("method", "runs"), [
    ("integrated_gradients", 6),  # ceil(23 / 4) backend runs, none larger than 4
    ("guided_backprop", 23),  # the CPU backend's one-image graphs: one run per image
])
def test_large_batch_is_split(tmp_path, method, runs):
    onnx.save(models.tiny_cnn(), tmp_path / "tiny.onnx")
    images = models.images(23)
    options = {"steps": 4} if method == "integrated_gradients" else {}
    with Explainer(str(tmp_path / "tiny.onnx"), method=method, backend="onnxruntime-cpu", batch_size=4,
                   cache_dir=tmp_path / "cache", **options) as explainer:
        whole = explainer(images)
        assert len(explainer.timings) == runs
        for start in (0, 4, 20):
            part = explainer(images[start : start + 4])
            np.testing.assert_array_equal(whole.var[start : start + 4], part.var)


def _peak_rss_kb(folder: Path, images: Path, out: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, "explain", "tiny.onnx", str(images), "--out", out, "-q", "--batch-size", "8"],
        capture_output=True, text=True, cwd=folder, timeout=300,
        env={"VARRT_CACHE_DIR": str(folder / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(folder)},
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("MAXRSS_KB")[1].split()[0])


def test_explain_streams_images(tmp_path):
    from PIL import Image

    onnx.save(models.tiny_cnn(size=64), tmp_path / "tiny.onnx")
    rng = np.random.default_rng(0)
    many, few = tmp_path / "many", tmp_path / "few"
    many.mkdir()
    few.mkdir()
    for i in range(500):
        pixels = rng.integers(0, 256, (80, 70, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(many / f"{i:04d}.png")
        if i < 50:
            Image.fromarray(pixels).save(few / f"{i:04d}.png")
    small = _peak_rss_kb(tmp_path, few, "out_few")
    large = _peak_rss_kb(tmp_path, many, "out_many")
    assert len(list((tmp_path / "out_many").glob("*.npz"))) == 500
    # At 64x64, one image's input, attributions and VAR maps (K=5) take ~0.5 MB: keeping 450 more
    # would add ~220 MB. The allowance covers allocator noise, not a linear growth.
    print(f"peak RSS: {small / 1024:.0f} MB for 50 images, {large / 1024:.0f} MB for 500")
    assert large - small < 20 * 1024, f"peak RSS grew by {(large - small) / 1024:.1f} MB for 450 more images"
