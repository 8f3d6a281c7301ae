"""Normalisations in inference form: BatchNormalization, InstanceNormalization,
LayerNormalization, GroupNormalization, LRN."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from varrt.export.rules.context import Context


def batch_norm(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # Inference: an affine map per channel, y = x * scale / sqrt(var + eps) + shift.
    em, x, scale, var = ctx.em, ctx.arg(node, 0), ctx.arg(node, 1), ctx.arg(node, 4)
    if node.attributes.get_int("training_mode", 0):
        raise ctx.fail(node, "BatchNormalization in training mode")
    eps = node.attributes.get_float("epsilon", 1e-5)
    per_channel = em.Div(scale, em.Sqrt(em.Add(var, em.scalar(eps, like=x))))
    spatial = list(range(1, ctx.rank(x) - 1))
    if spatial:
        per_channel = em.unsqueeze(per_channel, spatial)
    return [em.Mul(g, per_channel)] + [None] * (len(node.inputs) - 1)


def _normalized_vjp(ctx: Context, x: ir.Value, g_hat: ir.Value, axes: list[int], eps: float,
                    dtype_of: ir.Value | None = None) -> ir.Value:
    """d/dx of x_hat = (x - mean) / sqrt(var + eps) over ``axes`` (forward axes), given dL/dx_hat:
    rstd * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)). ``dtype_of``: a forward value of
    x's dtype, where x is an emitted value whose dtype is not recorded."""
    em = ctx.em
    mean = em.reduce_mean(x, axes)
    centred = em.Sub(x, mean)
    variance = em.reduce_mean(em.Mul(centred, centred), axes)
    rstd = em.Reciprocal(em.Sqrt(em.Add(variance, em.scalar(eps, like=dtype_of or x))))
    x_hat = em.Mul(centred, rstd)
    cot_axes = [a + 1 for a in axes]
    term = em.Add(em.reduce_mean(g_hat, cot_axes), em.Mul(x_hat, em.reduce_mean(em.Mul(g_hat, x_hat), cot_axes)))
    return em.Mul(rstd, em.Sub(g_hat, term))


def instance_norm(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x, scale = ctx.em, ctx.arg(node, 0), ctx.arg(node, 1)
    rank = ctx.rank(x)
    gamma = em.unsqueeze(scale, list(range(1, rank - 1)))
    eps = node.attributes.get_float("epsilon", 1e-5)
    return [_normalized_vjp(ctx, x, em.Mul(g, gamma), list(range(2, rank)), eps), None, None]


def layer_norm(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x, scale = ctx.em, ctx.arg(node, 0), ctx.arg(node, 1)
    rank = ctx.rank(x)
    axis = node.attributes.get_int("axis", -1) % rank
    eps = node.attributes.get_float("epsilon", 1e-5)
    gx = _normalized_vjp(ctx, x, em.Mul(g, scale), list(range(axis, rank)), eps)
    return [gx] + [None] * (len(node.inputs) - 1)


def _group_norm(per_group_scale: bool):
    """GroupNormalization: statistics over each group of C/G channels and all spatial positions,
    then a scale per channel; opset 18 gave the scale per group (one value for a group's
    channels), opset 21 per channel."""

    def vjp(ctx: Context, node: ir.Node, g: ir.Value) -> list:
        em, x, scale = ctx.em, ctx.arg(node, 0), ctx.arg(node, 1)
        rank = ctx.rank(x)
        groups = node.attributes.get_int("num_groups")
        channels = ctx.static_dims(node, x, [1])[0]
        if groups is None or groups < 1 or channels % groups:
            raise ctx.fail(node, f"num_groups={groups} does not divide {channels} channels")
        if per_group_scale:
            scale = em.Reshape(em.Expand(em.Reshape(scale, em.ints([groups, 1])),
                                         em.ints([groups, channels // groups])), em.ints([channels]))
        gamma = em.unsqueeze(scale, list(range(1, rank - 1))) if rank > 2 else scale
        grouped = em.Reshape(x, em.ints([0, groups, -1]))  # [N, G, C/G * spatial]
        g_hat = em.Reshape(em.Mul(g, gamma), em.ints([0, 0, groups, -1]))
        eps = node.attributes.get_float("epsilon", 1e-5)
        gx = _normalized_vjp(ctx, grouped, g_hat, [2], eps, dtype_of=x)
        return [ctx.like_forward(gx, x)] + [None] * (len(node.inputs) - 1)

    return vjp


group_norm_18, group_norm = _group_norm(True), _group_norm(False)


def lrn(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # y_c = x_c * d_c^-beta,  d_c = bias + alpha/size * sum_{j in window(c)} x_j^2, so
    # dL/dx_j = g_j d_j^-beta - 2 beta alpha/size x_j sum_{c: j in window(c)} g_c x_c d_c^(-beta-1).
    em, x, y = ctx.em, ctx.arg(node, 0), node.outputs[0]
    size = node.attributes.get_int("size")
    alpha = node.attributes.get_float("alpha", 1e-4)
    beta = node.attributes.get_float("beta", 0.75)
    bias = node.attributes.get_float("bias", 1.0)
    channels = ctx.static_dims(node, x, [1])[0]
    rank = ctx.rank(x)
    band = np.zeros((channels, channels), dtype=np.float32)  # band[c, j] = j in window(c)
    for c in range(channels):
        band[c, max(0, c - (size - 1) // 2): min(channels, c + (size - 1) - (size - 1) // 2 + 1)] = 1.0

    def channel_matmul(v: ir.Value, matrix: np.ndarray, v_rank: int, axis: int) -> ir.Value:
        last = list(range(v_rank))
        last.append(last.pop(axis))
        moved = em.MatMul(em.Transpose(v, perm=last), em.const(matrix))
        back = list(np.argsort(last))
        return em.Transpose(moved, perm=[int(p) for p in back])

    d = em.Add(em.scalar(bias, like=x),
               em.Mul(em.scalar(alpha / size, like=x), channel_matmul(em.Mul(x, x), band.T, rank, 1)))
    d_pow = em.Pow(d, em.scalar(-beta, like=x))
    inner = em.Mul(em.Mul(g, y), em.Reciprocal(d))  # g_c x_c d_c^(-beta-1) = g_c y_c / d_c
    spread = channel_matmul(inner, band, rank + 1, 2)
    gx = em.Sub(em.Mul(g, d_pow), em.Mul(em.scalar(2.0 * beta * alpha / size, like=x), em.Mul(x, spread)))
    return [gx]
