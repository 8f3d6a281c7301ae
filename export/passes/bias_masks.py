"""Guided backprop's ReLU masks as an added bias, so ONNX Runtime's CPU layout keeps them (pass).

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

The pass looks for the plain graph's guided ReLU, Mul(Reshape(Relu(rows)), mask(y)) with rows
from a convolution (after export/passes/rows.py sank the Reshape), mask(y) = Cast(Greater(y, 0))
or Cast(And(Greater(y, 0), Less(y, high))), and y a float32 [1, C, H, W] activation. Where the
stride-phase pass later splits rows into phases, it cuts y's phase out in the first of these
convolutions (export/passes/phases.py).

Exact, not approximate: the scalings are powers of two, high - y is exact (or rounds to a number
>= 1 after scaling, for 2^-70 <= high <= 2^27), inside the mask b is 0 and g + 0 == g, outside
g + b < 0 for any |g| < 2^96. Integration tests compare it with the Mul form and with autograd.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from varrt.export.emitter import Emitter
from varrt.export.passes.graph import const_ints, inferred_shapes, producer

_SCALE = 2.0**100  # twice: lifts the smallest positive float, 2^-149, past 1
_BIG = 2.0**120  # the bias outside the mask; twice of it is still finite
_HIGH_RANGE = (2.0**-70, 2.0**27)  # (high - y) * 2^100 is >= 1 below high, finite at y = 0


Mask = tuple[ir.Value, float, tuple[int, int, int] | None]  # y, high, phase (stride, r_h, r_w)


class GuidedMasksAsBias(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.graph.opset_imports.get("", 1)
        if opset < 11:  # Clip with min/max inputs
            return ir.passes.PassResult(model, modified=False)
        inferred_shapes(model)
        graph = model.graph
        em = Emitter(graph, opset, prefix="varrt_bias")
        changed = False
        for node in list(graph):
            found = _guided_relu(node) if node.op_type == "Mul" else None
            if found is None:
                continue
            reshape, rows, (y, high, phase) = found
            shape: ir.Shape = y.shape  # type: ignore[assignment]
            masked = em.Relu(em.Add(rows, bias(em, y, high, int(shape[1]), phase)))  # type: ignore[arg-type]
            node.outputs[0].replace_all_uses_with(em.Reshape(masked, reshape.inputs[1]), replace_graph_outputs=True)
            changed = True
        if changed:
            graph.sort()
            ir.passes.common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=changed)


def _guided_relu(mul: ir.Node) -> tuple[ir.Node, ir.Value, Mask] | None:
    """(the Reshape, the conv rows, the mask) when ``mul`` is a guided ReLU the bias form fits."""
    for a, b in (mul.inputs, tuple(reversed(mul.inputs))):
        reshape, mask = producer(a, "Reshape"), _mask(b) or _phase_mask(b)
        if reshape is None or mask is None:
            continue
        relu = producer(reshape.inputs[0], "Relu")
        rows = relu.inputs[0] if relu is not None else None
        conv = producer(rows, "Conv") or producer(rows, "ConvTranspose")
        if conv is None or len(rows.uses()) != 1 or len(reshape.outputs[0].uses()) != 1:  # type: ignore[union-attr]
            continue
        if _fits(mask[0], mask[1]):
            return reshape, rows, mask  # type: ignore[return-value]
    return None


def _phase_mask(value: ir.Value | None) -> Mask | None:
    """A mask's stride phase as export/passes/phases.py cuts it: Slice(SpaceToDepth(mask), block)."""
    cut = producer(value, "Slice")
    stacked = producer(cut.inputs[0], "SpaceToDepth") if cut is not None else None
    whole = _mask(stacked.inputs[0]) if stacked is not None else None
    if whole is None or whole[0].shape is None or len(cut.inputs) != 4:  # type: ignore[union-attr]
        return None
    stride, channels = stacked.attributes.get_int("blocksize"), whole[0].shape[1]  # type: ignore[union-attr]
    starts, ends, axes = (const_ints(v) for v in cut.inputs[1:])  # type: ignore[union-attr]
    if axes != [1] or not isinstance(channels, int) or starts is None or ends is None \
            or starts[0] % channels or ends[0] - starts[0] != channels:
        return None
    r_h, r_w = divmod(starts[0] // channels, stride)
    return whole[0], whole[1], (stride, r_h, r_w)


def _mask(value: ir.Value | None) -> Mask | None:
    """(y, high) when ``value`` is Cast(Greater(y, 0)) or Cast(And(Greater(y, 0), Less(y, high)))."""
    cast = producer(value, "Cast")
    inner = cast.inputs[0] if cast is not None else None
    if (both := producer(inner, "And")) is not None:
        above, below = producer(both.inputs[0], "Greater"), producer(both.inputs[1], "Less")
        if above is None or below is None or above.inputs[0] is not below.inputs[0]:
            return None
        high = _scalar(below.inputs[1])
        return (above.inputs[0], high, None) if _scalar(above.inputs[1]) == 0.0 and high is not None else None  # type: ignore[return-value]
    above = producer(inner, "Greater")
    if above is None or _scalar(above.inputs[1]) != 0.0:
        return None
    return above.inputs[0], math.inf, None  # type: ignore[return-value]


def _scalar(value: ir.Value | None) -> float | None:
    if value is None or value.const_value is None or value.const_value.size != 1:
        return None
    return float(value.const_value.numpy().reshape(()))


def _fits(y: ir.Value, high: float) -> bool:
    """Whether the bias form applies: a float32 [1, C, H, W] activation, a usable upper bound."""
    shape = y.shape
    if y.dtype != ir.DataType.FLOAT or shape is None or len(shape) != 4:
        return False
    if shape[0] != 1 or not isinstance(shape[1], int):
        return False
    return math.isinf(high) or _HIGH_RANGE[0] <= high <= _HIGH_RANGE[1]


def bias(em: Emitter, y: ir.Value, high: float, channels: int,
         phase: tuple[int, int, int] | None = None) -> ir.Value:
    """b [1, C, H, W] with relu(g + b) == relu(g) * (0 < y < high) for y [1, C, H, W], or for
    y's stride phase ``phase`` = (stride, r_h, r_w): positions (stride*q_h + r_h, stride*q_w + r_w)."""

    def affine(x: ir.Value, scale: float, shift: float, pick: tuple[int, int, int] | None = None) -> ir.Value:
        # a depthwise conv: stays in the blocked layout, and fuses with the Clip after it. With a
        # stride it reads one position of each stride x stride window, so it cuts out the phase
        # on the way (a one-hot kernel: the other products are exact zeros)
        stride, r_h, r_w = pick or (1, 0, 0)
        weight = np.zeros((channels, 1, stride, stride), np.float32)
        weight[:, :, r_h, r_w] = scale
        return em.Conv(x, em.const(weight), em.const(np.full((channels,), shift, np.float32)), group=channels,
                       kernel_shape=[stride, stride], strides=[stride, stride])

    def unit(x: ir.Value) -> ir.Value:
        return em.Clip(x, em.scalar(0.0, like=x), em.scalar(1.0, like=x))

    above = unit(affine(affine(y, _SCALE, 0.0, phase), _SCALE, 0.0))
    total = affine(above, _BIG, -_BIG)
    if not math.isinf(high):
        below = unit(affine(y, -_SCALE, high * _SCALE, phase))
        total = em.Add(total, affine(below, _BIG, -_BIG))
    return total
