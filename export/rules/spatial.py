"""Window geometry shared by Conv and the pooling rules.

Their input-gradients are ConvTranspose ops run without padding: the full-size result is then
cropped at the forward's leading pads (and zero-filled where the forward's last windows did not
reach the end of the input), which covers explicit pads, auto_pad and ceil_mode alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx_ir as ir
from varrt.export.rules.context import Context


@dataclass
class Windows:
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads_begin: list[int]
    pads_end: list[int]
    in_sizes: list[int]
    out_sizes: list[int]

    def full_sizes(self) -> list[int]:
        """Extent of the padded input the windows touch: a stride-s ConvTranspose's output size."""
        return [(o - 1) * s + (k - 1) * d + 1
                for o, s, k, d in zip(self.out_sizes, self.strides, self.kernel, self.dilations)]


def windows(ctx: Context, node: ir.Node, kernel: Sequence[int]) -> Windows:
    """Read kernel/strides/dilations/pads/auto_pad of a Conv or pool node with static spatial sizes."""
    x, y = node.inputs[0], node.outputs[0]
    spatial = range(2, ctx.rank(x))  # type: ignore[arg-type]
    in_sizes = ctx.static_dims(node, x, spatial)  # type: ignore[arg-type]
    out_sizes = ctx.static_dims(node, y, spatial)
    n = len(in_sizes)
    strides = list(node.attributes.get_ints("strides", [1] * n))
    dilations = list(node.attributes.get_ints("dilations", [1] * n))
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((o - 1) * s + (k - 1) * d + 1 - i, 0)
                 for o, s, k, d, i in zip(out_sizes, strides, kernel, dilations, in_sizes)]
        small = [t // 2 for t in total]
        begin = small if auto_pad == "SAME_UPPER" else [t - h for t, h in zip(total, small)]
        end = [t - b for t, b in zip(total, begin)]
    elif auto_pad == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = list(node.attributes.get_ints("pads", [0] * (2 * n)))
        begin, end = pads[:n], pads[n:]
    return Windows(list(kernel), strides, dilations, begin, end, in_sizes, out_sizes)


def transposed_to_input(ctx: Context, rows: ir.Value, weight: ir.Value, w: Windows, group: int) -> ir.Value:
    """ConvTranspose of [B, C_out, *out] back to [B, C_in, *in_sizes]: the crop is folded into
    the op's pads and output_padding where they can express it (one op, no Slice)."""
    end = [f - b - i for f, b, i in zip(w.full_sizes(), w.pads_begin, w.in_sizes)]  # < 0: input past the windows
    output_padding = [max(-e, 0) for e in end]
    common = dict(strides=w.strides, dilations=w.dilations, group=group, kernel_shape=w.kernel)
    if all(op < max(s, d) for op, s, d in zip(output_padding, w.strides, w.dilations)):
        extra = {"output_padding": output_padding} if any(output_padding) else {}
        return ctx.em.ConvTranspose(rows, weight, pads=w.pads_begin + [max(e, 0) for e in end], **common, **extra)
    return crop_to_input(ctx, ctx.em.ConvTranspose(rows, weight, **common), w)


def crop_to_input(ctx: Context, full: ir.Value, w: Windows) -> ir.Value:
    """Cut a [B, C, *full_sizes] transposed-conv result down to [B, C, *in_sizes]."""
    shortfall = [max(b + i - f, 0) for b, i, f in zip(w.pads_begin, w.in_sizes, w.full_sizes())]
    n = len(w.in_sizes)
    padded = ctx.em.pad(full, [0] * (n + 2) + [0, 0] + shortfall)
    return ctx.em.slice(padded, w.pads_begin, [b + i for b, i in zip(w.pads_begin, w.in_sizes)],
                        list(range(2, 2 + n)))
