"""Explainer on the CPU backend with the real exporter: outputs, class rules, methods, batching, the
graph cache, errors.

Most tests explain the linear classifier of tests/testbed.py, whose logits and gradients are
known exactly (logits = flatten(x) @ W + b, d logit_k / d x = W[:, k]), so every number the
Explainer returns is checked against NumPy and the VAR formula written out in testbed. The last
tests explain a small torch CNN and compare with torch.autograd (skipped without torch). Damaged
cache entries and threads are covered in tests/reliability (test_cache.py, test_threads.py).
"""

import importlib.util

import numpy as np
import onnx
import pytest
import testbed
from onnx import numpy_helper
from testbed import softmax, top_and_min, var_reference
from varrt import Explainer, Explanation, export
from varrt.core.errors import ModelError, UsageError

SHAPE = (3, 4, 4)
NUM_CLASSES = 7
W, B = testbed.linear_weights(SHAPE, NUM_CLASSES)


@pytest.fixture
def linear_model(tmp_path):
    path = tmp_path / "linear.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE), path)
    return str(path)


def make_images(count, seed=3):
    return testbed.images(count, SHAPE, seed)


def logits_of(images):
    return images.reshape(len(images), -1).astype(np.float64) @ W + B


def gradients(class_ids):
    """d logit_k / d x of the linear model for each id in ``class_ids`` [N, K]: [N, K, *SHAPE]."""
    return W.T[np.asarray(class_ids)].reshape(*np.shape(class_ids), *SHAPE)


def explainer(path, tmp_path, **kwargs):
    kwargs.setdefault("method", "gradient")
    return Explainer(path, backend="onnxruntime-cpu", cache_dir=tmp_path / "cache", **kwargs)


def cached_graphs(tmp_path):
    return sorted((tmp_path / "cache" / "graphs").glob("*.onnx"))


def input_names(graph_path):
    return [value.name for value in onnx.load(str(graph_path)).graph.input]


# --- outputs ----------------------------------------------------------------------------------------


def test_top4_plus_min_outputs_match_independent_numbers(linear_model, tmp_path):
    images = make_images(6)
    exp = explainer(linear_model, tmp_path)
    result = exp(images)
    assert isinstance(result, Explanation)

    logits = logits_of(images)
    expected_ids = top_and_min(logits, 4)
    np.testing.assert_array_equal(result.class_ids, expected_ids)
    assert result.class_ids.dtype == np.int64
    np.testing.assert_allclose(result.logits, logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result.probabilities, softmax(logits), atol=1e-5)
    np.testing.assert_allclose(result.attributions, gradients(expected_ids), rtol=1e-6)
    np.testing.assert_allclose(result.var, var_reference(gradients(expected_ids)), rtol=1e-5, atol=1e-6)
    assert result.method == "gradient" and result.backend == "onnxruntime-cpu"
    # The rule runs in the graph: one graph, with no class_ids input, built once.
    assert list(exp.graph_paths) == ["top4+min"] and cached_graphs(tmp_path) == [exp.graph_paths["top4+min"]]
    assert input_names(exp.graph_paths["top4+min"]) == ["input"]


