"""Classifiers that did not come from PyTorch: scikit-learn MLPs through skl2onnx, and hand-built
opset-9 graphs with the quirks of old exporters. References are exact (NumPy chain rule for the
MLPs) or float64 central finite differences (onnx.reference on a float64 copy of the graph)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from varrt.export import explain_graph

# The ONNX Runtime helpers these tests use live in torch_models, which imports torch.
pytest.importorskip("torch", reason="torch_models (models and ONNX Runtime helpers) imports torch")
import torch_models as tm  # noqa: E402

skl2onnx = pytest.importorskip("skl2onnx")
neural_network = pytest.importorskip("sklearn.neural_network")


# ---------------------------------------------------------------------------------- scikit-learn
def _activation(name: str, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f(a) and f'(a) for sklearn's hidden activations."""
    if name == "relu":
        return np.maximum(a, 0), (a > 0).astype(a.dtype)
    if name == "tanh":
        t = np.tanh(a)
        return t, 1 - t * t
    s = 1 / (1 + np.exp(-a))  # logistic
    return s, s * (1 - s)


def mlp_logits_and_jacobian(clf: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The output layer's pre-activation z [N, C] and dz/dx [N, C, F], float64, from coefs_/intercepts_."""
    h = x.astype(np.float64)
    derivs = []
    for w, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1], strict=True):  # type: ignore[attr-defined]
        h, d = _activation(clf.activation, h @ w + b)  # type: ignore[attr-defined]
        derivs.append(d)
    z = h @ clf.coefs_[-1] + clf.intercepts_[-1]  # type: ignore[attr-defined]
    # Backward with one cotangent per output column: g [N, C, width].
    g = np.broadcast_to(clf.coefs_[-1].T, (x.shape[0], *clf.coefs_[-1].T.shape))  # type: ignore[attr-defined]
    for w, d in zip(reversed(clf.coefs_[:-1]), reversed(derivs), strict=True):  # type: ignore[attr-defined]
        g = (g * d[:, None, :]) @ w.T
    return z, g


def _fit_mlp(n_classes: int, activation: str, seed: int) -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int) if n_classes == 2 else rng.integers(0, n_classes, 80)
    clf = neural_network.MLPClassifier((12, 7), activation=activation, max_iter=200, random_state=seed)
    with warnings.catch_warnings():  # a partly trained MLP (ConvergenceWarning) is as good a subject
        warnings.simplefilter("ignore")
        clf.fit(x, y)
    return clf, x


@pytest.mark.parametrize("zipmap", [False, True], ids=["no-zipmap", "zipmap"])
@pytest.mark.parametrize("n_classes,activation", [(4, "relu"), (3, "tanh"), (5, "logistic"), (2, "relu"),
                                                  (2, "tanh")])  # fmt: skip
def test_sklearn_mlp_gradient(n_classes: int, activation: str, zipmap: bool) -> None:
    clf, x_train = _fit_mlp(n_classes, activation, seed=n_classes)
    options = None if zipmap else {id(clf): {"zipmap": False}}
    proto = skl2onnx.to_onnx(clf, x_train[:1], options=options, target_opset=17)
    graph = explain_graph(proto, method="gradient")
    onnx.checker.check_model(graph, full_check=True)

    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    z, jac = mlp_logits_and_jacobian(clf, x)
    probs = clf.predict_proba(x)  # type: ignore[attr-defined]
    n_out = max(n_classes, 2)
    ids = np.stack([np.random.default_rng(i).permutation(n_out)[: min(3, n_out)] for i in range(5)])
    out = tm.run_explanation(graph, x, ids)
    logits, attributions = out["logits"], out["attributions"]
    assert attributions.shape == (5, ids.shape[1], 6)

    if n_classes > 2:
        expected_logits, expected_jac = z, jac
    else:
        # sklearn's binary MLP has one logit z and reports [1 - sigmoid(z), sigmoid(z)] by Sub and Concat,
        # with no Softmax: per the contract `logits` is then that float output itself. A loader that
        # recognises the pattern may instead report two-class logits [0, z] or [-z/2, z/2], whose
        # softmax is the same: each is accepted with its own exact gradient.
        s = probs[:, 1:2]
        ds = (s * (1 - s))[:, :, None] * jac  # [N, 1, F]
        forms = {
            "probabilities": (probs, np.concatenate([-ds, ds], 1)),
            "[0, z]": (np.concatenate([0 * z, z], 1), np.concatenate([0 * jac, jac], 1)),
            "[-z/2, z/2]": (np.concatenate([-z / 2, z / 2], 1), np.concatenate([-jac / 2, jac / 2], 1)),
        }
        matching = [k for k, (v, _) in forms.items() if np.allclose(logits, v, rtol=1e-4, atol=1e-5)]
        assert matching, f"binary logits are none of {list(forms)}: {logits[:2]}"
        print(f"binary sklearn MLP: logits are {matching[0]}")
        expected_logits, expected_jac = forms[matching[0]]

    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)
    expected = np.take_along_axis(expected_jac, ids[:, :, None], axis=1)
    err = tm.rel_errors(attributions, expected)
    tm.record("foreign models: max relative error", f"sklearn-{n_classes}-{activation}",
              "zipmap" if zipmap else "no-zipmap", err.max())  # fmt: skip
    assert err.max() < 1e-4, err  # float32 graph vs float64 chain rule; typical error ~1e-7


