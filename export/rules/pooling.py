"""Pooling: MaxPool without its Indices output, AveragePool, the global pools."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_ir as ir
from varrt.export.emitter import float_dtype
from varrt.export.rules.context import Context
from varrt.export.rules.separable import probe_matrix, separable_vjp
from varrt.export.rules.spatial import Windows, transposed_to_input, windows


def _strided(ctx: Context, x: ir.Value, axis: int, start: int, count: int, step: int, dims: list) -> ir.Value:
    """x[..., start : start + count*step : step, ...] on ``axis``, also below opset 10 (no steps)."""
    em = ctx.em
    if ctx.opset >= 10 or step == 1:
        return em.slice(x, [start], [start + (count - 1) * step + 1], [axis], [step] if step != 1 else None)
    # Take a window of count*step, split the axis into (count, step), keep step index 0.
    cut = em.slice(x, [start], [start + count * step], [axis])
    after = [d for d in dims[axis + 1:]]
    split = em.Reshape(cut, em.ints([0] * axis + [count, step] + after))
    first = em.slice(split, [0], [1], [axis + 1])
    return em.Reshape(first, em.ints([0] * axis + [count] + after))


def max_pool(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # For each kernel offset, compare the strided input slice with the pooled output (first match
    # wins, like PyTorch's argmax); scatter the masked cotangents back with one grouped
    # ConvTranspose whose kernels are one-hot at each offset.
    em, x, y = ctx.em, ctx.arg(node, 0), node.outputs[0]
    kernel = list(node.attributes.get_ints("kernel_shape"))
    w = windows(ctx, node, kernel)
    n, channels = len(kernel), ctx.static_dims(node, x, [1])[0]
    reach = [(k - 1) * d + o * s for k, d, o, s in zip(kernel, w.dilations, w.out_sizes, w.strides)]
    extra = [max(r - (b + i + e), 0) for r, b, i, e in zip(reach, w.pads_begin, w.in_sizes, w.pads_end)]
    lowest = float(np.finfo(float_dtype(x)).min)
    padded = em.pad(x, [0, 0] + w.pads_begin + [0, 0] + [e + x_ for e, x_ in zip(w.pads_end, extra)], lowest)
    padded_dims = ctx.dims(x)[:2] + [b + i + e + x_ for b, i, e, x_ in
                                     zip(w.pads_begin, w.in_sizes, w.pads_end, extra)]

    offsets = list(itertools.product(*[range(k) for k in kernel]))
    taken, parts = None, []
    one = em.scalar(1.0, like=y)
    for offset in offsets:
        window = padded
        dims = list(padded_dims)
        for a in range(n):
            window = _strided(ctx, window, 2 + a, offset[a] * w.dilations[a], w.out_sizes[a], w.strides[a], dims)
            dims[2 + a] = w.out_sizes[a]
        hit = em.mask(em.equal(window, y), like=y)
        first = hit if taken is None else em.Mul(hit, em.Sub(one, taken))
        taken = first if taken is None else em.Add(taken, first)
        parts.append(em.unsqueeze(em.Mul(g, first), [3]))  # [K, N, C, 1, *out]
    stacked = em.Concat(*parts, axis=3)
    rows = em.Reshape(stacked, em.ints([-1, channels * len(offsets)] + w.out_sizes))

    weight = np.zeros([channels * len(offsets), 1] + kernel, dtype=float_dtype(x))
    for c in range(channels):
        for index, offset in enumerate(offsets):
            weight[(c * len(offsets) + index, 0) + offset] = 1.0
    return [ctx.from_rows(transposed_to_input(ctx, rows, em.const(weight), w, channels), g, ctx.arg(node, 0))]


def average_pool(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x = ctx.em, ctx.arg(node, 0)
    kernel = list(node.attributes.get_ints("kernel_shape"))
    w = windows(ctx, node, kernel)
    padded = [b + i + e for b, i, e in zip(w.pads_begin, w.in_sizes, w.pads_end)]
    has_pads = any(w.pads_begin) or any(w.pads_end)
    overshoots = any(f > p for f, p in zip(w.full_sizes(), padded))
    if (node.attributes.get_int("count_include_pad", 0) or not has_pads) and not overshoots:
        # Every window divides by the kernel size: a grouped ConvTranspose with constant weights.
        channels = ctx.static_dims(node, x, [1])[0]
        size = int(np.prod(kernel))
        weight = np.full([channels, 1] + kernel, 1.0 / size, dtype=float_dtype(x))
        rows = ctx.to_rows(g, node.outputs[0])
        return [ctx.from_rows(transposed_to_input(ctx, rows, em.const(weight), w, channels), g, ctx.arg(node, 0))]
    # Divisors that vary at the borders: the per-axis matrices, read off the op itself.
    if len(kernel) > 2:
        raise ctx.fail(node, "AveragePool over more than 2 spatial axes with varying divisors")
    matrices = [probe_matrix(_pool_probe(node, w), a, len(kernel), w.in_sizes[a], ctx.opset)
                for a in range(len(kernel))]
    return [separable_vjp(ctx, g, matrices)]


def _pool_probe(node: ir.Node, w: Windows):
    def make(axis: int, spatial_rank: int, in_size: int):
        def pick(values, other):
            return [values[a] if a == axis else other for a in range(spatial_rank)]
        attributes = dict(
            kernel_shape=pick(w.kernel, 1), strides=pick(w.strides, 1),
            pads=pick(w.pads_begin, 0) + pick(w.pads_end, 0),
        )
        for name in ("ceil_mode", "count_include_pad"):  # not every opset knows both
            if name in node.attributes:
                attributes[name] = node.attributes.get_int(name)
        if any(d != 1 for d in w.dilations):
            attributes["dilations"] = pick(w.dilations, 1)
        return onnx.helper.make_node("AveragePool", ["x"], ["y"], **attributes), []
    return make


def global_average_pool(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    x = ctx.arg(node, 0)
    spatial = ctx.static_dims(node, x, range(2, ctx.rank(x)))
    share = ctx.em.Mul(g, ctx.em.scalar(1.0 / int(np.prod(spatial)), like=x))
    return [ctx.em.Expand(share, ctx.with_classes(x, g))]


def global_max_pool(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    x = ctx.arg(node, 0)
    return [spread_over_maxima(ctx, x, node.outputs[0], g, list(range(2, ctx.rank(x))))]


def spread_over_maxima(ctx: Context, x: ir.Value, y_kept: ir.Value, g_kept: ir.Value, axes: list[int]) -> ir.Value:
    """Route a max-reduction's cotangent to the maxima, split evenly among ties (as torch.amax)."""
    em = ctx.em
    hit = em.mask(em.equal(x, y_kept), like=x)
    share = em.Div(hit, em.reduce_sum(hit, axes, keepdims=True))
    return em.Mul(g_kept, share)
