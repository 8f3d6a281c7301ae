"""Small graph questions and edits the passes share."""

from __future__ import annotations

import itertools

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


_counter = itertools.count()


def fresh_name(graph: ir.Graph, base: str | None) -> str:
    """A node name for a rewrite of the node ``base`` (onnx-ir allows repeats; readers like unique)."""
    return f"{base or 'node'}_varrt{next(_counter)}"