# ------------------------------------------------------------------------------- opset-9 graphs
C_OUT = 5
IMAGE = (3, 8, 8)


def quirky_cnn(batch: int | str, softmax: bool, seed: int = 0) -> onnx.ModelProto:
    """An opset-9, IR-3 classifier: Conv weights from a Constant node, a bias from ConstantOfShape,
    BatchNormalization, MaxPool, a 1x1 conv head and GlobalAveragePool leaving [N, C, 1, 1] scores,
    optionally a final Softmax; initializers are also listed as graph inputs, as IR 3 required."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    w1 = rng.normal(0, 0.4, (8, 3, 3, 3)).astype(f32)
    inits = {
        "b1": rng.normal(0, 0.1, 8).astype(f32),
        "bn_scale": rng.uniform(0.5, 1.5, 8).astype(f32),
        "bn_bias": rng.normal(0, 0.2, 8).astype(f32),
        "bn_mean": rng.normal(0, 0.2, 8).astype(f32),
        "bn_var": rng.uniform(0.5, 1.5, 8).astype(f32),
        "w2": rng.normal(0, 0.4, (C_OUT, 8, 1, 1)).astype(f32),
        "b2_shape": np.array([C_OUT], np.int64),
    }
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1")),
        helper.make_node("ConstantOfShape", ["b2_shape"], ["b2"],
                         value=numpy_helper.from_array(np.array([0.25], f32))),
        helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"],
                         epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["scores" if not softmax else "pooled"]),
    ]  # fmt: skip
    out_shape: list[int | str] = [batch, C_OUT, 1, 1]  # Softmax-9 keeps its input's shape
    if softmax:
        nodes.append(helper.make_node("Softmax", ["pooled"], ["scores"], axis=1))
    initializers = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, *IMAGE])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in initializers]
    graph = helper.make_graph(nodes, "quirky_cnn", inputs,
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, out_shape)],
                              initializer=initializers)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], producer_name="hand")
    model.ir_version = 3
    onnx.checker.check_model(model, full_check=True)
    return model


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float64 copy: initializers, Constant/ConstantOfShape values and declared types."""
    m = onnx.ModelProto()
    m.CopyFrom(model)

    def widen(t: onnx.TensorProto) -> onnx.TensorProto:
        if t.data_type != TensorProto.FLOAT:
            return t
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name)

    for i, t in enumerate(m.graph.initializer):
        m.graph.initializer[i].CopyFrom(widen(t))
    for node in m.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                a.t.CopyFrom(widen(a.t))
    for vi in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


class BatchNormalization(OpRun):
    """Inference BatchNormalization. onnx 1.23's reference BatchNormalization_9 fills in the default
    momentum and then normalises with batch statistics (training mode), unlike ONNX Runtime and the spec."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=1e-5, momentum=None, training_mode=None):  # noqa: ANN001
        shape = (-1,) + (1,) * (x.ndim - 2)
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + epsilon)
        return ((y * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype),)


def reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    return ReferenceEvaluator(to_float64(model), new_ops=[BatchNormalization])


def finite_difference_jacobian(model: onnx.ModelProto, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d out[n, c] / d x[n], [N, C, *x.shape[1:]], by float64 central differences of the flattened output;
    every perturbation of one image is one batch, so the reference runs once per image."""
    ref = reference(model)
    name = model.graph.input[0].name
    jac = []
    for image in x.astype(np.float64):
        size = image.size
        steps = np.eye(size).reshape(size, *image.shape) * eps
        plus = ref.run(None, {name: image + steps})[0].reshape(size, -1)
        minus = ref.run(None, {name: image - steps})[0].reshape(size, -1)
        jac.append(((plus - minus) / (2 * eps)).T.reshape(-1, *image.shape))
    return np.stack(jac)