def test_temperature_and_tau_reach_var(linear_model, tmp_path):
    result = explainer(linear_model, tmp_path, classes="top3", temperature=5.0, tau=0.05)(make_images(4))
    expected = var_reference(gradients(result.class_ids), temperature=5.0, tau=0.05)
    assert not np.allclose(expected, var_reference(gradients(result.class_ids)))  # the options matter here
    np.testing.assert_allclose(result.var, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("classes", [3, "top3"])
def test_int_k_is_top_k(linear_model, tmp_path, classes):
    images = make_images(2)
    result = explainer(linear_model, tmp_path, classes=classes)(images)
    expected_ids = top_and_min(logits_of(images), 3, with_min=False)
    np.testing.assert_array_equal(result.class_ids, expected_ids)
    np.testing.assert_allclose(result.attributions, gradients(expected_ids), rtol=1e-6)


def test_explicit_ids_use_the_class_ids_graph(linear_model, tmp_path):
    exp = explainer(linear_model, tmp_path, classes=[6, 0, 2])
    result = exp(make_images(3))
    np.testing.assert_array_equal(result.class_ids, [[6, 0, 2]] * 3)
    np.testing.assert_allclose(result.attributions, gradients([[6, 0, 2]] * 3), rtol=1e-6)
    assert list(exp.graph_paths) == ["class_ids"]
    assert input_names(exp.graph_paths["class_ids"]) == ["input", "class_ids"]


def test_class_ids_argument_overrides_the_rule(linear_model, tmp_path):
    exp = explainer(linear_model, tmp_path)
    ids = np.array([[1, 2], [3, 4]])
    result = exp(make_images(2), class_ids=ids)
    np.testing.assert_array_equal(result.class_ids, ids)
    np.testing.assert_allclose(result.attributions, gradients(ids), rtol=1e-6)
    np.testing.assert_allclose(result.var, var_reference(gradients(ids)), rtol=1e-5, atol=1e-6)
    assert set(exp.graph_paths) == {"top4+min", "class_ids"}
    files = {path: path.stat().st_mtime_ns for path in cached_graphs(tmp_path)}
    assert len(files) == 2
    exp(make_images(2), class_ids=ids)  # both graphs are kept: no third build, no rewrite
    assert {path: path.stat().st_mtime_ns for path in cached_graphs(tmp_path)} == files


def test_var_false_returns_no_maps_and_allows_one_class(linear_model, tmp_path):
    images = make_images(2)
    result = explainer(linear_model, tmp_path, classes="top1", var=False)(images)
    assert result.var is None
    np.testing.assert_array_equal(result.class_ids, logits_of(images).argmax(axis=1)[:, None])


def test_var_in_graph_equals_var_maps(linear_model, tmp_path):
    images = make_images(3)
    outside = explainer(linear_model, tmp_path)(images)
    exp = explainer(linear_model, tmp_path, var_in_graph=True)
    inside = exp(images)
    assert "var_attributions" in [value.name for value in onnx.load(str(exp.graph_paths["top4+min"])).graph.output]
    np.testing.assert_allclose(inside.var, var_reference(gradients(inside.class_ids)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inside.var, outside.var, rtol=1e-5, atol=1e-7)


# --- methods --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "expected"),
    [
        ("gradient", {}, lambda x, g: g),
        ("input_x_gradient", {}, lambda x, g: x[:, None] * g),
        ("guided_backprop", {}, lambda x, g: g),  # no ReLU to guide
        ("smoothgrad", {"samples": 3}, lambda x, g: g),  # the gradient is the same at every sample
        # The path integral of a constant gradient: (x - baseline) * W, for any number of steps.
        ("integrated_gradients", {"steps": 3}, lambda x, g: x[:, None] * g),
        ("integrated_gradients", {"steps": 5, "baseline": 0.5}, lambda x, g: (x[:, None] - 0.5) * g),
    ],
)
def test_methods_on_a_linear_model_equal_their_closed_forms(linear_model, tmp_path, method, options, expected):
    images = make_images(3)
    ids = np.array([[0, 3], [6, 1], [2, 2]])
    result = explainer(linear_model, tmp_path, method=method, **options)(images, class_ids=ids)
    np.testing.assert_allclose(result.attributions, expected(images, gradients(ids)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 4])
def test_integrated_gradients_takes_the_steps_it_is_given(tmp_path, steps):
    """On logits = flatten(x * x) @ W + b the gradient at alpha x is 2 alpha x W, so the right
    Riemann sum over alpha = 1/S, 2/S, ... 1 gives x^2 W (S + 1) / S: the step count shows."""
    path = tmp_path / "square.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE, square=True), path)
    images = make_images(2)
    ids = np.array([[1, 5], [0, 4]])
    result = explainer(str(path), tmp_path, method="integrated_gradients", steps=steps)(images, class_ids=ids)
    expected = images[:, None] ** 2 * gradients(ids) * (steps + 1) / steps
    np.testing.assert_allclose(result.attributions, expected, rtol=1e-5, atol=1e-6)


# --- batching -----------------------------------------------------------------------------------------


def test_batches_give_the_same_result(linear_model, tmp_path):
    # Integrated gradients keeps a dynamic batch on the CPU, so batch_size decides the runs.
    images = make_images(7)
    small = explainer(linear_model, tmp_path, method="integrated_gradients", steps=2, batch_size=3)
    whole = explainer(linear_model, tmp_path, method="integrated_gradients", steps=2, batch_size=16)
    split, single = small(images), whole(images)
    for name in ("class_ids", "logits", "probabilities", "attributions", "var"):
        np.testing.assert_array_equal(getattr(split, name), getattr(single, name), err_msg=name)
    np.testing.assert_allclose(split.attributions, images[:, None] * gradients(split.class_ids), rtol=1e-5,
                               atol=1e-6)
    assert len(small.timings) == 3 and len(whole.timings) == 1
    ids = np.tile([0, 5], (7, 1))
    np.testing.assert_array_equal(small(images, ids).var, whole(images, ids).var)


def test_cpu_runs_one_image_per_call_for_methods_that_do_not_batch(linear_model, tmp_path):
    exp = explainer(linear_model, tmp_path, batch_size=3)
    images = make_images(7)
    result = exp(images)
    graph = onnx.load(str(exp.graph_paths["top4+min"]))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert len(exp.timings) == 7
    np.testing.assert_allclose(result.attributions, gradients(top_and_min(logits_of(images), 4)), rtol=1e-6)


# --- the graph cache ----------------------------------------------------------------------------------


def test_second_explainer_reuses_the_cached_graph(linear_model, tmp_path):
    first = explainer(linear_model, tmp_path)
    graph_file = first.graph_paths["top4+min"]
    assert graph_file.is_file() and graph_file.parent.parent == tmp_path / "cache"
    stamp = graph_file.stat()
    second = explainer(linear_model, tmp_path)
    # Not rebuilt: the cache writes by temp file and rename, so a rebuild would change the inode.
    assert second.graph_paths["top4+min"] == graph_file and cached_graphs(tmp_path) == [graph_file]
    assert (graph_file.stat().st_ino, graph_file.stat().st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    np.testing.assert_array_equal(second(make_images(2)).var, first(make_images(2)).var)
    # Other options or another method make another graph.
    explainer(linear_model, tmp_path, classes="top3")
    explainer(linear_model, tmp_path, method="input_x_gradient")
    assert len(cached_graphs(tmp_path)) == 3


def test_cache_dir_comes_from_the_environment(linear_model, tmp_path, monkeypatch):
    monkeypatch.setenv("VARRT_CACHE_DIR", str(tmp_path / "env-cache"))
    exp = Explainer(linear_model, method="gradient", backend="onnxruntime-cpu")
    assert exp.graph_paths["top4+min"].is_relative_to(tmp_path / "env-cache")
    assert exp.graph_paths["top4+min"].is_file()


def test_model_proto_and_path_share_the_cache_key_only_by_content(linear_model, tmp_path):
    proto = onnx.load(linear_model)
    a = Explainer(proto, method="gradient", backend="onnxruntime-cpu", cache_dir=tmp_path / "c")
    b = Explainer(proto, method="gradient", backend="onnxruntime-cpu", cache_dir=tmp_path / "c")
    assert a.graph_paths == b.graph_paths and len(list((tmp_path / "c" / "graphs").glob("*.onnx"))) == 1


# --- errors -------------------------------------------------------------------------------------------


def test_bad_inputs_are_usage_errors(linear_model, tmp_path):
    exp = explainer(linear_model, tmp_path)
    with pytest.raises(UsageError, match=r"batch \[N, C, H, W\]"):
        exp(make_images(1)[0])
    with pytest.raises(UsageError, match="float32"):
        exp(np.zeros((1, *SHAPE), np.uint8))
    with pytest.raises(UsageError, match="empty"):
        exp(np.zeros((0, *SHAPE), np.float32))
    with pytest.raises(UsageError, match="size 5 on axis 3"):
        exp(np.zeros((1, 3, 4, 5), np.float32))
    with pytest.raises(UsageError, match="class_ids has 1 rows but there are 2 images"):
        exp(make_images(2), class_ids=[[1, 2]])
    with pytest.raises(UsageError, match="class id 7 is out of range: the model has 7 classes"):
        exp(make_images(1), class_ids=[[1, 7]])
    with pytest.raises(UsageError, match="VAR needs at least 2"):
        exp(make_images(1), class_ids=[[1]])
    np.testing.assert_array_equal(exp(make_images(2).astype(np.float64)).var, exp(make_images(2)).var)


def test_bad_construction_is_reported(linear_model, tmp_path):
    with pytest.raises(UsageError, match=r"top8\+min.* 7$"):  # the exporter refuses the rule
        explainer(linear_model, tmp_path, classes="top8+min")
    with pytest.raises(UsageError, match="class id 7 is out of range"):
        explainer(linear_model, tmp_path, classes=[0, 7])
    with pytest.raises(UsageError, match="VAR needs at least 2"):
        explainer(linear_model, tmp_path, classes=1)
    with pytest.raises(UsageError, match="batch_size"):
        explainer(linear_model, tmp_path, batch_size=0)
    with pytest.raises(UsageError, match="unknown method 'nonsense'"):
        explainer(linear_model, tmp_path, method="nonsense")
    with pytest.raises(UsageError, match="unknown method option.*stepz"):
        explainer(linear_model, tmp_path, method="integrated_gradients", stepz=4)
    with pytest.raises(ModelError, match="missing.onnx"):
        explainer(str(tmp_path / "missing.onnx"), tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_without_tensorrt_is_a_usage_error(linear_model, tmp_path):
    with pytest.raises(UsageError, match="backend tensorrt is not available: TensorRT not installed"):
        Explainer(linear_model, method="gradient", backend="tensorrt", cache_dir=tmp_path)


def test_backend_name_and_repr(linear_model, tmp_path, caplog):
    caplog.set_level("INFO", logger="varrt")
    exp = Explainer(linear_model, method="gradient", device="cpu", cache_dir=tmp_path)
    assert exp.backend_name == "onnxruntime-cpu"
    assert "on backend onnxruntime-cpu" in caplog.text
    assert (
        repr(exp) == "Explainer(method='gradient', classes='top4+min', backend='onnxruntime-cpu', var=True)"
    )
    with exp:
        pass
    assert exp.timings == []


# --- a torch CNN, against torch.autograd ----------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_cnn(tmp_path_factory):
    """Conv, ReLU, MaxPool, Conv, ReLU, average pool, Linear; exported with a dynamic batch."""
    torch = pytest.importorskip("torch", reason="torch is the autograd reference")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()
    path = tmp_path_factory.mktemp("tiny") / "tiny_cnn.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
                      opset_version=17, dynamo=False)  # fmt: skip
    return str(path), model


def torch_attributions(model, images, class_ids, guided):
    """d logit[n, class_ids[n, k]] / d x by torch.autograd, [N, K, C, H, W]. ``guided``: every ReLU
    passes back only positive gradients where its input was positive (guided backprop)."""
    import torch

    class GuidedRelu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad.clamp(min=0) * (x > 0)

    def forward(x):
        for layer in model:
            x = GuidedRelu.apply(x) if guided and isinstance(layer, torch.nn.ReLU) else layer(x)
        return x

    x = torch.from_numpy(images).requires_grad_(True)
    logits = forward(x)
    rows = torch.arange(len(images))
    grads = [torch.autograd.grad(logits[rows, torch.from_numpy(class_ids[:, k])].sum(), x, retain_graph=True)[0]
             for k in range(class_ids.shape[1])]
    return torch.stack(grads, dim=1).detach().numpy()


@pytest.mark.parametrize("method", ["gradient", "guided_backprop"])
def test_explainer_on_a_torch_cnn_matches_autograd(torch_cnn, tmp_path, method):
    import torch

    path, model = torch_cnn
    images = np.random.default_rng(0).normal(size=(5, 3, 16, 16)).astype(np.float32)
    result = Explainer(path, method=method, backend="onnxruntime-cpu", cache_dir=tmp_path, batch_size=2)(images)

    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    np.testing.assert_array_equal(result.class_ids, top_and_min(logits, 4))
    np.testing.assert_allclose(result.logits, logits, rtol=1e-4, atol=1e-5)
    expected = torch_attributions(model, images, result.class_ids, guided=method == "guided_backprop")
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(result.attributions, expected, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(result.var, var_reference(result.attributions), rtol=1e-4, atol=1e-6 * scale)


def test_cpu_explainer_runs_one_image_graphs_that_match_the_batched_graph(tmp_path):
    """On the CPU the Explainer fixes the batch to 1 (guided masks then take the bias form of
    export/bias_masks.py) and runs image by image: same numbers as the dynamic graph on the batch."""
    torch = pytest.importorskip("torch", reason="the model is exported from torch")
    import onnxruntime as ort

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU6(), torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()  # fmt: skip
    path = tmp_path / "relu6_cnn.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, opset_version=17, dynamo=False)
    images = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    explainer = Explainer(str(path), method="guided_backprop", backend="onnxruntime-cpu", cache_dir=tmp_path)
    result = explainer(images)

    graph = onnx.load(str(explainer.graph_paths["top4+min"]))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    scalings = [init for init in graph.graph.initializer if np.all(numpy_helper.to_array(init) == 2.0**100)]
    assert scalings  # the weights of the bias form's scaling convolutions
    assert len(explainer.timings) == 3  # one run per image

    batched = export.explain_graph(str(path), "guided_backprop", classes="top4+min")
    session = ort.InferenceSession(batched.SerializeToString(), providers=["CPUExecutionProvider"])
    ids, attributions = session.run(["class_ids", "attributions"], {"input": images})
    np.testing.assert_array_equal(result.class_ids, ids)
    scale = float(np.abs(attributions).max())
    np.testing.assert_allclose(result.attributions, attributions, rtol=1e-5, atol=1e-6 * scale)
