"""VAR's optional scale normalisation ("max"): units-free softmax, output in the map's units."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx_ir.tape import Tape
from varrt.core.errors import UsageError
from varrt.kernels import append_var, var_maps


def _reference(a: np.ndarray, temperature=10.0, tau=0.01) -> np.ndarray:
    a = a.astype(np.float64)
    peak = np.abs(a).reshape(len(a), -1).max(axis=1).reshape((-1,) + (1,) * (a.ndim - 1))
    z = temperature * np.abs(a) / np.where(peak > 0, peak, 1.0)
    m = np.exp(z - z.max(axis=1, keepdims=True))
    m /= m.sum(axis=1, keepdims=True)
    return a * m * ((m - 1.0 / a.shape[1]) > tau)


@pytest.mark.parametrize("magnitude", [1e-6, 1e-3, 1.0, 1e3])
def test_max_scale_matches_reference_at_any_magnitude(magnitude):
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((3, 5, 2, 6, 7)) * magnitude).astype(np.float32)
    out = var_maps(a, scale="max")
    expected = _reference(a)
    # positions where M sits on the tau threshold may round either way
    close = np.isclose(out, expected, rtol=1e-4, atol=1e-6 * magnitude)
    assert close.mean() > 0.999
    # the unscaled formula keeps nothing for tiny gradients; the scaled one keeps a real share
    assert (out != 0).mean() > 0.1


def test_max_scale_is_equivariant_to_units():
    a = np.random.default_rng(4).standard_normal((2, 4, 16)).astype(np.float64)
    np.testing.assert_allclose(var_maps(a * 1e-4, scale="max"), var_maps(a, scale="max") * 1e-4, rtol=1e-9)


def test_all_zero_image_stays_zero():
    a = np.zeros((2, 3, 4, 4), np.float32)
    a[1] = np.random.default_rng(5).standard_normal((3, 4, 4))
    out = var_maps(a, scale="max")
    assert np.all(out[0] == 0) and np.isfinite(out).all()


def test_unknown_scale_is_a_usage_error():
    with pytest.raises(UsageError, match="scale"):
        var_maps(np.ones((1, 2, 3), np.float32), scale="sum")


@pytest.mark.parametrize("opset", [9, 17, 18])
def test_in_graph_max_scale_equals_var_maps(opset):
    x = ir.Value(name="a", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["N", "K", 3, 5]))
    tape = Tape()
    y = append_var(tape, x, temperature=10.0, tau=0.01, opset=opset, scale="max", rank=4)
    y.name, y.type, y.shape = "var", x.type, x.shape
    graph = ir.Graph([x], [y], nodes=tape.nodes, initializers=tape.initializers, opset_imports={"": opset})
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=8))
    a = (np.random.default_rng(6).standard_normal((2, 4, 3, 5)) * 1e-3).astype(np.float32)
    out = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    np.testing.assert_allclose(out, var_maps(a, scale="max"), rtol=1e-5, atol=1e-9)
