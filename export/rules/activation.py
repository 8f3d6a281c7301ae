"""Elementwise activations: the cotangent times the local derivative.

Guided backprop is not here: it belongs to the rectifier family in the rule table
(export/rules/table.py), which hands these rules only the positive part of the cotangent.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx_ir as ir
from varrt.export.emitter import Emitter
from varrt.export.rules.context import Context

Derivative = Callable[[Emitter, ir.Value, ir.Value], ir.Value]  # (em, x, y) -> dy/dx


def unary(derivative: Derivative) -> Callable[[Context, ir.Node, ir.Value], list]:
    """The rule of an elementwise op from its local derivative dy/dx."""

    def vjp(ctx: Context, node: ir.Node, g: ir.Value) -> list:
        local = derivative(ctx.em, ctx.arg(node, 0), node.outputs[0])
        return [ctx.em.Mul(g, local)] + [None] * (len(node.inputs) - 1)

    return vjp


def _positive(em: Emitter, x: ir.Value) -> ir.Value:
    return em.mask(em.Greater(x, em.scalar(0.0, like=x)), like=x)


def _sigmoid_derivative(em: Emitter, y: ir.Value) -> ir.Value:
    return em.Mul(y, em.Sub(em.scalar(1.0, like=y), y))


def _inside(em: Emitter, x: ir.Value, low: float, high: float) -> ir.Value:
    """1 where low < x < high, else 0."""
    above = em.Greater(x, em.scalar(low, like=x))
    below = em.Less(x, em.scalar(high, like=x))
    return em.mask(em.And(above, below), like=x)


def _gaussian_density(em: Emitter, x: ir.Value) -> ir.Value:
    half_square = em.Mul(em.Mul(x, x), em.scalar(-0.5, like=x))
    return em.Mul(em.Exp(half_square), em.scalar(1.0 / math.sqrt(2.0 * math.pi), like=x))


# y > 0 exactly where x > 0; reading y rather than x leaves x a single-use value, which lets
# runtimes fuse the activation into the convolution before it (ONNX Runtime: Conv+Relu/Clip).
def relu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    return [ctx.em.Mul(g, _positive(ctx.em, node.outputs[0]))]


sigmoid = unary(lambda em, x, y: _sigmoid_derivative(em, y))
tanh = unary(lambda em, x, y: em.Sub(em.scalar(1.0, like=y), em.Mul(y, y)))
exp = unary(lambda em, x, y: y)
log = unary(lambda em, x, y: em.Reciprocal(x))
sqrt = unary(lambda em, x, y: em.Div(em.scalar(0.5, like=y), y))
reciprocal = unary(lambda em, x, y: em.Neg(em.Mul(y, y)))
softplus = unary(lambda em, x, y: em.Sigmoid(x))
absolute = unary(lambda em, x, y: em.Sign(x))
erf = unary(lambda em, x, y: em.Mul(em.Exp(em.Neg(em.Mul(x, x))), em.scalar(2.0 / math.sqrt(math.pi), like=x)))
# HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2): derivative hs(x) + x/6 inside (-3, 3).
hard_swish = unary(lambda em, x, y: em.Add(
    em.HardSigmoid(x, alpha=1.0 / 6.0, beta=0.5),
    em.Mul(em.Mul(x, em.scalar(1.0 / 6.0, like=x)), _inside(em, x, -3.0, 3.0)),
))


def leaky_relu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x, y = ctx.em, ctx.arg(node, 0), node.outputs[0]
    alpha = node.attributes.get_float("alpha", 0.01 if node.op_type == "LeakyRelu" else 1.0)
    # Elu's slope below zero is y + alpha; LeakyRelu's is alpha.
    below = em.scalar(alpha, like=x) if node.op_type == "LeakyRelu" else em.Add(y, em.scalar(alpha, like=x))
    return [em.Mul(g, em.Where(em.Greater(x, em.scalar(0.0, like=x)), em.scalar(1.0, like=x), below))]


# Selu and Celu are Elu with a scale (Selu) or a rescaled argument (Celu); their slope below
# zero is read from the output, as Elu's: Selu's is y + gamma alpha, Celu's y / alpha + 1.
def selu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x, y = ctx.em, ctx.arg(node, 0), node.outputs[0]
    alpha = node.attributes.get_float("alpha", 1.67326319217681884765625)
    gamma = node.attributes.get_float("gamma", 1.05070102214813232421875)
    below = em.Add(y, em.scalar(gamma * alpha, like=x))
    return [em.Mul(g, em.Where(em.Greater(x, em.scalar(0.0, like=x)), em.scalar(gamma, like=x), below))]


def celu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x, y = ctx.em, ctx.arg(node, 0), node.outputs[0]
    alpha = node.attributes.get_float("alpha", 1.0)
    below = em.Add(em.Mul(y, em.scalar(1.0 / alpha, like=x)), em.scalar(1.0, like=x))
    return [em.Mul(g, em.Where(em.Greater(x, em.scalar(0.0, like=x)), em.scalar(1.0, like=x), below))]


def thresholded_relu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    x = ctx.arg(node, 0)
    above = ctx.em.Greater(x, ctx.em.scalar(node.attributes.get_float("alpha", 1.0), like=x))
    return [ctx.em.Mul(g, ctx.em.mask(above, like=x))]


def _mish_derivative(em: Emitter, x: ir.Value) -> ir.Value:
    # d/dx x tanh(softplus(x)) = tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2)
    t = em.Tanh(em.Softplus(x))
    sech2 = em.Sub(em.scalar(1.0, like=x), em.Mul(t, t))
    return em.Add(t, em.Mul(em.Mul(x, em.Sigmoid(x)), sech2))


mish = unary(lambda em, x, y: _mish_derivative(em, x))
softsign = unary(lambda em, x, y: em.Reciprocal(em.Mul(*[em.Add(em.scalar(1.0, like=x), em.Abs(x))] * 2)))


def prelu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x, slope = ctx.em, ctx.arg(node, 0), ctx.arg(node, 1)
    return [em.Mul(g, em.Where(em.Greater(x, em.scalar(0.0, like=x)), em.scalar(1.0, like=x), slope)), None]


def hard_sigmoid(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    alpha = node.attributes.get_float("alpha", 0.2)
    beta = node.attributes.get_float("beta", 0.5)
    x: ir.Value = ctx.arg(node, 0)
    # 0 < alpha*x + beta < 1, written for x (alpha > 0 in every exporter's use)
    low, high = (-beta / alpha, (1.0 - beta) / alpha)
    inside = _inside(ctx.em, x, min(low, high), max(low, high))
    return [ctx.em.Mul(g, ctx.em.Mul(inside, ctx.em.scalar(alpha, like=x)))]


def clip(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    low, high = clip_bounds(ctx, node)
    x = ctx.arg(node, 0)
    # low < y < high exactly where low < x < high (y = clip(x) sits on a bound otherwise), and
    # reading the output keeps the input single-use, so runtimes can fuse Conv+Clip (see Relu).
    y = node.outputs[0] if low < high else x
    return [ctx.em.Mul(g, _inside(ctx.em, y, low, high))] + [None] * (len(node.inputs) - 1)


def clip_bounds(ctx: Context, node: ir.Node) -> tuple[float, float]:
    low, high = ctx.operand(node, "min"), ctx.operand(node, "max")
    return (-math.inf if low is None else float(low), math.inf if high is None else float(high))


def gelu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em = ctx.em
    x: ir.Value = ctx.arg(node, 0)
    if node.attributes.get_string("approximate", "none") == "tanh":
        # d/dx 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)
        c = math.sqrt(2.0 / math.pi)
        x2 = em.Mul(x, x)
        u = em.Mul(em.scalar(c, like=x), em.Add(x, em.Mul(em.scalar(0.044715, like=x), em.Mul(x2, x))))
        t = em.Tanh(u)
        du = em.Mul(em.scalar(c, like=x), em.Add(em.scalar(1.0, like=x), em.Mul(em.scalar(3 * 0.044715, like=x), x2)))
        sech2 = em.Sub(em.scalar(1.0, like=x), em.Mul(t, t))
        local = em.Mul(em.scalar(0.5, like=x), em.Add(em.Add(em.scalar(1.0, like=x), t), em.Mul(em.Mul(x, sech2), du)))
    else:
        # Phi(x) + x phi(x)
        cdf = em.Mul(em.scalar(0.5, like=x),
                     em.Add(em.scalar(1.0, like=x), em.Erf(em.Mul(x, em.scalar(1.0 / math.sqrt(2.0), like=x)))))
        local = em.Add(cdf, em.Mul(x, _gaussian_density(em, x)))
    return [em.Mul(g, local)]
