"""Cascading randomization runs: similarity curves, fixed classes, and a real Explainer run."""

import numpy as np
import pytest
from bench_models import WeightHashExplainer
from varrt.bench import sanity


def test_similarity_is_one_at_depth_zero_and_drops_after(tiny_model_path):
    inputs = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    WeightHashExplainer.received_class_ids.clear()
    result = sanity.run_sanity(tiny_model_path, inputs, ["gradient", "gradcam"], explainer_factory=WeightHashExplainer)
    assert result.depths == [0, 1, 2, 3]
    for method in ("gradient", "gradcam"):
        for kind in ("base", "var"):
            curve = result.similarity[method][kind]
            assert curve["spearman"][0] == pytest.approx(1.0) and curve["ssim"][0] == pytest.approx(1.0)
            assert max(abs(v) for v in curve["spearman"][1:]) < 0.3
            assert max(curve["ssim"][1:]) < 0.5
        assert result.maps[method]["base"].shape == (4, 16, 16)
    # Step 0 lets the rule pick classes; every later step explains those same classes.
    received = WeightHashExplainer.received_class_ids
    assert received[0] is None and all(np.array_equal(ids[:, 0], [3, 3]) for ids in received[1:4])
    report = result.to_json()
    assert report["layers_output_first"] == ["fc", "conv2", "conv1"]


def test_similarities_skip_constant_maps_in_spearman():
    original = np.random.default_rng(1).uniform(size=(2, 8, 8))
    randomized = np.stack([original[0], np.zeros((8, 8))])
    values = sanity.similarities(original, randomized)
    assert values["spearman"] == pytest.approx(1.0)  # the all-zero map has no ranking: left out
    assert 0.5 < values["ssim"] < 1.0
