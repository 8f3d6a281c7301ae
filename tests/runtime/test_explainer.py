"""Explainer on the CPU backend: outputs, class rules, batching, the graph cache, errors.

Two kinds of explanation graph are used. Most tests replace ``varrt.export.explain_graph`` with
a hand-built graph of a linear classifier (test_backends.linear_explanation_graph), whose logits
and gradients are known exactly, so every number the Explainer returns can be computed
independently. The tests at the end use the real exporter on a small torch CNN and compare the
Explainer with the explanation graph run directly by ONNX Runtime plus ``var_maps``.
"""

import threading

import numpy as np
import onnx
import pytest
import varrt
from onnx import numpy_helper
from test_backends import SHAPE, linear_classifier, linear_explanation_graph, linear_weights
from varrt import Explainer, Explanation, export
from varrt.core.errors import ModelError, UsageError

T, TAU = 10.0, 0.01


def var_reference(attributions, temperature=T, tau=TAU):
    """The paper's VAR step written out in float64, independent of varrt.kernels."""
    a = attributions.astype(np.float64)
    k = a.shape[1]
    scaled = temperature * np.abs(a)
    e = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    m = e / e.sum(axis=1, keepdims=True)
    return a * m * (m - 1.0 / k > tau)


class FakeExporter:
    """Stands in for varrt.export.explain_graph on linear classifiers; counts its calls."""

    def __init__(self):
        self.calls = []

    def __call__(
        self, model, method="gradient", *, classes=None, var=False, temperature=10.0, tau=0.01, **kw
    ):
        self.calls.append({"method": method, "classes": classes, "var": var, **kw})
        proto = onnx.load(model) if isinstance(model, str) else model
        weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        graph = linear_explanation_graph(weights["W"], weights["b"], classes=classes)
        return add_var_output(graph, temperature, tau) if var else graph


def add_var_output(graph, temperature, tau):
    import onnx_ir as ir
    from onnx_ir.tape import Tape
    from varrt.kernels import append_var

    model = ir.serde.deserialize_model(graph)
    attributions = next(v for v in model.graph.outputs if v.name == "attributions")
    tape = Tape()
    var = append_var(tape, attributions, temperature=temperature, tau=tau, opset=17)
    for node in tape.nodes:
        model.graph.append(node)
    var.name = "var_attributions"
    model.graph.outputs.append(var)
    return ir.serde.serialize_model(model)


@pytest.fixture
def fake_export(monkeypatch):
    exporter = FakeExporter()
    monkeypatch.setattr(export, "explain_graph", exporter, raising=False)
    return exporter


@pytest.fixture
def linear_model(tmp_path):
    weights, bias = linear_weights()
    path = tmp_path / "linear.onnx"
    onnx.save(linear_classifier(weights, bias), path)
    return str(path), weights, bias


def make_images(count, seed=3):
    return np.random.default_rng(seed).normal(size=(count, *SHAPE)).astype(np.float32)


def explainer(path, tmp_path, **kwargs):
    kwargs.setdefault("method", "gradient")
    return Explainer(path, backend="onnxruntime-cpu", cache_dir=tmp_path / "cache", **kwargs)


# --- outputs ----------------------------------------------------------------------------------------


def test_top4_plus_min_outputs_match_independent_numbers(fake_export, linear_model, tmp_path):
    path, weights, bias = linear_model
    images = make_images(6)
    result = explainer(path, tmp_path)(images)
    assert isinstance(result, Explanation)

    logits = images.reshape(6, -1).astype(np.float64) @ weights + bias
    ranked = np.argsort(-logits, axis=1)
    expected_ids = np.concatenate([ranked[:, :4], ranked[:, -1:]], axis=1)
    np.testing.assert_array_equal(result.class_ids, expected_ids)
    assert result.class_ids.dtype == np.int64
    np.testing.assert_allclose(result.logits, logits, rtol=1e-4, atol=1e-4)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(result.probabilities, softmax / softmax.sum(1, keepdims=True), atol=1e-5)
    attributions = weights.T[expected_ids].reshape(6, 5, *SHAPE)
    np.testing.assert_allclose(result.attributions, attributions, rtol=1e-6)
    np.testing.assert_allclose(result.var, var_reference(attributions), rtol=1e-5, atol=1e-6)
    assert result.method == "gradient" and result.backend == "onnxruntime-cpu"
    # The rule runs in the graph: one graph, with no class_ids input, built once.
    assert [call["classes"] for call in fake_export.calls] == ["top4+min"]


