"""Reductions over axes, and Softmax/LogSoftmax (which reduce inside)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from varrt.export.rules import rule
from varrt.export.rules.context import Context
from varrt.export.rules.pooling import spread_over_maxima

# Opset from which the op reads `axes` from its second input.
_AXES_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18}


def _reduced_axes(ctx: Context, node: ir.Node) -> list[int]:
    rank = ctx.rank(node.inputs[0])  # type: ignore[arg-type]
    axes = ctx.ints_attr_or_input(node, "axes", 1, _AXES_INPUT_SINCE[node.op_type])
    if not axes:
        if node.attributes.get_int("noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(a % rank for a in axes)


def _kept(ctx: Context, node: ir.Node, g: ir.Value, axes: list[int]) -> ir.Value:
    """The cotangent with the reduced axes back as size-1 axes (class axis is 0)."""
    if node.attributes.get_int("keepdims", 1) or not axes:
        return g
    return ctx.em.unsqueeze(g, [a + 1 for a in axes])


@rule("ReduceSum", "ReduceMean")
def reduce_sum_mean(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    x = node.inputs[0]
    axes = _reduced_axes(ctx, node)
    g = _kept(ctx, node, g, axes)
    if node.op_type == "ReduceMean" and axes:
        count = int(np.prod(ctx.static_dims(node, x, axes)))  # type: ignore[arg-type]
        g = ctx.em.Mul(g, ctx.em.scalar(1.0 / count, like=x))  # type: ignore[arg-type]
    return [ctx.em.Expand(g, ctx.with_classes(x, g))] + [None] * (len(node.inputs) - 1)  # type: ignore[arg-type]


@rule("ReduceMax")
def reduce_max(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    x, y = node.inputs[0], node.outputs[0]
    axes = _reduced_axes(ctx, node)
    y_kept = y if node.attributes.get_int("keepdims", 1) else ctx.em.unsqueeze(y, axes)
    spread = spread_over_maxima(ctx, x, y_kept, _kept(ctx, node, g, axes), axes)  # type: ignore[arg-type]
    return [spread] + [None] * (len(node.inputs) - 1)


def _softmax_axes(ctx: Context, node: ir.Node) -> list[int]:
    """Cotangent axes Softmax normalises over: one axis from opset 13, all from `axis` on before."""
    rank = ctx.rank(node.inputs[0])  # type: ignore[arg-type]
    axis = node.attributes.get_int("axis", -1 if ctx.opset >= 13 else 1) % rank
    axes = [axis] if ctx.opset >= 13 else list(range(axis, rank))
    return [a + 1 for a in axes]


@rule("Softmax")
def softmax(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, y = ctx.em, node.outputs[0]
    inner = em.reduce_sum(em.Mul(g, y), _softmax_axes(ctx, node), keepdims=True)
    return [em.Mul(y, em.Sub(g, inner))]


@rule("LogSoftmax")
def log_softmax(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, y = ctx.em, node.outputs[0]
    total = em.reduce_sum(g, _softmax_axes(ctx, node), keepdims=True)
    return [em.Sub(g, em.Mul(em.Exp(y), total))]
