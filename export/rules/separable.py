"""Linear spatial ops (Resize, AveragePool) as one constant matrix per spatial axis.

With static sizes, such an op maps each [H, W] plane to A_h x A_w^T, so its VJP is
A_h^T g A_w: two MatMuls with constants, an exact and TensorRT-friendly form. The matrices are
not derived from a re-implementation of the op: they are read off the op itself, run by ONNX
Runtime on one-hot inputs, so every coordinate mode, rounding rule and divisor is the forward's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from varrt.export.rules.context import Context

# (axis position among the spatial axes, spatial rank, input size) -> probe node, extra inputs
ProbeNode = Callable[[int, int, int], tuple[onnx.NodeProto, list[onnx.TensorProto]]]


def probe_matrix(make_node: ProbeNode, axis: int, spatial_rank: int, in_size: int, opset: int) -> np.ndarray:
    """The [out, in] matrix of a per-axis linear op, read off its outputs for one-hot inputs."""
    import onnxruntime as ort  # only exports with Resize or bordered AveragePool pay its import

    shape = [in_size, 1] + [in_size if a == axis else 1 for a in range(spatial_rank)]
    basis = np.eye(in_size, dtype=np.float32).reshape(shape)
    node, extras = make_node(axis, spatial_rank, in_size)
    node.input[0], node.output[0] = "x", "y"
    del node.output[1:]
    graph = onnx.helper.make_graph(
        [node], "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=extras,
    )
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=opsets,
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": basis})[0]
    columns = out.reshape(in_size, -1)  # row i: the op's response to the i-th one-hot input
    return columns.T.astype(np.float32)


def separable_vjp(ctx: Context, g: ir.Value, matrices: Sequence[np.ndarray]) -> ir.Value:
    """A_h^T g A_w for 2 spatial axes, g A_w for 1; identity matrices are skipped."""
    em = ctx.em
    *leading, last = matrices
    if not _is_identity(last):
        g = em.MatMul(g, em.const(last))
    if leading and not _is_identity(leading[0]):
        g = em.MatMul(em.const(np.ascontiguousarray(leading[0].T)), g)
    return g


def _is_identity(matrix: np.ndarray) -> bool:
    return matrix.shape[0] == matrix.shape[1] and bool(np.array_equal(matrix, np.eye(matrix.shape[0])))
