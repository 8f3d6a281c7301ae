"""Ops that move elements without changing them: reshapes, transposes, concatenation, slicing,
gathering with constant indices, padding, tiling."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from varrt.export.emitter import float_dtype
from varrt.export.rules.context import Context


def reshape(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    return [ctx.like_forward(g, ctx.arg(node, 0))] + [None] * (len(node.inputs) - 1)


def transpose(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    rank = ctx.rank(ctx.arg(node, 0))
    perm = list(node.attributes.get_ints("perm", list(reversed(range(rank)))))
    inverse = [int(p) + 1 for p in np.argsort(perm)]
    return [ctx.em.Transpose(g, perm=[0] + inverse)]


def concat(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em = ctx.em
    rank = ctx.rank(node.outputs[0])
    axis = node.attributes.get_int("axis") % rank
    sizes = [ctx.dims(x)[axis] for x in node.inputs]  # type: ignore[arg-type]
    if all(s is not None for s in sizes):
        offsets = np.cumsum([0] + sizes)
        return [em.slice(g, [int(b)], [int(e)], [axis + 1]) for b, e in zip(offsets[:-1], offsets[1:])]
    if ctx.opset < 10:
        raise ctx.fail(node, "needs static sizes on the concatenated axis below opset 10")
    # Sizes known only at run time (e.g. a class token expanded to the batch): Slice with
    # computed starts and ends; its axes stay constant, as TensorRT requires.
    start, pieces = em.ints([0]), []
    for x in node.inputs:
        end = em.Add(start, em.shape(x, axis, axis + 1))  # type: ignore[arg-type]
        pieces.append(em.Slice(g, start, end, em.ints([axis + 1])))
        start = end
    return pieces


def split(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x = ctx.em, ctx.arg(node, 0)
    axis = node.attributes.get_int("axis", 0) % ctx.rank(x)
    pieces = []
    for out, cot in zip(node.outputs, ctx.output_cotangents):
        pieces.append(cot if cot is not None else em.zeros_like(ctx.with_classes(out, g), out))
    return [em.Concat(*pieces, axis=axis + 1)] + [None] * (len(node.inputs) - 1)


def slice_(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # Scatter back with zeros: Pad for unit steps, zero-interleaving for larger ones.
    em, x = ctx.em, ctx.arg(node, 0)
    rank = ctx.rank(x)
    starts, ends = ctx.ints(node, "starts") or [], ctx.ints(node, "ends") or []
    axes = ctx.ints(node, "axes") or list(range(len(starts)))
    steps = ctx.ints(node, "steps") or [1] * len(starts)
    out_dims = ctx.dims(node.outputs[0])
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= rank
        size = ctx.static_dims(node, x, [axis])[0]
        first, _, _ = slice(start, end, step).indices(size)
        count = len(range(*slice(start, end, step).indices(size)))
        if step < 0:  # reverse the cotangent, then it is a positive-step slice from the last index
            g = em.slice(g, [-1], [-(2**62)], [axis + 1], [-1])
            first, step = first + (count - 1) * step, -step
        if step > 1:
            g = _interleave_zeros(ctx, node, g, axis, count, step, out_dims)
            count *= step
        out_dims = out_dims[:axis] + [size] + out_dims[axis + 1:]
        g = _place(ctx, g, axis, first, count, size, rank + 1)
    return [g] + [None] * (len(node.inputs) - 1)


def _interleave_zeros(ctx: Context, node: ir.Node, g: ir.Value, axis: int, count: int, step: int, dims) -> ir.Value:
    """[.., count, ..] -> [.., count*step, ..] with step-1 zeros after each element on ``axis``."""
    em = ctx.em
    after = list(dims[axis + 1:])
    if any(d is None for d in after):
        raise ctx.fail(node, "a strided Slice needs static sizes after the sliced axis")
    spread = em.pad(em.unsqueeze(g, [axis + 2]), [0] * (len(dims) + 2) + [0] * (axis + 2) + [step - 1]
                    + [0] * (len(dims) - axis - 1))
    return em.Reshape(spread, em.ints([0] * (axis + 1) + [count * step] + after))


def _place(ctx: Context, g: ir.Value, axis: int, first: int, length: int, size: int, n: int) -> ir.Value:
    """Put a run of ``length`` at offset ``first`` of forward axis ``axis`` (of ``size``), zeros
    around it; ``n`` is the cotangent's rank."""
    em = ctx.em
    end_gap = size - first - length
    if end_gap < 0:
        g = em.slice(g, [0], [size - first], [axis + 1])
        end_gap = 0
    pads = [0] * (2 * n)
    pads[axis + 1], pads[n + axis + 1] = first, end_gap
    return em.pad(g, pads)