def _check_quirky(source: onnx.ModelProto | str, logits_model: onnx.ModelProto, original: onnx.ModelProto,
                  batch: int, label: str) -> None:  # fmt: skip
    """explain ``source``; compare logits with ``logits_model`` (the same net without Softmax) in float64
    and the attributions with its finite-difference Jacobian."""
    graph = explain_graph(source, method="gradient")
    onnx.checker.check_model(graph, full_check=True)
    assert graph.graph.input[0].name == "data"
    rng = np.random.default_rng(3)
    x = rng.normal(size=(batch, *IMAGE)).astype(np.float32)
    ids = np.stack([rng.permutation(C_OUT)[:3] for _ in range(batch)])
    out = tm.run_explanation(graph, x, ids, input_name="data")

    logits64 = reference(logits_model).run(None, {"data": x.astype(np.float64)})[0]
    np.testing.assert_allclose(out["logits"], logits64.reshape(batch, C_OUT), rtol=1e-5, atol=1e-6)
    scores = tm.ort_session(original).run(None, {"data": x})[0]
    if original.graph.node[-1].op_type == "Softmax":
        e = np.exp(out["logits"] - out["logits"].max(1, keepdims=True))
        np.testing.assert_allclose(e / e.sum(1, keepdims=True), scores.reshape(batch, C_OUT), rtol=1e-5, atol=1e-6)

    jac = finite_difference_jacobian(logits_model, x)
    expected = np.take_along_axis(jac, ids[:, :, None, None, None], axis=1)
    err = tm.rel_errors(out["attributions"], expected)
    tm.record("foreign models: max relative error", "opset9-cnn", label, err.max())
    assert err.max() < 1e-4, err  # float32 graph vs float64 differences (truncation ~1e-10): ~1e-7 typical


@pytest.mark.parametrize("batch", [1, "N"], ids=["batch1", "batchN"])
@pytest.mark.parametrize("softmax", [False, True], ids=["scores-NC11", "softmax"])
def test_opset9_quirks(batch: int | str, softmax: bool) -> None:
    model = quirky_cnn(batch, softmax)
    _check_quirky(model, quirky_cnn(batch, softmax=False), model, 1 if batch == 1 else 3,
                  f"{'softmax' if softmax else 'NC11'}-{batch}")  # fmt: skip


def test_opset9_external_data(tmp_path: Path) -> None:
    model = quirky_cnn("N", softmax=True)
    path = tmp_path / "quirky.onnx"
    stored = onnx.ModelProto()
    stored.CopyFrom(model)  # saving with external data rewrites the proto in place
    onnx.save_model(stored, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="quirky.weights", size_threshold=0)  # fmt: skip
    assert (tmp_path / "quirky.weights").stat().st_size > 0
    stored = onnx.load_model(path, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer)
    _check_quirky(str(path), quirky_cnn("N", softmax=False), model, 2, "external-data")


def test_finite_differences_are_a_sound_reference() -> None:
    """The FD helper recovers a known linear map exactly (guards the reference, not the exporter)."""
    w = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wt"], ["y"])], "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(w.T.copy(), "wt")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    jac = finite_difference_jacobian(model, np.ones((2, 6), np.float32))
    np.testing.assert_allclose(jac, np.broadcast_to(w, (2, 4, 6)), rtol=1e-8, atol=1e-8)


def test_concat_with_runtime_expanded_token() -> None:
    """ViT's class token as the TorchScript exporter writes it: Expand to a shape computed from Shape(x),
    so shape inference leaves the token axis unknown, then Concat on that axis. The sizes are known at run
    time; the Concat rule must not require them at export time (the TorchScript ViT fails this way)."""
    token = np.arange(4, dtype=np.float32).reshape(1, 1, 4)
    i64 = TensorProto.INT64
    nodes = [  # torch's expand(N, -1, -1): the -1s are swapped for 1s at run time by Equal/Where
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1", "minus1"], ["shape"], axis=0),
        helper.make_node("Shape", ["shape"], ["rank"]),
        helper.make_node("ConstantOfShape", ["rank"], ["ones"], value=helper.make_tensor("one", i64, [1], [1])),
        helper.make_node("Mul", ["ones", "minus1"], ["minus_ones"]),
        helper.make_node("Equal", ["shape", "minus_ones"], ["is_free"]),
        helper.make_node("Where", ["is_free", "ones", "shape"], ["target"]),
        helper.make_node("Expand", ["token", "target"], ["tokens"]),
        helper.make_node("Concat", ["tokens", "x"], ["seq"], axis=1),
        helper.make_node("Flatten", ["seq"], ["y"], axis=1),
    ]
    inits = [numpy_helper.from_array(token, "token"), numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "token_concat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    ids = np.array([[0, 5], [7, 15]], np.int64)  # a token logit (gradient 0) and image logits (one-hot)
    out = tm.run_explanation(explain_graph(model, method="gradient"), x, ids)
    expected = np.zeros((2, 2, 12), np.float32)
    for n in range(2):
        for k in range(2):
            if ids[n, k] >= 4:
                expected[n, k, ids[n, k] - 4] = 1
    np.testing.assert_allclose(out["attributions"], expected.reshape(2, 2, 3, 4))
