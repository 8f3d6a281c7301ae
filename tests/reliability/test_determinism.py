"""The CPU backend is deterministic: same inputs, bit-identical outputs, across Explainers and
across processes (export included)."""

from __future__ import annotations

import numpy as np
import onnx
import testbed as models
from varrt.explainer import Explainer
from varrt.export import explain_graph

FIELDS = ("class_ids", "logits", "probabilities", "attributions", "var")


def test_two_explainers_are_bit_identical(tmp_path):
    onnx.save(models.tiny_cnn(), tmp_path / "tiny.onnx")
    images = models.images(5)
    results = []
    for run in range(2):  # separate caches: the graph is built twice, not shared
        with Explainer(str(tmp_path / "tiny.onnx"), method="integrated_gradients", backend="onnxruntime-cpu",
                       batch_size=2, cache_dir=tmp_path / f"cache{run}", steps=4) as explainer:
            results.append(explainer(images))
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(results[0], field), getattr(results[1], field), err_msg=field)


def test_smoothgrad_noise_is_seeded(tmp_path):
    model = models.tiny_cnn()
    first = explain_graph(model, "smoothgrad", samples=3)
    second = explain_graph(model, "smoothgrad", samples=3)
    assert first.SerializeToString(deterministic=True) == second.SerializeToString(deterministic=True)


def test_two_processes_are_bit_identical(workdir):
    outputs = []
    for run in range(2):
        result = models.run_varrt("explain", "tiny.onnx", "img0.png", "img1.png", "img2.png", "--out", f"out{run}",
                                  "-q", "--no-overlays", "--batch-size", "2", cwd=workdir)
        assert result.returncode == 0, result.stderr
        exported = models.run_varrt("export", "tiny.onnx", "-m", "guided_gradcam", "-o", f"graph{run}.onnx",
                                    cwd=workdir)
        assert exported.returncode == 0, exported.stderr
        outputs.append(run)
        # each process builds its own graph from scratch
        for entry in (workdir / ".varrt-cache").rglob("*.onnx"):
            entry.unlink()
    assert (workdir / "graph0.onnx").read_bytes() == (workdir / "graph1.onnx").read_bytes()
    for name in ("img0", "img1", "img2"):
        first, second = np.load(workdir / "out0" / f"{name}.npz"), np.load(workdir / "out1" / f"{name}.npz")
        assert set(first.files) == set(second.files)
        for key in first.files:
            np.testing.assert_array_equal(first[key], second[key], err_msg=f"{name}: {key}")
