"""Reductions over axes, and Softmax/LogSoftmax (which reduce inside)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from varrt.export.rules.context import Context
from varrt.export.rules.pooling import spread_over_maxima


def _reduced_axes(ctx: Context, node: ir.Node) -> list[int]:
    rank = ctx.rank(ctx.arg(node, 0))
    axes = ctx.ints(node, "axes")
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


def reduce_sum_mean(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    x = ctx.arg(node, 0)
    axes = _reduced_axes(ctx, node)
    g = _kept(ctx, node, g, axes)
    if node.op_type == "ReduceMean" and axes:
        dims = ctx.dims(x)
        if all(dims[a] is not None for a in axes):
            g = ctx.em.Mul(g, ctx.em.scalar(1.0 / int(np.prod([dims[a] for a in axes])), like=x))
        else:  # sizes known at run time only (tokens of a Reshape to [N, C, -1] under a dynamic batch)
            sizes = ctx.em.cast_like(ctx.em.Gather(ctx.em.shape(x), ctx.em.ints(axes), axis=0), x)
            g = ctx.em.Div(g, ctx.em.reduce("ReduceProd", sizes, [0], keepdims=False))
    return [ctx.em.Expand(g, ctx.with_classes(x, g))] + [None] * (len(node.inputs) - 1)


def reduce_max(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    x, y = ctx.arg(node, 0), node.outputs[0]
    axes = _reduced_axes(ctx, node)
    y_kept = y if node.attributes.get_int("keepdims", 1) else ctx.em.unsqueeze(y, axes)
    spread = spread_over_maxima(ctx, x, y_kept, _kept(ctx, node, g, axes), axes)
    return [spread] + [None] * (len(node.inputs) - 1)


def _softmax_axes(ctx: Context, node: ir.Node, coerced: bool) -> list[int]:
    """Cotangent axes Softmax normalises over: its one axis from opset 13 on; before that the
    input is coerced to 2-D at ``axis`` (default 1), so all axes from there on."""
    rank = ctx.rank(ctx.arg(node, 0))
    axis = node.attributes.get_int("axis", 1 if coerced else -1) % rank
    return [a + 1 for a in (range(axis, rank) if coerced else [axis])]


def _softmax(coerced: bool):
    def vjp(ctx: Context, node: ir.Node, g: ir.Value) -> list:
        em, y = ctx.em, node.outputs[0]
        inner = em.reduce_sum(em.Mul(g, y), _softmax_axes(ctx, node, coerced), keepdims=True)
        return [em.Mul(y, em.Sub(g, inner))]

    return vjp


def _log_softmax(coerced: bool):
    def vjp(ctx: Context, node: ir.Node, g: ir.Value) -> list:
        em, y = ctx.em, node.outputs[0]
        total = em.reduce_sum(g, _softmax_axes(ctx, node, coerced), keepdims=True)
        return [em.Sub(g, em.Mul(em.Exp(y), total))]

    return vjp


softmax, softmax_coerced = _softmax(False), _softmax(True)
log_softmax, log_softmax_coerced = _log_softmax(False), _log_softmax(True)
