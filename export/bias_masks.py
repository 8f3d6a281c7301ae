"""Guided backprop's ReLU masks as an added bias, so ONNX Runtime's CPU layout keeps them.

Through a ReLU-family activation with output y = clip(x, 0, high), guided backprop passes
relu(g) * (0 < y < high). The natural ONNX form is a Mul by a 0/1 mask [N, C, H, W] broadcast over
the K classes of g [K*N, C, H, W]. ONNX Runtime's CPU provider runs convolutions in a channel-blocked
layout (NCHWc) and keeps a following op in it only if it is a Conv, a pooling, a Relu/Sigmoid/Tanh,
a Concat along channels, or an Add/Mul of blocked operands, where Mul must have provably equal
shapes and Add only equal channels. So each mask Mul costs a reorder of g out of the layout and one
back in, two passes over the largest tensors of the backward pass.

With a batch of one the same numbers come out of relu(g + b) with b = 0 inside and -2^120 outside:
an Add of a [1, C, H, W] bias to the [K, C, H, W] cotangent, which stays blocked. b comes from y by
1x1 depthwise convolutions with clipping, which stay blocked too (and fuse into one NCHWc node each):

    above = clip(y * 2^100 * 2^100, 0, 1)    1 for y >= 2^-149 (the smallest float), 0 for y = 0
    below = clip((high - y) * 2^100, 0, 1)   1 for y < high, 0 for y = high
    b     = 2^120 * (above - 1) + 2^120 * (below - 1)

For a cotangent carried as stride phases (export/phases.py), the first convolutions take a
stride and a one-hot kernel, cutting y's phase out as they scale it.

Exact, not approximate: the scalings are powers of two, high - y is exact (or rounds to a number
>= 1 after scaling, for 2^-70 <= high <= 2^27), inside the mask b is 0 and g + 0 == g, outside
g + b < 0 for any |g| < 2^96. Integration tests compare it with the Mul form and with autograd.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from varrt.export.emitter import Emitter

_SCALE = 2.0**100  # twice: lifts the smallest positive float, 2^-149, past 1
_BIG = 2.0**120  # the bias outside the mask; twice of it is still finite
_HIGH_RANGE = (2.0**-70, 2.0**27)  # (high - y) * 2^100 is >= 1 below high, finite at y = 0


def fits(em: Emitter, y: ir.Value, high: float) -> bool:
    """Whether the bias form applies: a float32 [1, C, H, W] activation, a usable upper bound."""
    shape = y.shape
    if em.opset < 11 or y.dtype != ir.DataType.FLOAT or shape is None or len(shape) != 4:
        return False
    if shape[0] != 1 or not isinstance(shape[1], int):
        return False
    return math.isinf(high) or _HIGH_RANGE[0] <= high <= _HIGH_RANGE[1]


def guided_relu(em: Emitter, rows: ir.Value, y: ir.Value, high: float, channels: int,
                phase: tuple[int, int, int] | None = None) -> ir.Value:
    """relu(rows) * (0 < y < high) for the cotangent rows [K, C, H, W] of y [1, C, H, W], or of
    y's stride phase ``phase`` = (stride, r_h, r_w), the positions (stride*q_h + r_h, stride*q_w + r_w)."""

    def affine(x: ir.Value, scale: float, shift: float, pick: tuple[int, int, int] | None = None) -> ir.Value:
        stride, r_h, r_w = pick or (1, 0, 0)
        # a depthwise conv; with a stride it reads one position of each stride x stride window, so
        # it cuts out the phase on the way (a one-hot kernel: the other products are exact zeros)
        weight = np.zeros((channels, 1, stride, stride), np.float32)
        weight[:, :, r_h, r_w] = scale
        bias = em.const(np.full((channels,), shift, np.float32))
        return em.Conv(x, em.const(weight), bias, group=channels, kernel_shape=[stride, stride],
                       strides=[stride, stride])

    def unit(x: ir.Value) -> ir.Value:
        return em.Clip(x, em.scalar(0.0, like=x), em.scalar(1.0, like=x))

    above = unit(affine(affine(y, _SCALE, 0.0, phase), _SCALE, 0.0))
    bias = affine(above, _BIG, -_BIG)
    if not math.isinf(high):
        below = unit(affine(y, -_SCALE, high * _SCALE, phase))
        bias = em.Add(bias, affine(below, _BIG, -_BIG))
    return em.Relu(em.Add(rows, bias))
