"""DeepLIFT's rescale rule (Shrikumar et al.), as Captum's ``DeepLift`` applies it, as modified backwards.

The forward runs on the image and its baseline stacked on the batch axis, [x; x_ref] (2N rows),
so every forward value holds both halves and every cotangent [K, 2N, ...] carries both, as in
Captum, whose seed selects the target in both halves. The rules below read the other half by
swapping the halves of a value (``_swapped``).

- ``rescale``, on elementwise nonlinearities: the cotangent times delta_out / delta_in, and the
  true gradient where |delta_in| < 1e-10 (Captum's ``nonlinear`` and its default eps). Both
  halves get the same multiplier (Captum duplicates delta_in and delta_out).
- ``max_pool``: Captum's ``maxpool`` rule. With o, o_ref the pooled halves and m = max(o, o_ref),
  the image half's cotangent times (m - o_ref) is unpooled through the image's argmax, the
  baseline half's times (o - m) through the baseline's, the two are summed and divided by
  x - x_ref (the true gradient where that is below eps); both halves get the result.
- ``undefined``: ops DeepLIFT's rules give no multiplier (normalisations mixing positions,
  Softmax inside the model, selections other than MaxPool, piecewise constant ops): refused with
  one line rather than a guessed number. Captum would pass them the gradient, except nn.Softmax,
  whose rule normalises over the whole batch of images and baselines at once.

Linear, affine and shape ops keep their gradient, which is their rescale multiplier exactly;
products of two image-dependent values (Mul, Div, Pow) keep theirs, as in Captum, which hooks
modules and leaves such functional ops to autograd. Captum 0.9 itself departs from these rules
where two of its hooked modules are adjacent (a stale output gradient, captum#1104) and in the
MaxPool fallback for batches (captum#1276); both are fixed upstream, and these are the fixed rules.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from varrt.export.emitter import float_dtype
from varrt.export.rules.context import Context, Rule

EPS = 1e-10  # Captum's DeepLift default: |delta_in| below it falls back to the gradient


def _pairs(ctx: Context, v: ir.Value, axis: int) -> ir.Value:
    """[..., 2N, ...] (batch at ``axis``) -> [..., 2, M]: the two halves along one axis."""
    head = ctx.em.ints([2, -1]) if axis == 0 else ctx.em.Concat(ctx.em.shape(v, 0, axis), ctx.em.ints([2, -1]), axis=0)
    return ctx.em.Reshape(v, head)


def _swapped(ctx: Context, v: ir.Value, axis: int) -> ir.Value:
    """``v`` with its image and baseline halves exchanged (forward values: axis 0; cotangents: 1)."""
    em = ctx.em
    return em.Reshape(em.Gather(_pairs(ctx, v, axis), em.ints([1, 0]), axis=axis), em.shape(v))


def _signed(ctx: Context, v: ir.Value, like: ir.Value) -> ir.Value:
    """A forward value with its baseline half negated."""
    em = ctx.em
    signs = em.const(np.array([[1.0], [-1.0]], dtype=float_dtype(like)))
    return em.Reshape(em.Mul(_pairs(ctx, v, 0), signs), em.shape(v))


def _where_tiny(ctx: Context, delta_in: ir.Value, gradient: ir.Value, numerator: ir.Value, x: ir.Value) -> ir.Value:
    """numerator / delta_in, and ``gradient`` where |delta_in| < EPS (no division by zero there);
    ``x`` is the forward input, whose dtype the constants take."""
    em = ctx.em
    tiny = em.Less(em.Abs(delta_in), em.scalar(EPS, like=x))
    safe = em.Where(tiny, em.scalar(1.0, like=x), delta_in)
    return em.Where(tiny, gradient, em.Div(numerator, safe))


def rescale(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    """The rescale rule on an elementwise nonlinearity y = f(x)."""
    em, x, y = ctx.em, ctx.arg(node, 0), node.outputs[0]
    gradient = rule(ctx, node, g)
    delta_in = em.Sub(x, _swapped(ctx, x, 0))  # x - x_ref in the image half, x_ref - x in the other
    delta_out = em.Sub(y, _swapped(ctx, y, 0))  # the same sign: the ratio is the same in both halves
    return [_where_tiny(ctx, delta_in, gradient[0], em.Mul(g, delta_out), x)] + list(gradient[1:])


def max_pool(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    """Captum's rule for MaxPool (its ``maxpool``), with the pool's own routing (``rule``)."""
    em, x, y = ctx.em, ctx.arg(node, 0), node.outputs[0]
    y_other = _swapped(ctx, y, 0)
    # image half: m - o_ref; baseline half: o - m (= -(m - o), o being the other half there)
    gained = _signed(ctx, em.Sub(em.Max(y, y_other), y_other), x)
    routed = rule(ctx, node, em.Mul(g, gained))[0]  # each half through its own argmax
    total = em.Add(routed, _swapped(ctx, routed, 1))  # image part + baseline part, in both halves
    delta_in = _signed(ctx, em.Sub(x, _swapped(ctx, x, 0)), x)  # x - x_ref in both halves
    return [_where_tiny(ctx, delta_in, rule(ctx, node, g)[0], total, x)] + [None] * (len(node.inputs) - 1)


def selection(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    """MaxPool has Captum's rule; the other selections (max over axes or operands, Where) none."""
    return (max_pool if node.op_type == "MaxPool" else undefined)(ctx, node, g, rule)


def undefined(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    raise ctx.fail(node, "deeplift: DeepLIFT's rules (Captum's DeepLift: the rescale rule on elementwise "
                         "nonlinearities, its MaxPool rule) define no multiplier for this op")