def gather(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x = ctx.em, ctx.arg(node, 0)
    rank = ctx.rank(x)
    axis = node.attributes.get_int("axis", 0) % rank
    size = ctx.static_dims(node, x, [axis])[0]
    given = ctx.const(node, 1)
    if given is None:
        raise ctx.fail(node, "has no indices")
    indices = np.where(given < 0, given + size, given)
    flat = indices.reshape(-1)
    if indices.ndim == 0:
        g = em.unsqueeze(g, [axis + 1])
    elif indices.ndim > 1:
        # the dims before the axis are copied (0), so only those after the indices must be static
        after = ctx.static_dims(node, node.outputs[0], range(axis + indices.ndim, ctx.rank(node.outputs[0])))
        g = em.Reshape(g, em.ints([0] * (axis + 1) + [flat.size] + after))
    if flat.size and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
        # A contiguous run is a slice: pad it back.
        pads = [0] * (2 * (rank + 1))
        pads[axis + 1], pads[rank + 1 + axis + 1] = int(flat[0]), int(size - flat[0] - flat.size)
        return [em.pad(g, pads), None]
    # Otherwise a one-hot matrix sums each gathered row back to its source (repeats add up).
    one_hot = np.zeros((flat.size, size), dtype=np.float32)
    one_hot[np.arange(flat.size), flat] = 1.0
    last = list(range(rank + 1))
    last.append(last.pop(axis + 1))
    moved = em.MatMul(em.Transpose(g, perm=last), em.const(one_hot.astype(x.dtype.numpy())))  # type: ignore[union-attr]
    return [em.Transpose(moved, perm=[int(p) for p in np.argsort(last)]), None]


def pad(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em, x = ctx.em, ctx.arg(node, 0)
    rank = ctx.rank(x)
    mode = node.attributes.get_string("mode", "constant")
    if mode not in ("constant", *_SOURCE):
        raise ctx.fail(node, f"Pad mode '{mode}' (constant, reflect, edge and wrap are differentiated)")
    pads = ctx.ints(node, "pads") or [0] * (2 * rank)
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3] is not None:  # axes, an input from opset 18 on
        axes = [int(a) % rank for a in ctx.const(node, 3)]  # type: ignore[union-attr]
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begins[a], ends[a] = pads[i], pads[len(axes) + i]
    sizes = ctx.static_dims(node, x, [a for a in range(rank) if begins[a] or ends[a]])
    if mode != "constant":
        return [_fold_border(ctx, node, g, mode, begins, ends, sizes)] + [None] * (len(node.inputs) - 1)
    # Positive pads are cut away; negative pads (crops) are padded back with zeros.
    cut_axes = [a for a in range(rank) if begins[a] > 0 or ends[a] > 0]
    size_of = dict(zip([a for a in range(rank) if begins[a] or ends[a]], sizes))
    if cut_axes:
        g = em.slice(g, [max(begins[a], 0) for a in cut_axes],
                     [max(begins[a], 0) + size_of[a] + min(ends[a], 0) + min(begins[a], 0) for a in cut_axes],
                     [a + 1 for a in cut_axes])
    back = [0] + [max(-b, 0) for b in begins] + [0] + [max(-e, 0) for e in ends]
    return [em.pad(g, back)] + [None] * (len(node.inputs) - 1)


# Where output position i - begin of a padded axis of ``size`` reads from, per mode.
_SOURCE = {
    "edge": lambda i, size: min(max(i, 0), size - 1),
    "wrap": lambda i, size: i % size,
    "reflect": lambda i, size: _reflect(i, size),
}


def _reflect(i: int, size: int) -> int:
    if size == 1:
        return 0
    period = 2 * (size - 1)  # reflecting about both ends repeats with this period
    i %= period
    return i if i < size else period - i


def _fold_border(ctx: Context, node: ir.Node, g: ir.Value, mode: str, begins: list[int], ends: list[int],
                 sizes: list[int]) -> ir.Value:
    """Reflect/edge/wrap padding copies input elements into the border; its VJP adds each border
    cotangent back onto the element it copied: per padded axis, a constant 0/1 matrix [out, in]
    applied on that axis."""
    em, x = ctx.em, ctx.arg(node, 0)
    padded = [a for a in range(len(begins)) if begins[a] or ends[a]]
    if any(begins[a] < 0 or ends[a] < 0 for a in padded):
        raise ctx.fail(node, f"negative pads (crops) in Pad mode '{mode}'")
    rank = len(begins) + 1  # the cotangent's, class axis first
    for a, size in zip(padded, sizes):
        fold = np.zeros((begins[a] + size + ends[a], size), dtype=float_dtype(x))
        for o in range(fold.shape[0]):
            fold[o, _SOURCE[mode](o - begins[a], size)] += 1.0
        last = list(range(rank))
        last.append(last.pop(a + 1))
        moved = em.MatMul(em.Transpose(g, perm=last), em.const(fold))
        g = em.Transpose(moved, perm=[int(p) for p in np.argsort(last)])
    return g


def depth_to_space(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # DCR is undone by SpaceToDepth. CRD is DCR after a fixed channel permutation P (CRD's channel
    # c*b*b + i*b + j is DCR's (i*b + j)*C' + c), so its VJP is SpaceToDepth and then P's inverse.
    em, x = ctx.em, ctx.arg(node, 0)
    b = node.attributes.get_int("blocksize")
    rows = em.SpaceToDepth(ctx.to_rows(g, node.outputs[0]), blocksize=b)
    if node.attributes.get_string("mode", "DCR") == "CRD":
        channels = ctx.static_dims(node, x, [1])[0]
        inner = channels // (b * b)
        perm = np.arange(channels).reshape(inner, b * b).T.reshape(-1)  # DCR channel -> CRD channel
        rows = em.Gather(rows, em.ints([int(c) for c in np.argsort(perm)]), axis=1)
    return [ctx.from_rows(rows, g, x)]


def space_to_depth(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    rows = ctx.to_rows(g, node.outputs[0])
    undone = ctx.em.DepthToSpace(rows, blocksize=node.attributes.get_int("blocksize"), mode="DCR")
    return [ctx.from_rows(undone, g, ctx.arg(node, 0))]


def tile(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    # [K, r0*d0, r1*d1, ...] -> [K, r0, d0, r1, d1, ...] -> sum over the r axes.
    em, x = ctx.em, ctx.arg(node, 0)
    repeats = [int(r) for r in ctx.const(node, 1)]  # type: ignore[union-attr]
    dims = ctx.dims(x)
    if all(r == 1 for r in repeats):
        return [g, None]
    if sum(d is None for d in dims) > 1:
        raise ctx.fail(node, "needs static sizes on all but one axis")
    split = []
    for r, d in zip(repeats, dims):
        split += [r, -1 if d is None else d]
    summed = em.reduce_sum(em.Reshape(g, em.ints([0] + split)), [1 + 2 * i for i in range(len(dims))], keepdims=False)
    return [summed, None]
