"""Shape arithmetic folded before differentiating (export/shape_folding.py, issue 12 item 2).

Small graphs built here, in the forms exporters write them: "same" padding computed from Shape
(TensorFlow-style EfficientNets), and a token model whose reshapes, slices and class-token
expansion are computed from the shape of a dynamic-batch input. References: the same graph with
the sizes written as hand-computed constants, and the model's own Jacobian read off ONNX Runtime
(the token model is affine: its logits for a batch of unit images, less those of the zero image,
are the Jacobian's rows).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
from varrt.core.errors import ModelError
from varrt.export import explain_graph
from varrt.export.model_loading import load_classifier

OPSET = 17


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _model(nodes: list, inputs: list, outputs: list, initializers: list) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _int(name: str, value) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(value, dtype=np.int64), name)


def _float(name: str, value) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


# ------------------------------------------------------------------------ "same" padding from Shape
H, W, STRIDE, KERNEL = 7, 8, 2, 3
# TensorFlow's SAME: total = max((ceil(size / stride) - 1) * stride + kernel - size, 0), begin = total // 2.
# First conv, on 7x8: H total 2 -> 1, 1; W total 1 -> 0, 1; out 4x4. Second, on 4x4: total 1 -> 0, 1.
SAME_PADS = ([0, 0, 1, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1])


def _same_pads(nodes: list, inits: list, source: str, prefix: str) -> str:
    """The SAME pads of ``source`` as TensorFlow-style exports compute them, from Shape(source)."""
    nodes.append(oh.make_node("Shape", [source], [f"{prefix}shape"]))
    for axis in (2, 3):
        a = f"{prefix}a{axis}"
        inits.append(_int(f"{a}_index", axis))
        nodes += [
            oh.make_node("Gather", [f"{prefix}shape", f"{a}_index"], [f"{a}_size_i"], axis=0),
            oh.make_node("Cast", [f"{a}_size_i"], [f"{a}_size"], to=onnx.TensorProto.FLOAT),
            oh.make_node("Div", [f"{a}_size", "stride"], [f"{a}_q"]),
            oh.make_node("Ceil", [f"{a}_q"], [f"{a}_out"]),
            oh.make_node("Sub", [f"{a}_out", "one"], [f"{a}_o1"]),
            oh.make_node("Mul", [f"{a}_o1", "stride"], [f"{a}_span"]),
            oh.make_node("Add", [f"{a}_span", "kernel"], [f"{a}_need"]),
            oh.make_node("Sub", [f"{a}_need", f"{a}_size"], [f"{a}_excess"]),
            oh.make_node("Max", [f"{a}_excess", "zero"], [f"{a}_total"]),
            oh.make_node("Div", [f"{a}_total", "two"], [f"{a}_half"]),
            oh.make_node("Floor", [f"{a}_half"], [f"{a}_begin_f"]),
            oh.make_node("Sub", [f"{a}_total", f"{a}_begin_f"], [f"{a}_end_f"]),
            oh.make_node("Cast", [f"{a}_begin_f"], [f"{a}_begin_s"], to=onnx.TensorProto.INT64),
            oh.make_node("Cast", [f"{a}_end_f"], [f"{a}_end_s"], to=onnx.TensorProto.INT64),
            oh.make_node("Unsqueeze", [f"{a}_begin_s", "ax0"], [f"{a}_begin"]),
            oh.make_node("Unsqueeze", [f"{a}_end_s", "ax0"], [f"{a}_end"]),
        ]
    nodes.append(oh.make_node("Concat", ["zeros2", f"{prefix}a2_begin", f"{prefix}a3_begin", "zeros2",
                                         f"{prefix}a2_end", f"{prefix}a3_end"], [f"{prefix}pads"], axis=0))
    return f"{prefix}pads"


def _same_padding_model(computed: bool) -> onnx.ModelProto:
    """x [1, 2, H, W] -> two (Pad SAME -> Conv stride 2 -> Relu), the pads computed from the Shape
    of each Pad's input or given as constants -> GlobalAveragePool -> logits [1, 3]. The second
    Shape reads a Conv's output, whose size ONNX's inference knows only once the first pads are."""
    rng = np.random.default_rng(0)
    inits = [_float("w1", rng.standard_normal((3, 2, KERNEL, KERNEL))),
             _float("w2", rng.standard_normal((3, 3, KERNEL, KERNEL))), _float("zero", 0.0), _int("zeros2", [0, 0]),
             _float("stride", float(STRIDE)), _float("one", 1.0), _float("kernel", float(KERNEL)), _float("two", 2.0),
             _int("ax0", [0])]
    nodes: list = []
    source = "x"
    for stage in (1, 2):
        if computed:
            pads = _same_pads(nodes, inits, source, f"s{stage}_")
        else:
            pads = f"pads{stage}"
            inits.append(_int(pads, SAME_PADS[stage - 1]))
        nodes += [
            oh.make_node("Pad", [source, pads, "zero"], [f"padded{stage}"]),
            oh.make_node("Conv", [f"padded{stage}", f"w{stage}"], [f"conv{stage}"], strides=[STRIDE, STRIDE]),
            oh.make_node("Relu", [f"conv{stage}"], [f"act{stage}"]),
        ]
        source = f"act{stage}"
    nodes += [
        oh.make_node("GlobalAveragePool", [source], ["pooled"]),
        oh.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    return _model(nodes, [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, H, W])],
                  [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3])], inits)


def test_same_padding_computed_from_shape_folds_to_its_pads():
    clf = load_classifier(_same_padding_model(computed=True))
    pads = [n.inputs[1] for n in clf.model.graph if n.op_type == "Pad"]
    if not pads:  # Pad(zeros) -> Conv became one Conv with the pads (model_loading.fold_pads_into_convs)
        pads = [n for n in clf.model.graph if n.op_type == "Conv"]
        found = [list(n.attributes.get_ints("pads")) for n in pads]
        assert found == [[p for i, p in enumerate(sp) if i % 4 >= 2] for sp in SAME_PADS]
    else:
        assert [p.const_value.numpy().tolist() for p in pads] == list(SAME_PADS)
    assert list(clf.logits_source.shape) == [1, 3]

    x = np.random.default_rng(1).uniform(-1, 1, (1, 2, H, W)).astype(np.float32)
    ids = np.array([[0, 2]], dtype=np.int64)
    ours, given = (_session(explain_graph(_same_padding_model(computed=c))).run(
        ["attributions"], {"x": x, "class_ids": ids})[0] for c in (True, False))
    np.testing.assert_allclose(ours, given, rtol=1e-6, atol=1e-7)
    assert np.abs(given).max() > 0


# ------------------------------------------------------ token model, sizes from a dynamic batch
C, S = 4, 6  # x [N, C, S, S]


def _token_model(dims: list) -> onnx.ModelProto:
    """x [N, C, S, S] -> tokens [N, C, S*S] (Reshape to Concat(Shape(x)[0:1], [C], [S*S])) -> the
    tokens Slice(S - 5 : 5*S) of the last axis, whose bounds come from Shape(x) -> a class token
    Expanded to [N, 1, 29] and concatenated before them -> the class token's and the first token's
    features -> MatMul -> logits [N, 3]."""
    rng = np.random.default_rng(2)
    inits = [_int("i0", 0), _int("i2", 2), _int("i3", 3), _int("ax0", [0]), _int("c", [C]), _int("one", [1]),
             _int("five", 5), _int("first", [0, 1]), _float("token", rng.standard_normal((1, 1, 5 * S - 1))),
             _float("w", rng.standard_normal((2 * (5 * S - 1), 3)))]
    nodes = [
        oh.make_node("Shape", ["x"], ["shape"]),
        oh.make_node("Shape", ["x"], ["batch"], end=1),
        oh.make_node("Gather", ["shape", "i2"], ["h"], axis=0),
        oh.make_node("Gather", ["shape", "i3"], ["w_size"], axis=0),
        oh.make_node("Mul", ["h", "w_size"], ["hw_s"]),
        oh.make_node("Unsqueeze", ["hw_s", "ax0"], ["hw"]),
        oh.make_node("Concat", ["batch", "c", "hw"], ["tokens_shape"], axis=0),
        oh.make_node("Reshape", ["x", "tokens_shape"], ["tokens"]),
        oh.make_node("Sub", ["h", "five"], ["start_s"]),
        oh.make_node("Mul", ["w_size", "five"], ["end_s"]),
        oh.make_node("Unsqueeze", ["start_s", "ax0"], ["start"]),
        oh.make_node("Unsqueeze", ["end_s", "ax0"], ["end"]),
        oh.make_node("Slice", ["tokens", "start", "end", "i2_axes"], ["kept"]),
        oh.make_node("Concat", ["batch", "one", "one"], ["token_shape"], axis=0),
        oh.make_node("Expand", ["token", "token_shape"], ["cls"]),
        oh.make_node("Concat", ["cls", "kept"], ["all"], axis=1),
        oh.make_node("Gather", ["all", "first"], ["two"], axis=1),
        oh.make_node("Concat", ["batch", "minus_one"], ["flat_shape"], axis=0),
        oh.make_node("Reshape", ["two", "flat_shape"], ["flat"]),
        oh.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    inits += [_int("i2_axes", [2]), _int("minus_one", [-1])]
    return _model(nodes, [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
                  [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [dims[0], 3])], inits)


def _jacobian(model: onnx.ModelProto) -> np.ndarray:
    """d logits / d x per class [3, C, S, S]: the model is affine (the class token is its offset),
    so unit images less the zero image give its rows."""
    size = C * S * S
    units = np.concatenate([np.eye(size), np.zeros((1, size))]).astype(np.float32).reshape(size + 1, C, S, S)
    logits = _session(model).run(["logits"], {"x": units})[0].astype(np.float64)
    rows = logits[:-1] - logits[-1]  # [size, 3]: row i = d logits / d x_i
    return rows.T.reshape(3, C, S, S)


def test_sizes_next_to_a_dynamic_batch_fold():
    model = _token_model(["N", C, S, S])
    clf = load_classifier(model)
    (sliced,) = [n for n in clf.model.graph if n.op_type == "Slice"]
    assert all(v is not None and v.const_value is not None for v in sliced.inputs[1:])
    assert [int(sliced.inputs[i].const_value.numpy()[0]) for i in (1, 2)] == [S - 5, 5 * S]  # type: ignore[union-attr]
    assert [str(d) for d in clf.logits_source.shape] == ["N", "3"]

    graph = explain_graph(model)
    x = np.random.default_rng(3).uniform(-1, 1, (3, C, S, S)).astype(np.float32)
    ids = np.array([[0, 2], [1, 0], [2, 1]], dtype=np.int64)
    attributions = _session(graph).run(["attributions"], {"x": x, "class_ids": ids})[0]
    jacobian = _jacobian(model)
    np.testing.assert_allclose(attributions, jacobian[ids], rtol=1e-5, atol=1e-6)


def test_sizes_of_dynamic_axes_stay_unknown():
    """With H dynamic too, the slice bounds depend on it: refused (nothing is guessed), and fixed
    with input_shape the graph equals the one above."""
    model = _token_model(["N", C, "H", S])
    with pytest.raises(ModelError, match="H"):
        explain_graph(model)
    graph = explain_graph(model, input_shape=("N", C, S, S))
    x = np.random.default_rng(4).uniform(-1, 1, (2, C, S, S)).astype(np.float32)
    ids = np.array([[1, 2], [0, 1]], dtype=np.int64)
    attributions = _session(graph).run(["attributions"], {"x": x, "class_ids": ids})[0]
    np.testing.assert_allclose(attributions, _jacobian(_token_model(["N", C, S, S]))[ids], rtol=1e-5, atol=1e-6)
