"""Conv, Gemm and MatMul: linear in the image, so their VJPs reuse the forward weights."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from varrt.export.rules.context import Context
from varrt.export.rules.spatial import transposed_to_input, windows


def conv(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # d/dx of a convolution is the transposed convolution with the same weights. With unit
    # strides and constant weights that is a plain Conv with flipped, group-transposed weights,
    # which runtimes run far faster than ConvTranspose (1x1 and depthwise layers above all).
    x, weight = ctx.arg(node, 0), ctx.arg(node, 1)
    kernel = ctx.static_dims(node, weight, range(2, ctx.rank(weight)))
    w = windows(ctx, node, kernel)
    group = node.attributes.get_int("group", 1)
    out_channels = ctx.dims(weight)[0]
    if group < 1 or (out_channels is not None and out_channels % group):
        raise ctx.fail(node, f"group={group} does not divide the weight's {out_channels} output channels")
    rest = [None] * (len(node.inputs) - 1)
    reach = [(k - 1) * d for k, d in zip(kernel, w.dilations)]
    pads = [r - p for r, p in zip(reach, w.pads_begin)] + [r - p for r, p in zip(reach, w.pads_end)]
    constant = weight.const_value
    rows = ctx.to_rows(g, node.outputs[0])
    if all(s == 1 for s in w.strides) and constant is not None and min(pads) >= 0:
        flipped = flipped_transposed(constant.numpy(), group)
        gx = ctx.em.Conv(rows, ctx.em.const(flipped), pads=pads, dilations=w.dilations, group=group,
                         kernel_shape=kernel)
        return [ctx.from_rows(gx, g, x)] + rest
    return [ctx.from_rows(transposed_to_input(ctx, rows, weight, w, group), g, x)] + rest


def flipped_transposed(weight: np.ndarray, group: int) -> np.ndarray:
    """[C_out, C_in/g, *k] -> [C_in, C_out/g, *k], each kernel rotated by 180 degrees."""
    c_out, c_in_group, *kernel = weight.shape
    per_group = weight.reshape(group, c_out // group, c_in_group, *kernel).swapaxes(1, 2)
    swapped = per_group.reshape(group * c_in_group, c_out // group, *kernel)
    return np.ascontiguousarray(np.flip(swapped, axis=tuple(range(2, weight.ndim))))


def gemm(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # Y = alpha * A' B' + beta * C with A' = A or A^T, B' = B or B^T (all 2-D).
    em = ctx.em
    a, b = ctx.arg(node, 0), ctx.arg(node, 1)
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
        result.append(ctx.sum_to(gc, ctx.arg(node, 2), ctx.dims(node.outputs[0])))
    return result


def matmul(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em = ctx.em
    a, b = ctx.arg(node, 0), ctx.arg(node, 1)
    a_dims, b_dims = ctx.dims(a), ctx.dims(b)
    if len(a_dims) < 2 or len(b_dims) < 2:
        raise ctx.fail(node, "1-D MatMul operands are not supported")
    out_dims = ctx.dims(node.outputs[0])
    batch = out_dims[:-2]
    ga = em.MatMul(g, em.transpose_last2(b, len(b_dims)))  # [K, *batch, n, k]
    gb = em.MatMul(em.transpose_last2(a, len(a_dims)), g)  # [K, *batch, k, m]
    return [
        ctx.sum_to(ga, a, batch + a_dims[-2:]),
        ctx.sum_to(gb, b, batch + b_dims[-2:]),
    ]
