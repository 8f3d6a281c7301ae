"""Reductions over axes, and Softmax/LogSoftmax (which reduce inside)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from varrt.export.emitter import float_dtype
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
        sizes_known = [d for d in (ctx.dims(x)[a] for a in axes) if d is not None]
        if len(sizes_known) == len(axes):
            g = ctx.em.Mul(g, ctx.em.scalar(1.0 / int(np.prod(sizes_known)), like=x))
        else:  # sizes known at run time only (tokens of a Reshape to [N, C, -1] under a dynamic batch)
            sizes = ctx.em.cast_like(ctx.em.Gather(ctx.em.shape(x), ctx.em.ints(axes), axis=0), x)
            g = ctx.em.Div(g, ctx.em.reduce("ReduceProd", sizes, [0], keepdims=False))
    return [ctx.em.Expand(g, ctx.with_classes(x, g))] + [None] * (len(node.inputs) - 1)


def cumsum(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # Each output sums a run of inputs; each input's cotangent sums the outputs whose runs hold
    # it, a run in the other direction: the same CumSum with ``reverse`` flipped.
    axis = ctx.const(node, 1)
    if axis is None:
        raise ctx.fail(node, "has no axis")
    shifted = int(axis.reshape(-1)[0]) % ctx.rank(ctx.arg(node, 0)) + 1  # past the class axis
    gx = ctx.em.CumSum(g, ctx.em.const(np.array(shifted, dtype=np.int64)),
                       exclusive=node.attributes.get_int("exclusive", 0),
                       reverse=1 - node.attributes.get_int("reverse", 0))
    return [gx, None]


def _output_kept(ctx: Context, node: ir.Node, axes: list[int]) -> ir.Value:
    """The forward output with the reduced axes back as size-1 axes."""
    y = node.outputs[0]
    return y if node.attributes.get_int("keepdims", 1) or not axes else ctx.em.unsqueeze(y, axes)


def reduce_max(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # ReduceMin too: the cotangent goes to the elements equal to the result, ties split evenly.
    x = ctx.arg(node, 0)
    axes = _reduced_axes(ctx, node)
    spread = spread_over_maxima(ctx, x, _output_kept(ctx, node, axes), _kept(ctx, node, g, axes), axes)
    return [spread] + [None] * (len(node.inputs) - 1)


Local = Callable[[Context, ir.Value, ir.Value, list[int]], ir.Value]  # (ctx, x, y_kept, axes) -> dy/dx


def _reduction(local: Local) -> Callable[[Context, ir.Node, ir.Value], list]:
    """The rule of a reduction from its local derivative dy/dx (x's shape, y kept at size 1)."""

    def vjp(ctx: Context, node: ir.Node, g: ir.Value) -> list:
        x = ctx.arg(node, 0)
        axes = _reduced_axes(ctx, node)
        gx = ctx.em.Mul(_kept(ctx, node, g, axes), local(ctx, x, _output_kept(ctx, node, axes), axes))
        return [gx] + [None] * (len(node.inputs) - 1)

    return vjp


def _l2_local(ctx: Context, x: ir.Value, y: ir.Value, axes: list[int]) -> ir.Value:
    # x / |x|; where the norm is 0 every x is 0, and the guard makes that 0 (torch's subgradient).
    tiny = ctx.em.scalar(float(np.finfo(float_dtype(x)).tiny), like=x)
    return ctx.em.Div(x, ctx.em.Max(y, tiny))


def _prod_local(ctx: Context, x: ir.Value, y: ir.Value, axes: list[int]) -> ir.Value:
    # The product of the others, exact with zeros: the product of the nonzero elements over the
    # element itself (zeros counted as 1), where no other element is zero, else 0.
    em = ctx.em
    zero = em.equal(x, em.scalar(0.0, like=x))
    nonzero = em.Where(zero, em.scalar(1.0, like=x), x)
    zeros = em.mask(zero, like=x)
    others_zero = em.Sub(em.reduce_sum(zeros, axes, keepdims=True), zeros)
    none_other = em.mask(em.Less(others_zero, em.scalar(0.5, like=x)), like=x)
    return em.Mul(em.Div(em.reduce("ReduceProd", nonzero, axes, keepdims=True), nonzero), none_other)


reduce_l1 = _reduction(lambda ctx, x, y, axes: ctx.em.Sign(x))
reduce_l2 = _reduction(_l2_local)
reduce_sum_square = _reduction(lambda ctx, x, y, axes: ctx.em.Mul(x, ctx.em.scalar(2.0, like=x)))
reduce_log_sum_exp = _reduction(lambda ctx, x, y, axes: ctx.em.Exp(ctx.em.Sub(x, y)))
reduce_prod = _reduction(_prod_local)


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
