"""VAR inside the ONNX graph, as standard default-domain ops (every opset the exporter reads).

Emitting VAR into the explanation graph lets TensorRT or ONNX Runtime fuse it with the backward
pass, so no extra kernel launch or host step is needed. Only ops the ONNX-TensorRT parser
supports are used (Abs, Mul, ReduceMax, Sub, Exp, ReduceSum, Div, Greater, Cast, Where, Shape,
Gather, Constant), and every `axes` operand is a constant, as the parser requires. None of them
changed meaning after opset 18 (later versions only add element types), so the opset range is the
exporter's own, ``varrt.core.contract``'s.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir import tape as ir_tape
from varrt.core.contract import MAX_OPSET, MIN_OPSET
from varrt.core.defaults import VAR_SCALES
from varrt.core.errors import UsageError

# The opsets where `axes` moved from an attribute to an int64 input.
_REDUCESUM_AXES_INPUT = 13
_REDUCEMAX_AXES_INPUT = 18


def _const(tape: ir_tape.Tape, array: np.ndarray) -> ir.Value:
    # A Constant node rather than an initializer: it works whether or not the tape is bound to a
    # graph, and needs no graph-unique initializer name from the caller.
    return tape.op("Constant", [], {"value": ir.tensor(array)})


def _reduce(tape: ir_tape.Tape, op: str, x: ir.Value, opset: int, axes_input_from: int) -> ir.Value:
    if opset >= axes_input_from:
        return tape.op(op, [x, _const(tape, np.array([1], dtype=np.int64))], {"keepdims": 1})
    return tape.op(op, [x], {"axes": [1], "keepdims": 1})


def append_var(tape: ir_tape.Tape, attributions: ir.Value, *, temperature: float, tau: float,
               opset: int, scale: str = "none", rank: int | None = None) -> ir.Value:
    """Emit VAR of ``attributions`` [N, K, ...] (class axis 1) on ``tape``; return the output.

    The output has the attributions' shape and element type; float16 (and bfloat16) inputs are
    computed in float32. K is read from the runtime shape, so a dynamic K works. ``scale="max"``
    divides |A| by each image's largest |A| before the temperature (as ``var_maps``); it needs
    the attributions' ``rank``.

    >>> import onnx_ir as ir
    >>> from onnx_ir.tape import Tape
    >>> x = ir.Value(name="attributions", type=ir.TensorType(ir.DataType.FLOAT),
    ...              shape=ir.Shape(["N", "K", 8, 8]))
    >>> tape = Tape()
    >>> y = append_var(tape, x, temperature=10.0, tau=0.01, opset=17)
    >>> [node.op_type for node in tape.nodes][:3]
    ['Abs', 'Constant', 'Mul']
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"in-graph VAR supports default-domain opsets {MIN_OPSET}..{MAX_OPSET}; got {opset}")
    if not (np.isfinite(temperature) and temperature > 0) or not np.isfinite(tau):
        raise UsageError(f"VAR needs a finite temperature > 0 and a finite tau; got {temperature}, {tau}")
    dtype = attributions.dtype
    if dtype is not None and not dtype.is_floating_point():
        raise UsageError(f"VAR needs floating-point attributions; got {dtype}")
    f32 = ir.DataType.FLOAT
    # float64 is computed as is; narrower floats in float32, like the CUDA kernel.
    upcast = dtype is not None and dtype not in (f32, ir.DataType.DOUBLE)
    work = ir.DataType.DOUBLE if dtype == ir.DataType.DOUBLE else f32
    np_work = np.float64 if work == ir.DataType.DOUBLE else np.float32

    x = tape.op("Cast", [attributions], {"to": f32}) if upcast else attributions
    magnitude = tape.op("Abs", [x])
    if scale == "max":
        if rank is None:
            raise UsageError("in-graph VAR with scale 'max' needs the attributions' rank")
        axes = list(range(1, rank))
        peak = tape.op("ReduceMax", [magnitude, _const(tape, np.array(axes, np.int64))], {"keepdims": 1}) \
            if opset >= _REDUCEMAX_AXES_INPUT else tape.op("ReduceMax", [magnitude], {"axes": axes, "keepdims": 1})
        tiny = _const(tape, np.array(np.finfo(np_work).tiny, dtype=np_work))
        magnitude = tape.op("Div", [magnitude, tape.op("Max", [peak, tiny])])
    elif scale != "none":
        raise UsageError(f"unknown VAR scale '{scale}' (choose from {', '.join(VAR_SCALES)})")
    z = tape.op("Mul", [magnitude, _const(tape, np.array(temperature, dtype=np_work))])
    # Max subtraction: exp() of values <= 0 never overflows, and the sum is >= 1.
    e = tape.op("Exp", [tape.op("Sub", [z, _reduce(tape, "ReduceMax", z, opset, _REDUCEMAX_AXES_INPUT)])])
    m = tape.op("Div", [e, _reduce(tape, "ReduceSum", e, opset, _REDUCESUM_AXES_INPUT)])

    k = tape.op("Gather", [tape.op("Shape", [x]), _const(tape, np.array(1, dtype=np.int64))], {"axis": 0})
    inv_k = tape.op("Div", [_const(tape, np.array(1.0, dtype=np_work)), tape.op("Cast", [k], {"to": work})])
    keep = tape.op("Greater", [tape.op("Sub", [m, inv_k]), _const(tape, np.array(tau, dtype=np_work))])
    out = tape.op("Where", [keep, tape.op("Mul", [x, m]), _const(tape, np.array(0.0, dtype=np_work))])
    if upcast:
        out = tape.op("Cast", [out], {"to": dtype})
    out.shape = attributions.shape
    if dtype is not None:
        out.dtype = dtype
    return out