def test_matches_graph_run_directly_and_var_maps(fake_export, linear_model, tmp_path):
    import onnxruntime as ort
    from varrt.kernels import var_maps

    path, _, _ = linear_model
    images = make_images(4)
    result = explainer(path, tmp_path, classes="top3", temperature=5.0, tau=0.05)(images)
    graph = fake_export(path, "gradient", classes="top3")
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, attributions, class_ids = session.run(["logits", "attributions", "class_ids"], {"input": images})
    np.testing.assert_array_equal(result.class_ids, class_ids)
    np.testing.assert_array_equal(result.logits, logits)
    np.testing.assert_array_equal(result.attributions, attributions)
    np.testing.assert_array_equal(result.var, var_maps(attributions, 5.0, 0.05))


@pytest.mark.parametrize("classes", [3, "top3"])
def test_int_k_is_top_k(fake_export, linear_model, tmp_path, classes):
    path, weights, bias = linear_model
    images = make_images(2)
    result = explainer(path, tmp_path, classes=classes)(images)
    logits = images.reshape(2, -1) @ weights + bias
    np.testing.assert_array_equal(result.class_ids, np.argsort(-logits, axis=1)[:, :3])


def test_explicit_ids_use_the_class_ids_graph(fake_export, linear_model, tmp_path):
    path, weights, _ = linear_model
    result = explainer(path, tmp_path, classes=[6, 0, 2])(make_images(3))
    np.testing.assert_array_equal(result.class_ids, [[6, 0, 2]] * 3)
    np.testing.assert_allclose(result.attributions, weights.T[[[6, 0, 2]] * 3].reshape(3, 3, *SHAPE))
    assert [call["classes"] for call in fake_export.calls] == [None]


def test_class_ids_argument_overrides_the_rule(fake_export, linear_model, tmp_path):
    path, weights, _ = linear_model
    exp = explainer(path, tmp_path)
    ids = np.array([[1, 2], [3, 4]])
    result = exp(make_images(2), class_ids=ids)
    np.testing.assert_array_equal(result.class_ids, ids)
    np.testing.assert_allclose(result.attributions, weights.T[ids].reshape(2, 2, *SHAPE))
    np.testing.assert_allclose(result.var, var_reference(result.attributions), rtol=1e-5, atol=1e-6)
    assert [call["classes"] for call in fake_export.calls] == ["top4+min", None]
    exp(make_images(2), class_ids=ids)  # both graphs are kept: no third build
    assert len(fake_export.calls) == 2


def test_var_false_returns_no_maps_and_allows_one_class(fake_export, linear_model, tmp_path):
    path, _, _ = linear_model
    result = explainer(path, tmp_path, classes="top1", var=False)(make_images(2))
    assert result.var is None and result.class_ids.shape == (2, 1)


def test_var_in_graph_equals_var_maps(fake_export, linear_model, tmp_path):
    path, _, _ = linear_model
    images = make_images(3)
    outside = explainer(path, tmp_path)(images)
    inside = explainer(path, tmp_path, var_in_graph=True)(images)
    assert fake_export.calls[-1]["var"] is True
    np.testing.assert_allclose(inside.var, outside.var, rtol=1e-5, atol=1e-7)


# --- batching -----------------------------------------------------------------------------------------


