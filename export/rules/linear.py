"""Conv, ConvTranspose, Gemm, MatMul and Einsum: linear in the image, so their VJPs reuse the forward weights."""

from __future__ import annotations

from collections.abc import Sequence

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


def conv_transpose(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # The adjoint of a transposed convolution is the convolution with the same weights, strides,
    # dilations, groups and pads; output_padding only adds outputs past the last window, which the
    # convolution's floor drops again.
    x, weight = ctx.arg(node, 0), ctx.arg(node, 1)
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID") or node.attributes.get("output_shape") is not None:
        raise ctx.fail(node, f"auto_pad={auto_pad} or output_shape (its pads are "
                             "split differently by the spec and runtimes; export explicit pads)")
    kernel = ctx.static_dims(node, weight, range(2, ctx.rank(weight)))
    n = len(kernel)
    pads = [0] * (2 * n) if auto_pad == "VALID" else list(node.attributes.get_ints("pads", [0] * (2 * n)))
    rows = ctx.em.Conv(ctx.to_rows(g, node.outputs[0]), weight, pads=pads, kernel_shape=kernel,
                       strides=list(node.attributes.get_ints("strides", [1] * n)),
                       dilations=list(node.attributes.get_ints("dilations", [1] * n)),
                       group=node.attributes.get_int("group", 1))
    return [ctx.from_rows(rows, g, x)] + [None] * (len(node.inputs) - 1)


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
        return _matmul_vector(ctx, node, g)
    out_dims = ctx.dims(node.outputs[0])
    batch = out_dims[:-2]
    ga = em.MatMul(g, em.transpose_last2(b, len(b_dims)))  # [K, *batch, n, k]
    gb = em.MatMul(em.transpose_last2(a, len(a_dims)), g)  # [K, *batch, k, m]
    return [
        ctx.sum_to(ga, a, batch + a_dims[-2:]),
        ctx.sum_to(gb, b, batch + b_dims[-2:]),
    ]


def _matmul_vector(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    """MatMul with a 1-D operand, as NumPy: a vector a is a row [1, k], a vector b a column [k, 1],
    and the inserted axis is dropped from the output; the cotangent gets it back, and a vector's
    cotangent sums over the batch axes and that axis."""
    em = ctx.em
    a, b = ctx.arg(node, 0), ctx.arg(node, 1)
    a_vec, b_vec = ctx.rank(a) == 1, ctx.rank(b) == 1
    a_dims, b_dims = ctx.dims(a), ctx.dims(b)
    batch = [] if a_vec and b_vec else b_dims[:-2] if a_vec else a_dims[:-2]
    nb = len(batch)
    inserted = ([1 + nb] if a_vec else []) + ([2 + nb] if b_vec else [])
    g = em.unsqueeze(g, inserted)  # [K, *batch, n, m]
    b_t = em.unsqueeze(b, [0]) if b_vec else em.transpose_last2(b, len(b_dims))  # [.., m, k]
    a_t = em.unsqueeze(a, [1]) if a_vec else em.transpose_last2(a, len(a_dims))  # [.., k, n]
    ga = em.MatMul(g, b_t)  # [K, *batch, n, k]
    gb = em.MatMul(a_t, g)  # [K, *batch, k, m]
    batch_axes = list(range(1, 1 + nb))
    ga = (em.reduce_sum(ga, batch_axes + [1 + nb], keepdims=False) if a_vec
          else ctx.sum_to(ga, a, batch + a_dims[-2:]))
    gb = (em.reduce_sum(gb, batch_axes + [2 + nb], keepdims=False) if b_vec
          else ctx.sum_to(gb, b, batch + b_dims[-2:]))
    return [ga, gb]


def einsum(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # Multilinear: each operand's cotangent is the Einsum of the output cotangent (a class label
    # in front) with the other operands, written to the operand's labels. Labels of an operand
    # summed inside it alone come back by broadcasting; the emitted equations carry no ellipsis
    # and use lowercase labels only.
    operands = [ctx.arg(node, j) for j in range(len(node.inputs))]
    terms, out = _einsum_labels(ctx, node, operands)
    names = dict(zip(sorted({label for term in terms for label in term} | set(out)), "abcdefghijlmnopqrstuvwxyz"))
    if len(names) > 25:
        raise ctx.fail(node, f"{len(names)} indices (at most 25 besides the class index)")

    def spell(labels: Sequence[str]) -> str:
        return "".join(names[label] for label in labels)

    cotangents: list = []
    for i, (term, x) in enumerate(zip(terms, operands)):
        if len(set(term)) < len(term):
            raise ctx.fail(node, f"operand {i} repeats an index ('{spell(term)}', a diagonal)")
        others = [t for j, t in enumerate(terms) if j != i]
        seen = set(out).union(*others)
        kept = [label for label in term if label in seen]
        equation = ",".join(["k" + spell(out), *map(spell, others)]) + "->k" + spell(kept)
        gx = ctx.em.Einsum(g, *[v for j, v in enumerate(operands) if j != i], equation=equation)
        if len(kept) < len(term):  # summed in this operand only: every element got the same share
            gx = ctx.em.unsqueeze(gx, [1 + j for j, label in enumerate(term) if label not in seen])
            gx = ctx.em.Expand(gx, ctx.with_classes(x, g))
        cotangents.append(gx)
    return cotangents


def _einsum_labels(ctx: Context, node: ir.Node, operands: list[ir.Value]) -> tuple[list[list[str]], list[str]]:
    """The equation's operand and output labels, each ellipsis spelled out as labels of its own
    (right-aligned across operands, numbered '0', '1', ...); refuses an ellipsis that broadcasts."""
    equation = node.attributes.get_string("equation", "").replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    raw = lhs.split(",")
    if len(raw) != len(operands):
        raise ctx.fail(node, f"equation '{equation}' has {len(raw)} operands for {len(operands)} inputs")
    spans = [ctx.rank(x) - (len(t) - 3) if "..." in t else 0 for t, x in zip(raw, operands)]
    width = max(spans, default=0)
    ellipsis = [str(d) for d in range(width)]

    def expand(term: str, span: int) -> list[str]:
        head, dots, tail = term.partition("...")
        return list(head) + (ellipsis[width - span:] if dots else []) + list(tail)

    terms = [expand(t, s) for t, s in zip(raw, spans)]
    for label in ellipsis:  # one size per ellipsis axis: no broadcasting of 1s
        sizes = {ctx.dims(x)[t.index(label)] for t, x in zip(terms, operands) if label in t}
        if len(sizes) > 1 and 1 in sizes:
            raise ctx.fail(node, f"'{equation}' broadcasts an ellipsis axis of size 1 against {sizes - {1}}")
    if arrow:
        out = expand(rhs, width)
    else:  # implicit output: the ellipsis, then the indices used once, alphabetically
        counts = [label for t in terms for label in t if label not in ellipsis]
        out = ellipsis + sorted(label for label in set(counts) if counts.count(label) == 1)
    return terms, out
