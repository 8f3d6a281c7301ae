"""Elementwise activations: the cotangent times the local derivative.

The ReLU family (Relu, Clip with min 0 such as ReLU6, LeakyRelu) carries the guided-backprop
flag: with ``ctx.guided`` only positive cotangents pass, as in Springenberg et al.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import onnx_ir as ir
from varrt.export.emitter import Emitter
from varrt.export.phases import takes_phases
from varrt.export.rules import rule
from varrt.export.rules.context import Context

Derivative = Callable[[Emitter, ir.Value, ir.Value], ir.Value]  # (em, x, y) -> dy/dx


def _unary(op_type: str, derivative: Derivative) -> None:
    def vjp(ctx: Context, node: ir.Node, g: ir.Value) -> list:
        local = derivative(ctx.em, node.inputs[0], node.outputs[0])  # type: ignore[arg-type]
        return [ctx.times(g, local)] + [None] * (len(node.inputs) - 1)

    rule(op_type)(takes_phases(vjp))


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


def _guided_relu(ctx: Context, g: ir.Value, y: ir.Value, high: float) -> ir.Value:
    """relu(g) * (0 < y < high): guided backprop through a ReLU with output y, capped at high."""
    by_bias = ctx.guided_relu_by_bias(g, y, high)
    if by_bias is not None:
        return by_bias  # type: ignore[no-any-return]
    inside = _positive(ctx.em, y) if math.isinf(high) else _inside(ctx.em, y, 0.0, high)
    return ctx.times(ctx.positive_part(g), inside)  # type: ignore[no-any-return]


# y > 0 exactly where x > 0; reading y rather than x leaves x a single-use value, which lets
# runtimes fuse the activation into the convolution before it (ONNX Runtime: Conv+Relu/Clip).
@takes_phases
@rule("Relu")
def relu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    y: ir.Value = node.outputs[0]
    if ctx.guided:
        return [_guided_relu(ctx, g, y, math.inf)]
    return [ctx.times(g, _positive(ctx.em, y))]


_unary("Sigmoid", lambda em, x, y: _sigmoid_derivative(em, y))
_unary("Tanh", lambda em, x, y: em.Sub(em.scalar(1.0, like=y), em.Mul(y, y)))
_unary("Exp", lambda em, x, y: y)
_unary("Log", lambda em, x, y: em.Reciprocal(x))
_unary("Sqrt", lambda em, x, y: em.Div(em.scalar(0.5, like=y), y))
_unary("Reciprocal", lambda em, x, y: em.Neg(em.Mul(y, y)))
_unary("Softplus", lambda em, x, y: em.Sigmoid(x))
_unary("Abs", lambda em, x, y: em.Sign(x))
_unary("Erf", lambda em, x, y: em.Mul(em.Exp(em.Neg(em.Mul(x, x))), em.scalar(2.0 / math.sqrt(math.pi), like=x)))
# HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2): derivative hs(x) + x/6 inside (-3, 3).
_unary("HardSwish", lambda em, x, y: em.Add(
    em.HardSigmoid(x, alpha=1.0 / 6.0, beta=0.5),
    em.Mul(em.Mul(x, em.scalar(1.0 / 6.0, like=x)), _inside(em, x, -3.0, 3.0)),
))


@takes_phases
@rule("LeakyRelu", "Elu")
def leaky_relu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x, y = ctx.em, node.inputs[0], node.outputs[0]
    alpha = node.attributes.get_float("alpha", 0.01 if node.op_type == "LeakyRelu" else 1.0)
    # Elu's slope below zero is y + alpha; LeakyRelu's is alpha.
    below = em.scalar(alpha, like=x) if node.op_type == "LeakyRelu" else em.Add(y, em.scalar(alpha, like=x))
    if ctx.guided and node.op_type == "LeakyRelu":
        g = ctx.positive_part(g)
    return [ctx.times(g, em.Where(em.Greater(x, em.scalar(0.0, like=x)), em.scalar(1.0, like=x), below))]


@takes_phases
@rule("PRelu")
def prelu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x, slope = ctx.em, node.inputs[0], node.inputs[1]
    return [ctx.times(g, em.Where(em.Greater(x, em.scalar(0.0, like=x)), em.scalar(1.0, like=x), slope)), None]


@takes_phases
@rule("HardSigmoid")
def hard_sigmoid(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    alpha = node.attributes.get_float("alpha", 0.2)
    beta = node.attributes.get_float("beta", 0.5)
    x: ir.Value = node.inputs[0]  # type: ignore[assignment]
    # 0 < alpha*x + beta < 1, written for x (alpha > 0 in every exporter's use)
    low, high = (-beta / alpha, (1.0 - beta) / alpha)
    inside = _inside(ctx.em, x, min(low, high), max(low, high))
    return [ctx.times(g, ctx.em.Mul(inside, ctx.em.scalar(alpha, like=x)))]


@takes_phases
@rule("Clip")
def clip(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x = ctx.em, node.inputs[0]
    if ctx.opset < 11:
        low = cast(float, node.attributes.get_float("min", -math.inf))  # with a default: never None
        high = cast(float, node.attributes.get_float("max", math.inf))
    else:
        low_array, high_array = ctx.const(node, 1), ctx.const(node, 2)
        low = -math.inf if low_array is None else float(low_array)
        high = math.inf if high_array is None else float(high_array)
    rest = [None] * (len(node.inputs) - 1)
    # low < y < high exactly where low < x < high (y = clip(x) sits on a bound otherwise), and
    # reading the output keeps the input single-use, so Conv+Clip can fuse (see Relu).
    y = node.outputs[0] if low < high else x
    if ctx.guided and low == 0.0:  # ReLU6 and friends are ReLUs for guided backprop
        return [_guided_relu(ctx, g, y, high)] + rest  # type: ignore[arg-type]
    return [ctx.times(g, _inside(em, y, low, high))] + rest  # type: ignore[arg-type]


@takes_phases
@rule("Gelu", since=20)
def gelu(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em = ctx.em
    x: ir.Value = node.inputs[0]  # type: ignore[assignment]
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
    return [ctx.times(g, local)]