def test_batches_give_the_same_result(fake_export, linear_model, tmp_path):
    path, _, _ = linear_model
    images = make_images(7)
    small = explainer(path, tmp_path, batch_size=3)
    whole = explainer(path, tmp_path, batch_size=16)
    split, single = small(images), whole(images)
    for name in ("class_ids", "logits", "probabilities", "attributions", "var"):
        np.testing.assert_array_equal(getattr(split, name), getattr(single, name), err_msg=name)
    assert len(small.timings) == 3 and len(whole.timings) == 1
    ids = np.tile([0, 5], (7, 1))
    np.testing.assert_array_equal(small(images, ids).var, whole(images, ids).var)


def test_threads_share_one_explainer(fake_export, linear_model, tmp_path):
    path, _, _ = linear_model
    exp = explainer(path, tmp_path, batch_size=2)
    batches = [make_images(5, seed) for seed in range(6)]
    expected = [exp(images) for images in batches]
    results = [None] * len(batches)

    def work(index):
        for _ in range(5):
            results[index] = exp(batches[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got.var, want.var)
        np.testing.assert_array_equal(got.class_ids, want.class_ids)


# --- the graph cache ----------------------------------------------------------------------------------


def test_second_explainer_reuses_the_cached_graph(fake_export, linear_model, tmp_path):
    path, _, _ = linear_model
    first = explainer(path, tmp_path)
    graph_file = first.graph_paths["top4+min"]
    assert graph_file.is_file() and graph_file.parent.parent == tmp_path / "cache"
    stamp = graph_file.stat().st_mtime_ns
    second = explainer(path, tmp_path)
    assert len(fake_export.calls) == 1
    assert second.graph_paths["top4+min"] == graph_file and graph_file.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(second(make_images(2)).var, first(make_images(2)).var)
    # Other options or another method make another graph.
    explainer(path, tmp_path, classes="top3")
    explainer(path, tmp_path, method="input_x_gradient")
    assert len(fake_export.calls) == 3
    assert len(list((tmp_path / "cache" / "graphs").glob("*.onnx"))) == 3


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: b"not a protobuf \xff\xfe" * 10, lambda data: b""],
)
def test_corrupt_cache_file_is_rebuilt(fake_export, linear_model, tmp_path, caplog, damage):
    path, _, _ = linear_model
    graph_file = explainer(path, tmp_path).graph_paths["top4+min"]
    graph_file.write_bytes(damage(graph_file.read_bytes()))
    again = explainer(path, tmp_path)
    assert len(fake_export.calls) == 2
    assert "rebuilding" in caplog.text
    assert again(make_images(1)).var.shape == (1, 5, *SHAPE)
    onnx.load(graph_file)  # rewritten whole


def test_cache_file_with_another_key_is_rebuilt(fake_export, linear_model, tmp_path, caplog):
    path, _, _ = linear_model
    top3 = explainer(path, tmp_path, classes="top3").graph_paths["top3"]
    target = explainer(path, tmp_path).graph_paths["top4+min"]
    target.write_bytes(top3.read_bytes())  # parses fine, but was stored for another key
    result = explainer(path, tmp_path)(make_images(2))
    assert len(fake_export.calls) == 3 and "does not match its key" in caplog.text
    assert result.class_ids.shape == (2, 5)


def test_cache_dir_comes_from_the_environment(fake_export, linear_model, tmp_path, monkeypatch):
    path, _, _ = linear_model
    monkeypatch.setenv("VARRT_CACHE_DIR", str(tmp_path / "env-cache"))
    exp = Explainer(path, method="gradient", backend="onnxruntime-cpu")
    assert exp.graph_paths["top4+min"].is_relative_to(tmp_path / "env-cache")


def test_model_proto_and_path_share_the_cache_key_only_by_content(fake_export, linear_model, tmp_path):
    path, _, _ = linear_model
    proto = onnx.load(path)
    a = Explainer(proto, method="gradient", backend="onnxruntime-cpu", cache_dir=tmp_path / "c")
    b = Explainer(proto, method="gradient", backend="onnxruntime-cpu", cache_dir=tmp_path / "c")
    assert a.graph_paths == b.graph_paths and len(fake_export.calls) == 1


# --- errors -------------------------------------------------------------------------------------------


