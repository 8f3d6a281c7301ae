"""Small graph questions and edits the passes share."""

from __future__ import annotations

import onnx_ir as ir


def inferred_shapes(model: ir.Model) -> None:
    """Give every value the shape ONNX shape inference finds (the backward's nodes have none)."""
    ir.passes.common.ShapeInferencePass(strict_mode=False)(model)


def static_tail(value: ir.Value | None) -> tuple[int, ...] | None:
    """The dims after the first, when all are static; else None."""
    if value is None or value.shape is None or len(value.shape) < 1:
        return None
    tail = tuple(value.shape)[1:]
    return tail if all(isinstance(d, int) for d in tail) else None  # type: ignore[return-value]


def producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The node that computes ``value``, when it is an ``op_type`` node."""
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def const_ints(value: ir.Value | None) -> list[int] | None:
    """A constant operand as a flat list of ints; None when it is not a constant."""
    if value is None or value.const_value is None:
        return None
    return [int(v) for v in value.const_value.numpy().reshape(-1)]
