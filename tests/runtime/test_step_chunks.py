"""step_batch: the Explainer runs a batched-step method's steps in chunks and adds them up
(Captum's internal_batch_size); the sum equals the whole batch's result."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import testbed
from varrt import Explainer
from varrt.core.errors import UsageError
from varrt.export import explain_graph


@pytest.fixture
def cnn_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(testbed.tiny_cnn(seed=3), path)
    return str(path)


def _explain(path, tmp_path, images, class_ids=None, **options):
    with Explainer(path, backend="onnxruntime-cpu", classes="top2+min", cache_dir=tmp_path / "cache",
                   batch_size=2, **options) as explainer:
        return explainer(images, class_ids=class_ids)


@pytest.mark.parametrize("step_batch", [1, 3, 7, 40])
def test_integrated_gradients_in_chunks_equals_all_steps_at_once(cnn_path, tmp_path, step_batch):
    """7 steps: chunks of 1 (7 runs), 3 (3, 3, 1), 7 and 40 (one run); classes chosen by the first chunk."""
    images = testbed.images(3, seed=4)
    whole = _explain(cnn_path, tmp_path, images, method="integrated_gradients", steps=7)
    chunked = _explain(cnn_path, tmp_path, images, method="integrated_gradients", steps=7, step_batch=step_batch)
    np.testing.assert_array_equal(chunked.class_ids, whole.class_ids)
    np.testing.assert_array_equal(chunked.logits, whole.logits)
    np.testing.assert_allclose(chunked.attributions, whole.attributions, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.var, whole.var, rtol=1e-4, atol=1e-6)


def test_fed_class_ids_in_chunks(cnn_path, tmp_path):
    images = testbed.images(2, seed=5)
    ids = np.array([[0, 2], [1, 1]])
    whole = _explain(cnn_path, tmp_path, images, ids, method="integrated_gradients", steps=5)
    chunked = _explain(cnn_path, tmp_path, images, ids, method="integrated_gradients", steps=5, step_batch=2)
    np.testing.assert_allclose(chunked.attributions, whole.attributions, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["smoothgrad", "gradient_shap"])
def test_sampled_methods_in_chunks_without_noise(cnn_path, tmp_path, method):
    """Without noise SmoothGrad's samples are all the image, so chunks of 2 of 5 samples give the gradient;
    gradient_shap's points stay random, so its chunks are checked on their sum of weights: a linear model."""
    images = testbed.images(2, seed=6)
    if method == "smoothgrad":
        gradient = _explain(cnn_path, tmp_path, images, method="gradient")
        chunked = _explain(cnn_path, tmp_path, images, method=method, samples=5, noise=0.0, step_batch=2)
        np.testing.assert_allclose(chunked.attributions, gradient.attributions, rtol=1e-5, atol=1e-6)
        return
    weights, bias = testbed.linear_weights(testbed.SHAPE, 7)
    path = tmp_path / "linear.onnx"
    onnx.save(testbed.linear_classifier(weights, bias, testbed.SHAPE), path)
    chunked = _explain(str(path), tmp_path, images, method=method, samples=5, noise=0.0, baseline=0.1, step_batch=2)
    expected = (images[:, None] - 0.1) * weights.T.reshape(7, *testbed.SHAPE)[chunked.class_ids]
    np.testing.assert_allclose(chunked.attributions, expected, rtol=1e-5, atol=1e-6)


def test_step_batch_refusals(cnn_path, tmp_path):
    with pytest.raises(UsageError, match="step-batch is for methods that batch"):
        explain_graph(cnn_path, "gradient", step_batch=4)
    with pytest.raises(UsageError, match="step-batch must be a positive integer"):
        explain_graph(cnn_path, "integrated_gradients", step_batch=0)
    with pytest.raises(UsageError, match="VAR cannot be computed inside the graph"):
        Explainer(cnn_path, method="smoothgrad", step_batch=2, var_in_graph=True, cache_dir=tmp_path)


def test_cli_export_with_step_batch(cnn_path, tmp_path):
    result = testbed.run_varrt("export", cnn_path, "-m", "integrated_gradients", "--step-batch", "4", "-o", "ig.onnx",
                               cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [i.name for i in onnx.load(tmp_path / "ig.onnx").graph.input] == ["x", "alphas", "class_ids"]
    refused = testbed.run_varrt("export", cnn_path, "-m", "gradcam", "--step-batch", "4", "-o", "cam.onnx",
                                cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--step-batch is for methods that batch steps or samples, not gradcam" in refused.stderr
    assert not (tmp_path / "cam.onnx").exists()
