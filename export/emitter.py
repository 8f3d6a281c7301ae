"""Emitting standard ONNX nodes into a graph, in the form the graph's opset wants.

Rules and methods never spell out opset differences themselves: ``em.reduce_sum(x, [1])`` writes
``axes`` as an attribute below opset 13 and as a constant input from 13 on; the same for
Squeeze/Unsqueeze, Slice, Pad and the other Reduce ops (one table: export/spellings.py). Every
axes, shape or pads operand is a constant initializer, as the ONNX-TensorRT parser requires.

    em = Emitter(graph, opset=17)
    y = em.Mul(x, em.scalar(0.5, like=x))       # any op: em.<OpType>(*inputs, **attributes)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
from varrt.export.spellings import is_input


class Emitter:
    """Appends nodes and constants to ``graph``, written for default-domain ``opset``."""

    def __init__(self, graph: ir.Graph, opset: int, prefix: str = "varrt"):
        self.graph = graph
        self.opset = opset
        self.tape = ir.tape.Tape(graph)
        self._prefix = prefix
        self._constants: dict[tuple, ir.Value] = {}

    # -- nodes ------------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: ir.Value | None, **attributes: Any) -> ir.Value:
        return self.tape.op(op_type, list(inputs), attributes or None)

    def op_multi(self, op_type: str, inputs: Sequence[ir.Value | None], n: int, **attributes: Any):
        return self.tape.op_multi_out(op_type, list(inputs), attributes or None, num_outputs=n)

    def __getattr__(self, op_type: str):
        # em.Mul(a, b), em.Transpose(x, perm=[...]): op types are capitalised, helpers are not.
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return lambda *inputs, **attributes: self.op(op_type, *inputs, **attributes)

    # -- constants --------------------------------------------------------------------------
    def const(self, array: Any, dtype: ir.DataType | np.dtype | None = None) -> ir.Value:
        """A constant initializer; equal constants are emitted once."""
        if isinstance(dtype, ir.DataType):
            dtype = dtype.numpy()
        arr = np.asarray(array, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._constants:
            name = f"{self._prefix}_const_{len(self._constants)}"
            while name in self.graph.initializers:
                name += "_"
            self._constants[key] = self.tape.initializer(ir.tensor(arr, name=name), name=name)
        return self._constants[key]

    def scalar(self, value: float, like: ir.Value) -> ir.Value:
        """A 0-d constant with the dtype of ``like``, for broadcasting arithmetic."""
        return self.const(np.array(value), dtype=float_dtype(like))

    def ints(self, values: Sequence[int]) -> ir.Value:
        return self.const(np.asarray(list(values), dtype=np.int64))

    # -- version-aware helpers --------------------------------------------------------------
    def _with_axes(self, op_type: str, x: ir.Value, axes: Sequence[int], **attributes: Any) -> ir.Value:
        if is_input(op_type, "axes", self.opset):
            return self.op(op_type, x, self.ints(axes), **attributes)
        return self.op(op_type, x, axes=list(axes), **attributes)

    def reduce(self, op_type: str, x: ir.Value, axes: Sequence[int], keepdims: bool = True) -> ir.Value:
        return self._with_axes(op_type, x, axes, keepdims=int(keepdims))

    def reduce_sum(self, x: ir.Value, axes: Sequence[int], keepdims: bool = True) -> ir.Value:
        return self.reduce("ReduceSum", x, axes, keepdims)

    def reduce_mean(self, x: ir.Value, axes: Sequence[int], keepdims: bool = True) -> ir.Value:
        return self.reduce("ReduceMean", x, axes, keepdims)

    def unsqueeze(self, x: ir.Value, axes: Sequence[int]) -> ir.Value:
        return self._with_axes("Unsqueeze", x, axes)

    def squeeze(self, x: ir.Value, axes: Sequence[int]) -> ir.Value:
        return self._with_axes("Squeeze", x, axes)

    def slice(
        self,
        x: ir.Value,
        starts: Sequence[int],
        ends: Sequence[int],
        axes: Sequence[int],
        steps: Sequence[int] | None = None,
    ) -> ir.Value:
        if not is_input("Slice", "starts", self.opset):
            if steps is not None and any(s != 1 for s in steps):
                raise ValueError("Slice with steps needs opset 10")
            return self.op("Slice", x, starts=list(starts), ends=list(ends), axes=list(axes))
        inputs = [x, self.ints(starts), self.ints(ends), self.ints(axes)]
        if steps is not None:
            inputs.append(self.ints(steps))
        return self.op("Slice", *inputs)

    def pad(self, x: ir.Value, pads: Sequence[int], value: float = 0.0) -> ir.Value:
        """Constant padding; ``pads`` is ONNX's [begin_0, ..., begin_r, end_0, ..., end_r]."""
        if not any(pads):
            return x
        if not is_input("Pad", "pads", self.opset):
            return self.op("Pad", x, pads=list(pads), value=float(value), mode="constant")
        return self.op("Pad", x, self.ints(pads), self.scalar(value, like=x), mode="constant")

    def shape(self, x: ir.Value, start: int = 0, end: int | None = None) -> ir.Value:
        """Shape(x)[start:end] as an int64 vector."""
        full = self.op("Shape", x)
        if start == 0 and end is None:
            return full
        return self.slice(full, [start], [end if end is not None else 2**62], [0])

    def equal(self, a: ir.Value, b: ir.Value) -> ir.Value:
        """a == b; before opset 11 Equal takes no floats, so it is spelled with Less/Greater."""
        if self.opset >= 11:
            return self.op("Equal", a, b)
        return self.op("Not", self.op("Or", self.op("Less", a, b), self.op("Greater", a, b)))

    def zeros_like(self, shape: ir.Value, like: ir.Value) -> ir.Value:
        fill = ir.tensor(np.zeros(1, dtype=float_dtype(like)))
        return self.op("ConstantOfShape", shape, value=fill)

    def cast_like(self, x: ir.Value, like: ir.Value) -> ir.Value:
        return self.op("Cast", x, to=int(like.dtype or ir.DataType.FLOAT))

    def mask(self, condition: ir.Value, like: ir.Value) -> ir.Value:
        """A boolean condition as 0/1 in the dtype of ``like``."""
        return self.cast_like(condition, like)

    def transpose_last2(self, x: ir.Value, rank: int) -> ir.Value:
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        return self.op("Transpose", x, perm=perm)

    def add_all(self, values: Sequence[ir.Value]) -> ir.Value:
        total = values[0]
        for v in values[1:]:
            total = self.op("Add", total, v)
        return total


def float_dtype(value: ir.Value) -> np.dtype:
    """The NumPy dtype of a floating-point value (float32 where inference left it unknown)."""
    if value.dtype is None or not value.dtype.is_floating_point():
        return np.dtype(np.float32)
    return np.dtype(value.dtype.numpy())
