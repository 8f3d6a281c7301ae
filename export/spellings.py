"""Operands that moved from an attribute to an input, and the opset where each moved.

ONNX spells the same operand two ways across opsets (``axes`` of ReduceSum is an attribute up to
opset 12 and an input from 13 on). This one table serves both directions: the emitter writes an
operand the way the graph's opset wants it, and rules read a forward node's operand through
``operand`` whatever its spelling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

# (op type, operand) -> (first opset that takes it as an input, index of that input)
AS_INPUT_SINCE: dict[tuple[str, str], tuple[int, int]] = {
    ("ReduceSum", "axes"): (13, 1),
    ("ReduceMean", "axes"): (18, 1),
    ("ReduceMax", "axes"): (18, 1),
    ("ReduceMin", "axes"): (18, 1),
    ("ReduceProd", "axes"): (18, 1),
    ("ReduceL1", "axes"): (18, 1),
    ("ReduceL2", "axes"): (18, 1),
    ("ReduceSumSquare", "axes"): (18, 1),
    ("ReduceLogSumExp", "axes"): (18, 1),
    ("Squeeze", "axes"): (13, 1),
    ("Unsqueeze", "axes"): (13, 1),
    ("Slice", "starts"): (10, 1),
    ("Slice", "ends"): (10, 2),
    ("Slice", "axes"): (10, 3),
    ("Slice", "steps"): (10, 4),
    ("Pad", "pads"): (11, 1),
    ("Pad", "value"): (11, 2),
    ("Clip", "min"): (11, 1),
    ("Clip", "max"): (11, 2),
    ("Split", "split"): (13, 1),
}


def is_input(op_type: str, operand: str, opset: int) -> bool:
    """Whether ``op_type`` at ``opset`` takes ``operand`` as an input (else as an attribute)."""
    since, _ = AS_INPUT_SINCE[(op_type, operand)]
    return opset >= since


class NotConstantError(ValueError):
    """An operand given as an input is computed at run time, not a constant."""

    def __init__(self, value: ir.Value):
        super().__init__(value.name)
        self.value = value


def operand(node: ir.Node, name: str, opset: int) -> np.ndarray | None:
    """``node``'s operand ``name`` as a NumPy array, wherever the opset keeps it; None if absent.

    Raises ``NotConstantError`` when the operand is an input that is not a constant.
    """
    since, index = AS_INPUT_SINCE[(node.op_type, name)]
    if opset < since:
        attribute = node.attributes.get(name)
        return None if attribute is None else np.asarray(attribute.value)
    if index >= len(node.inputs) or node.inputs[index] is None:
        return None
    value: Any = node.inputs[index]
    if value.const_value is None:
        raise NotConstantError(value)
    return np.asarray(value.const_value.numpy())