def test_bad_inputs_are_usage_errors(fake_export, linear_model, tmp_path):
    path, _, _ = linear_model
    exp = explainer(path, tmp_path)
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


def test_bad_construction_is_reported(fake_export, linear_model, tmp_path):
    path, _, _ = linear_model
    with pytest.raises(UsageError, match="needs 9 classes, but the model has 7"):
        explainer(path, tmp_path, classes="top8+min")
    with pytest.raises(UsageError, match="class id 7 is out of range"):
        explainer(path, tmp_path, classes=[0, 7])
    with pytest.raises(UsageError, match="VAR needs at least 2"):
        explainer(path, tmp_path, classes=1)
    with pytest.raises(UsageError, match="batch_size"):
        explainer(path, tmp_path, batch_size=0)
    with pytest.raises(ModelError, match="cannot read model"):
        explainer(str(tmp_path / "missing.onnx"), tmp_path)
    with pytest.raises(UsageError, match="backend tensorrt is not available: TensorRT not installed"):
        Explainer(path, method="gradient", backend="tensorrt", cache_dir=tmp_path)
    if getattr(export, "METHODS", None):
        with pytest.raises(UsageError, match="unknown method 'lrp'"):
            explainer(path, tmp_path, method="lrp")


def test_backend_name_and_repr(fake_export, linear_model, tmp_path, caplog):
    path, _, _ = linear_model
    caplog.set_level("INFO", logger="varrt")
    exp = Explainer(path, method="gradient", device="cpu", cache_dir=tmp_path)
    assert exp.backend_name == "onnxruntime-cpu"
    assert "on backend onnxruntime-cpu" in caplog.text
    assert (
        repr(exp) == "Explainer(method='gradient', classes='top4+min', backend='onnxruntime-cpu', var=True)"
    )
    with exp:
        pass
    assert exp.timings == []


def test_public_api():
    assert {"Explainer", "Explanation"} <= set(varrt.__all__)
    assert varrt.Explainer is Explainer and varrt.Explanation is Explanation


# --- with the real exporter -----------------------------------------------------------------------------

requires_exporter = pytest.mark.skipif(
    not hasattr(export, "explain_graph"), reason="varrt.export.explain_graph is not available yet"
)


@pytest.fixture(scope="module")
def tiny_cnn_path(tmp_path_factory):
    torch = pytest.importorskip("torch")
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
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 16, 16),),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return str(path), model


@requires_exporter
@pytest.mark.parametrize("method", ["gradient", "guided_backprop"])
def test_real_graph_explainer_matches_direct_run(tiny_cnn_path, tmp_path, method):
    import onnxruntime as ort
    import torch
    from varrt.kernels import var_maps

    path, model = tiny_cnn_path
    images = np.random.default_rng(0).normal(size=(5, 3, 16, 16)).astype(np.float32)
    result = Explainer(path, method=method, backend="onnxruntime-cpu", cache_dir=tmp_path, batch_size=2)(
        images
    )

    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    ranked = np.argsort(-logits, axis=1)
    np.testing.assert_array_equal(result.class_ids, np.concatenate([ranked[:, :4], ranked[:, -1:]], axis=1))
    np.testing.assert_allclose(result.logits, logits, rtol=1e-4, atol=1e-5)

    graph = export.explain_graph(path, method)  # class_ids input
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    direct_logits, direct_attr = session.run(
        ["logits", "attributions"], {"input": images, "class_ids": result.class_ids}
    )
    np.testing.assert_allclose(result.logits, direct_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.attributions, direct_attr, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.var, var_maps(direct_attr, T, TAU), rtol=1e-4, atol=1e-6)


@requires_exporter
def test_cpu_explainer_runs_one_image_graphs_that_match_the_batched_graph(tmp_path):
    """On the CPU the Explainer fixes the batch to 1 (guided masks then take the bias form of
    export/bias_masks.py) and runs image by image: same numbers as the dynamic graph on the batch."""
    import onnxruntime as ort
    import torch

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
