"""Resize and Upsample (nearest, linear, cubic) on the last one or two axes, as constant matrices."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from varrt.export.rules.context import Context
from varrt.export.rules.separable import probe_matrix, separable_vjp


def resize(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    x, y = ctx.arg(node, 0), node.outputs[0]
    rank = ctx.rank(x)
    if not _keeps_batch(ctx, node, x, y):
        raise ctx.fail(node, f"needs to keep the batch axis: '{x.name}' {x.shape} resized to {y.shape}")
    in_dims = [0] + ctx.static_dims(node, x, range(1, rank))  # the batch may be dynamic: 0 stands for it
    out_dims = [0] + ctx.static_dims(node, y, range(1, rank))
    changed = [a for a in range(rank) if in_dims[a] != out_dims[a]]
    if rank not in (3, 4):
        raise ctx.fail(node, f"resizing a rank-{rank} tensor (only [N, C, L] and [N, C, H, W])")
    first_spatial = 2
    if any(a < first_spatial for a in changed):
        raise ctx.fail(node, "resizing the batch or channel axis is not differentiated")
    if node.attributes.get_string("coordinate_transformation_mode", "") == "tf_crop_and_resize":
        raise ctx.fail(node, "coordinate mode tf_crop_and_resize is not differentiated")
    scales = _scales(ctx, node, rank)
    spatial = list(range(first_spatial, rank))
    matrices = [
        probe_matrix(_probe(node, ctx.opset, [scales[a] for a in spatial], [out_dims[a] for a in spatial],
                            scales_given=_uses_scales(ctx, node)),
                     i, len(spatial), in_dims[a], ctx.opset)
        for i, a in enumerate(spatial)
    ]
    return [separable_vjp(ctx, g, matrices)] + [None] * (len(node.inputs) - 1)


def _keeps_batch(ctx: Context, node: ir.Node, x: ir.Value, y: ir.Value) -> bool:
    """Whether the output's batch axis is the input's: equal sizes, the same named dim, or scale 1."""
    have, get = (x.shape or [None])[0], (y.shape or [None])[0]
    if isinstance(have, int) or isinstance(get, int):
        return have == get
    name = getattr(have, "value", None)
    if name is not None and name == getattr(get, "value", None):
        return True
    return _uses_scales(ctx, node) and _scales(ctx, node, ctx.rank(x))[0] == 1.0


def _uses_scales(ctx: Context, node: ir.Node) -> bool:
    if node.op_type == "Upsample" or ctx.opset < 11:
        return True
    return not (len(node.inputs) > 3 and node.inputs[3] is not None)


def _scales(ctx: Context, node: ir.Node, rank: int) -> list[float]:
    """Per-axis scales as the op sees them (1 where absent)."""
    if node.op_type == "Upsample" and ctx.opset < 9:
        values = list(node.attributes.get_floats("scales"))
    elif node.op_type == "Upsample" or ctx.opset < 11:
        values = list(ctx.const(node, 1))  # type: ignore[arg-type]
    elif _uses_scales(ctx, node):
        values = list(ctx.const(node, 2))  # type: ignore[arg-type]
    else:
        return [1.0] * rank
    axes = list(node.attributes.get_ints("axes", list(range(rank))))
    per_axis = [1.0] * rank
    for a, s in zip(axes, values):
        per_axis[a % rank] = float(s)
    return per_axis


def _probe(node: ir.Node, opset: int, scales: list[float], sizes: list[int], scales_given: bool):
    """The op restricted to one spatial axis, the others of size 1 with scale 1."""
    attributes = {k: a.value for k, a in node.attributes.items() if k != "axes"}

    def make(axis: int, spatial_rank: int, in_size: int):
        axis_scales = [1.0, 1.0] + [scales[axis] if a == axis else 1.0 for a in range(spatial_rank)]
        extras = []
        if node.op_type == "Upsample" or opset < 11:
            extras.append(onnx.numpy_helper.from_array(np.asarray(axis_scales, np.float32), "scales"))
            inputs = ["x", "scales"]
        else:
            # Opsets 11-12 require roi and scales inputs even when empty.
            empty = onnx.numpy_helper.from_array(np.zeros(0, np.float32), "empty")
            optional = "" if opset >= 13 else "empty"
            if opset < 13:
                extras.append(empty)
            if scales_given:
                extras.append(onnx.numpy_helper.from_array(np.asarray(axis_scales, np.float32), "scales"))
                inputs = ["x", optional, "scales"]
            else:
                # Only the probed axis changes size; the batch axis holds the one-hot basis.
                probe_sizes = [in_size, 1] + [sizes[axis] if a == axis else 1 for a in range(spatial_rank)]
                extras.append(onnx.numpy_helper.from_array(np.asarray(probe_sizes, np.int64), "sizes"))
                inputs = ["x", optional, optional, "sizes"]
        node_proto = onnx.helper.make_node(node.op_type, inputs, ["y"], **attributes)
        return node_proto, extras

    return make
