"""append_var: the in-graph VAR, checked by onnx and run by ONNX Runtime against var_maps."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx_ir.tape import Tape
from var_reference import assert_var_close
from varrt.core.errors import UsageError
from varrt.kernels import append_var, var_maps

# Every opset the exporter reads: 22+ only add element types to the ops VAR uses.
OPSETS = [9, 13, 17, 21, 22, 25]
# The lowest IR version each opset may be written with (onnx/docs/Versioning.md).
IR_VERSION = {9: 4, 13: 7, 17: 8, 21: 10, 22: 10, 25: 13}
# Ops the ONNX-TensorRT parser supports that append_var is allowed to emit.
ALLOWED_OPS = {"Abs", "Mul", "ReduceMax", "Sub", "Exp", "ReduceSum", "Div", "Greater", "Cast",
               "Where", "Shape", "Gather", "Constant"}


def build_model(opset: int, trailing: tuple, dtype=ir.DataType.FLOAT, temperature=10.0, tau=0.01):
    """A model: input `attributions` [N, K, *trailing] (N, K symbolic) -> `var_attributions`."""
    x = ir.Value(name="attributions", type=ir.TensorType(dtype), shape=ir.Shape(["N", "K", *trailing]))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": opset}, name="var")
    y = append_var(Tape(graph), x, temperature=temperature, tau=tau, opset=opset)
    y.name = "var_attributions"
    graph.outputs.append(y)
    proto = ir.to_proto(ir.Model(graph, ir_version=IR_VERSION[opset]))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def run(proto, a):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["var_attributions"], {"attributions": a})[0]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("shape", [(2, 5, 3, 8, 8), (3, 4, 7, 9), (1, 2, 13), (2, 10, 2, 3, 5)], ids=str)
def test_matches_var_maps(opset, shape):
    proto = build_model(opset, shape[2:])
    rng = np.random.default_rng(opset * 100 + len(shape))
    for scale in (1e-2, 0.2, 10.0):
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        got = run(proto, a)
        assert got.shape == a.shape and got.dtype == np.float32
        assert_var_close(got, a)
        # and with the NumPy path itself, away from the mask threshold
        assert np.allclose(got, var_maps(a), rtol=1e-5, atol=1e-7) or _only_threshold_flips(got, a)


def _only_threshold_flips(got, a):
    want = var_maps(a)
    differ = ~np.isclose(got, want, rtol=1e-5, atol=1e-7)
    return bool(((got == 0) | (want == 0))[differ].all())


@pytest.mark.parametrize("opset", OPSETS)
def test_k_is_read_from_the_runtime_shape(opset):
    proto = build_model(opset, (4, 4))
    rng = np.random.default_rng(1)
    for k in (2, 3, 7):
        a = (rng.standard_normal((2, k, 4, 4)) * 0.2).astype(np.float32)
        assert_var_close(run(proto, a), a)


@pytest.mark.parametrize("opset", [9, 21])
def test_extremes(opset):
    proto = build_model(opset, (6,))
    zeros = np.zeros((2, 4, 6), np.float32)
    assert (run(proto, zeros) == 0).all()
    big = zeros.copy()
    big[:, 1] = 1e6
    big[:, 2, ::2] = -1e6
    got = run(proto, big)
    assert np.isfinite(got).all()
    assert_var_close(got, big)


@pytest.mark.parametrize("opset", [13, 21])
def test_float16_graph(opset):
    proto = build_model(opset, (3, 5, 5), dtype=ir.DataType.FLOAT16)
    a = (np.random.default_rng(2).standard_normal((2, 5, 3, 5, 5)) * 0.3).astype(np.float16)
    got = run(proto, a)
    assert got.dtype == np.float16
    assert_var_close(got, a, rtol=1e-3)


def test_temperature_and_tau_are_honoured():
    proto = build_model(17, (4, 4), temperature=3.0, tau=0.1)
    a = (np.random.default_rng(3).standard_normal((2, 5, 4, 4))).astype(np.float32)
    assert_var_close(run(proto, a), a, temperature=3.0, tau=0.1)


@pytest.mark.parametrize("opset", OPSETS)
def test_emits_only_parser_supported_ops_with_constant_axes(opset):
    graph = ir.from_proto(build_model(opset, (4, 4))).graph
    ops = {node.op_type for node in graph}
    assert ops <= ALLOWED_OPS, ops - ALLOWED_OPS
    assert all(node.domain == "" for node in graph)
    for node in graph:
        if node.op_type in ("ReduceMax", "ReduceSum"):
            as_input = opset >= (18 if node.op_type == "ReduceMax" else 13)
            assert (len(node.inputs) == 2) == as_input and ("axes" in node.attributes) != as_input
            if as_input:
                assert node.inputs[1].producer().op_type == "Constant"


def test_output_keeps_shape_and_type():
    x = ir.Value(name="a", type=ir.TensorType(ir.DataType.FLOAT16), shape=ir.Shape(["N", 5, 8, 8]))
    y = append_var(Tape(), x, temperature=10.0, tau=0.01, opset=17)
    assert y.dtype == ir.DataType.FLOAT16 and y.shape == x.shape


@pytest.mark.parametrize("opset, dtype, match", [
    (8, ir.DataType.FLOAT, "opsets 9..25"),
    (26, ir.DataType.FLOAT, "opsets 9..25"),
    (17, ir.DataType.INT64, "floating-point"),
])
def test_bad_arguments_are_usage_errors(opset, dtype, match):
    x = ir.Value(name="a", type=ir.TensorType(dtype), shape=ir.Shape([1, 3, 4]))
    with pytest.raises(UsageError, match=match):
        append_var(Tape(), x, temperature=10.0, tau=0.01, opset=opset)
