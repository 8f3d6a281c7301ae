"""Conv, Gemm and MatMul: linear in the image, so their VJPs reuse the forward weights."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from varrt.export.phases import Phased, takes_phases
from varrt.export.rules import rule
from varrt.export.rules.context import Context
from varrt.export.rules.spatial import transposed_to_input, windows


@takes_phases
@rule("Conv")
def conv(ctx: Context, node: ir.Node, g) -> list:
    # d/dx of a convolution is the transposed convolution with the same weights. With unit
    # strides and constant weights that is a plain Conv with flipped, group-transposed weights,
    # which runtimes run far faster than ConvTranspose (1x1 and depthwise layers above all).
    x, weight = node.inputs[0], node.inputs[1]
    kernel = ctx.static_dims(node, weight, range(2, ctx.rank(weight)))  # type: ignore[arg-type]
    w = windows(ctx, node, kernel)
    group = node.attributes.get_int("group", 1)
    out_channels = ctx.dims(weight)[0]  # type: ignore[arg-type]
    if group < 1 or (out_channels is not None and out_channels % group):
        raise ctx.fail(node, f"group={group} does not divide the weight's {out_channels} output channels")
    rest = [None] * (len(node.inputs) - 1)
    reach = [(k - 1) * d for k, d in zip(kernel, w.dilations)]
    pads = [r - p for r, p in zip(reach, w.pads_begin)] + [r - p for r, p in zip(reach, w.pads_end)]
    constant = weight.const_value  # type: ignore[union-attr]
    unit_strides = all(s == 1 for s in w.strides) and constant is not None and min(pads) >= 0
    if isinstance(g, Phased):
        # A 1x1 conv acts on each position alone, so it maps phases to phases; when it widens
        # the channels, interleaving before it moves less data than after.
        pointwise = unit_strides and all(k == 1 for k in kernel) and not any(pads)
        if pointwise and ctx.dims(x)[1] <= out_channels:  # type: ignore[operator]
            flipped = ctx.em.const(_flipped_transposed(constant.numpy(), group))  # type: ignore[union-attr]
            sizes = [size // g.stride for size in w.in_sizes]
            return [g.map(lambda part, *_: ctx.from_rows(
                ctx.em.Conv(ctx.to_rows(part, x, [out_channels, *sizes]), flipped, group=group, kernel_shape=kernel),
                part, x, [ctx.dims(x)[1], *sizes]), x)] + rest
        g = ctx.whole(g)
    rows = ctx.to_rows(g, node.outputs[0])
    if unit_strides:
        flipped = _flipped_transposed(constant.numpy(), group)  # type: ignore[union-attr]
        gx = ctx.em.Conv(rows, ctx.em.const(flipped), pads=pads, dilations=w.dilations, group=group,
                         kernel_shape=kernel)
        return [ctx.from_rows(gx, g, x)] + rest
    # A dense conv's transposed form is one GEMM and a col2im. The phase form pays off for grouped
    # convs, and it would cost more on a conv with few input channels (the image's three): NCHWc
    # runtimes (ONNX Runtime's MLAS) pad each phase conv's outputs to a whole channel block.
    dense_narrow = group == 1 and (ctx.dims(x)[1] or 0) < 16
    phases = _phase_kernels(constant.numpy(), group, w) if constant is not None and not dense_narrow else None
    if phases is not None:
        channels = ctx.dims(x)[1]
        tail = [channels, *(size // w.strides[0] for size in w.in_sizes)]
        parts = [[ctx.from_rows(ctx.em.Conv(rows, ctx.em.const(kernel_r), pads=pads_r, group=group,
                                            kernel_shape=list(kernel_r.shape[2:])), g, x, tail)
                  for kernel_r, pads_r in row] for row in phases]
        return [Phased(parts, x)] + rest  # type: ignore[arg-type]
    return [ctx.from_rows(transposed_to_input(ctx, rows, weight, w, group), g, x)] + rest  # type: ignore[arg-type]


def _phase_kernels(weight: np.ndarray, group: int, w) -> list[list[tuple[np.ndarray, list[int]]]] | None:
    """A strided 2-D conv's input gradient as s*s stride-1 Convs, one per output phase.

    Input position y = s*q + r receives tap i from cotangent position q - m with
    m = (i*dilation - r - pad_begin) / s, when that is an integer: each phase r is a plain
    correlation of the cotangent with the taps of that phase. Returns [r_h][r_w] -> (weights,
    pads), or None when the geometry does not fit (unequal strides, sizes not divisible by s,
    a phase without taps, pads that would crop).
    """
    s = w.strides[0]
    if len(w.strides) != 2 or s == 1 or any(t != s for t in w.strides) or any(i % s for i in w.in_sizes):
        return None
    axes = []  # per axis, per phase: (taps [(i, m)], kernel length, pad begin, pad end)
    for k, d, p, size, out in zip(w.kernel, w.dilations, w.pads_begin, w.in_sizes, w.out_sizes):
        phases = []
        for r in range(s):
            taps = [(i, (i * d - r - p) // s) for i in range(k) if (i * d - r - p) % s == 0]
            if not taps:
                return None
            top = max(m for _, m in taps)
            length = top - min(m for _, m in taps) + 1
            end = size // s - out + length - 1 - top
            if top < 0 or end < 0:
                return None
            phases.append((taps, length, top, end))
        axes.append(phases)
    flipped = _flipped_transposed(weight, group)  # [C_in, C_out/g, k_h, k_w], kernels rotated
    k_h, k_w = w.kernel
    result = []
    for taps_h, len_h, top_h, end_h in axes[0]:
        row = []
        for taps_w, len_w, top_w, end_w in axes[1]:
            kernel = np.zeros(flipped.shape[:2] + (len_h, len_w), dtype=weight.dtype)
            for i_h, m_h in taps_h:
                for i_w, m_w in taps_w:
                    # correlation tap t = top - m reads cotangent position q + t - top = q - m
                    kernel[:, :, len_h - 1 - (top_h - m_h), len_w - 1 - (top_w - m_w)] = \
                        flipped[:, :, k_h - 1 - i_h, k_w - 1 - i_w]
            row.append((np.ascontiguousarray(kernel[:, :, ::-1, ::-1]), [top_h, top_w, end_h, end_w]))
        result.append(row)
    return result


def _flipped_transposed(weight: np.ndarray, group: int) -> np.ndarray:
    """[C_out, C_in/g, *k] -> [C_in, C_out/g, *k], each kernel rotated by 180 degrees."""
    c_out, c_in_group, *kernel = weight.shape
    per_group = weight.reshape(group, c_out // group, c_in_group, *kernel).swapaxes(1, 2)
    swapped = per_group.reshape(group * c_in_group, c_out // group, *kernel)
    return np.ascontiguousarray(np.flip(swapped, axis=tuple(range(2, weight.ndim))))


@rule("Gemm")
def gemm(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # Y = alpha * A' B' + beta * C with A' = A or A^T, B' = B or B^T (all 2-D).
    em = ctx.em
    a, b = node.inputs[0], node.inputs[1]
    alpha = node.attributes.get_float("alpha", 1.0)
    beta = node.attributes.get_float("beta", 1.0)
    trans_a, trans_b = node.attributes.get_int("transA", 0), node.attributes.get_int("transB", 0)
    g_out = g
    if alpha != 1.0:
        g = em.Mul(g, em.scalar(alpha, like=node.outputs[0]))
    b_rows = b if trans_b else em.Transpose(b, perm=[1, 0])  # B'^T
    ga = em.MatMul(g, b_rows)  # dL/dA' = g B'^T : [K, M, k]
    if trans_a:
        ga = em.transpose_last2(ga, 3)
    a_cols = em.Transpose(a, perm=[1, 0]) if not trans_a else a  # A'^T
    gb = em.MatMul(a_cols, g)  # dL/dB' = A'^T g : [K, k, N]
    if trans_b:
        gb = em.transpose_last2(gb, 3)
    result = [ga, gb]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        gc = g_out if beta == 1.0 else em.Mul(g_out, em.scalar(beta, like=node.outputs[0]))
        result.append(ctx.sum_to(gc, node.inputs[2], ctx.dims(node.outputs[0])))
    return result


@rule("MatMul")
def matmul(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em = ctx.em
    a, b = node.inputs
    a_dims, b_dims = ctx.dims(a), ctx.dims(b)  # type: ignore[arg-type]
    if len(a_dims) < 2 or len(b_dims) < 2:
        raise ctx.fail(node, "1-D MatMul operands are not supported")
    out_dims = ctx.dims(node.outputs[0])
    batch = out_dims[:-2]
    ga = em.MatMul(g, em.transpose_last2(b, len(b_dims)))  # [K, *batch, n, k]
    gb = em.MatMul(em.transpose_last2(a, len(a_dims)), g)  # [K, *batch, k, m]
    return [
        ctx.sum_to(ga, a, batch + a_dims[-2:]),  # type: ignore[arg-type]
        ctx.sum_to(gb, b, batch + b_dims[-2:]),  # type: ignore[arg-type]
    ]
