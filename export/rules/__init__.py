"""The VJP rule table: one entry per ONNX op type, each a small function.

A rule is ``rule(ctx, node, g) -> list``: given the forward node and the cotangent ``g`` of its
first output (``ctx.output_cotangents`` holds all of them, None where nothing flows), it returns
one entry per node input: an ``ir.Value`` cotangent of shape [K, *input.shape], ``ZERO`` when no
gradient flows, or ``None`` for inputs the rule does not differentiate (weights, shapes, indices).
The driver only asks for inputs on the gradient path and fails, naming the node, when a rule
answered None for one of them. A rule marked ``takes_phases`` (export/phases.py) may also be
handed a strided conv's cotangent as its stride phases; every other rule gets whole tensors.

Rules are registered per op type with the first opset they hold for, so an op whose semantics
change between opsets gets one row per version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Rule = Callable[..., list[Any]]

# op type -> [(since opset, rule)], ascending
REGISTRY: dict[str, list[tuple[int, Rule]]] = {}


def rule(*op_types: str, since: int = 1) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            rows = REGISTRY.setdefault(op_type, [])
            rows.append((since, fn))
            rows.sort(key=lambda row: row[0])
        return fn

    return register


def lookup(op_type: str, opset: int) -> Rule | None:
    """The rule for ``op_type`` at ``opset``, or None."""
    found = None
    for since, fn in REGISTRY.get(op_type, []):
        if since <= opset:
            found = fn
    return found


# Importing the rule modules fills the table.
from varrt.export.rules import (  # noqa: E402,F401
    activation,
    arithmetic,
    layout,
    linear,
    normalization,
    pooling,
    reduction,
    resize,
)
