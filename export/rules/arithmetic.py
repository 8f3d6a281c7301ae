"""Broadcasting arithmetic and the ops that pass a cotangent through unchanged.

Every rule here returns cotangents shaped like the output; ``_broadcast`` sums each one back to
its input's shape, so broadcasting is handled in one place.
"""

from __future__ import annotations

import onnx_ir as ir
from varrt.export.rules.context import ZERO, Context


def _broadcast(ctx: Context, node: ir.Node, cotangents: list) -> list:
    out_dims = ctx.dims(node.outputs[0])
    return [
        g if g is None or x is None else ctx.sum_to(g, x, out_dims)
        for g, x in zip(cotangents, node.inputs)
    ]


def add(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    return _broadcast(ctx, node, [g] * len(node.inputs))


def mean(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    share = ctx.em.Mul(g, ctx.em.scalar(1.0 / len(node.inputs), like=node.outputs[0]))
    return _broadcast(ctx, node, [share] * len(node.inputs))


def sub(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    return _broadcast(ctx, node, [g, ctx.em.Neg(g)])


def neg(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    return [ctx.em.Neg(g)]


def mul(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    a, b = node.inputs
    return _broadcast(ctx, node, [ctx.em.Mul(g, b), ctx.em.Mul(g, a)])


def div(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, b, y = ctx.em, ctx.arg(node, 1), node.outputs[0]
    ga = em.Div(g, b)
    return _broadcast(ctx, node, [ga, em.Neg(em.Mul(ga, y))])


def power(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x, p, y = ctx.em, ctx.arg(node, 0), ctx.arg(node, 1), node.outputs[0]
    p_like_x = p if p.dtype == x.dtype else em.cast_like(p, x)
    gx = em.Mul(g, em.Mul(p_like_x, em.Pow(x, em.Sub(p_like_x, em.scalar(1.0, like=x)))))
    gp = em.Mul(g, em.Mul(y, em.Log(x))) if p.dtype == x.dtype else None
    return _broadcast(ctx, node, [gx, gp])


def extremum(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # The gradient goes to the input that attains the extremum; on ties, to the first one.
    em, y = ctx.em, node.outputs[0]
    taken = None
    cotangents = []
    for index in range(len(node.inputs)):
        hit = em.mask(em.equal(ctx.arg(node, index), y), like=y)
        first = hit if taken is None else em.Mul(hit, em.Sub(em.scalar(1.0, like=y), taken))
        taken = first if taken is None else em.Add(taken, first)
        cotangents.append(em.Mul(g, first))
    return _broadcast(ctx, node, cotangents)


def where(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, condition = ctx.em, ctx.arg(node, 0)
    zero = em.scalar(0.0, like=node.outputs[0])
    return _broadcast(ctx, node, [None, em.Where(condition, g, zero), em.Where(condition, zero, g)])


def expand(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    return [ctx.sum_to(g, ctx.arg(node, 0), ctx.dims(node.outputs[0])), None]


def identity(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    return [g]


def dropout(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # Inference: Dropout is the identity (its ratio and training_mode inputs carry no gradient).
    return [g] + [None] * (len(node.inputs) - 1)


def cast(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    return [ctx.em.cast_like(g, ctx.arg(node, 0))]


def zero(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # Piecewise constant (Floor, Ceil, Round, Sign): the derivative is zero wherever it exists.
    return [ZERO] * len(node.inputs)
