"""A strided convolution's input gradient as its stride phases, joined only where needed (pass).

The plain Conv rule writes a stride-s 2-D convolution's input gradient as one ConvTranspose. On
ONNX Runtime's CPU provider that is slow for grouped and depthwise convolutions, and the ops after
it in MobileNet and EfficientNet blocks run at the higher resolution over the expanded channels,
the largest tensors of the backward. This pass writes the ConvTranspose as s*s stride-1 Convs,
one per phase r = (r_h, r_w) of the input positions y = s*q + r, and carries the phases through
the nodes that act on each position alone, each phase by itself:

    Relu, Clip and other unary ops                     phase by phase
    Add/Sub/Mul/Div of two phased values (same s)       phase by phase
    Mul by a forward value [N, C, H, W]                 times its phase: Slice(SpaceToDepth(v))
    Mul by a value constant over H and W                unchanged
    Reshape that keeps the last two axes                 shape with H/s, W/s
    1x1 Conv that narrows the channels                   phase by phase

Every other consumer gets the phases interleaved once (Concat and Reshape on the last axes).
A dense strided conv over fewer than 16 input channels (the image's three) keeps the
ConvTranspose: MLAS pads each phase conv's few outputs to a whole 16-channel block, which costs
more than it saves. Not bit-identical to the ConvTranspose (the taps are summed in another
order): tests/export/test_passes.py holds it to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from varrt.export.emitter import Emitter
from varrt.export.passes.graph import const_ints, inferred_shapes, producer
from varrt.export.rules.linear import flipped_transposed

_NARROW_DENSE = 16  # ONNX Runtime MLAS's NCHWc channel block
_UNARY = ("Relu", "Clip", "Neg", "Identity", "LeakyRelu", "Sigmoid", "Tanh", "Abs")
_BINARY = ("Add", "Sub", "Mul", "Div")


@dataclass(eq=False)
class Phases:
    stride: int
    parts: list[list[ir.Value]]  # [r_h][r_w] -> the whole value's positions (s*q_h + r_h, s*q_w + r_w)
    rank: int  # of the whole value
    spatial: tuple[int, int]  # its last two dims, H and W


class StridePhases(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inferred_shapes(model)
        graph = model.graph
        em = Emitter(graph, graph.opset_imports.get("", 1), prefix="varrt_phase")
        phased: dict[ir.Value, Phases] = {}
        joined: dict[ir.Value, ir.Value] = {}
        local_phases: dict[tuple[ir.Value, int], ir.Value] = {}

        def join(value: ir.Value) -> ir.Value:
            if value not in joined:
                whole = phased[value]
                joined[value] = interleave(em, whole.parts, whole.rank, whole.spatial)
            return joined[value]

        for node in list(graph):
            if node.op_type == "ConvTranspose" and (parts := _phase_convs(em, node)) is not None:
                phased[node.outputs[0]] = parts
                continue
            if not any(v in phased for v in node.inputs):
                continue
            mapped = None if any(v.is_graph_output() for v in node.outputs) else \
                _map(em, node, phased, local_phases)
            if mapped is not None:
                phased[node.outputs[0]] = mapped
                continue
            for index, value in enumerate(node.inputs):
                if value in phased:
                    node.replace_input_with(index, join(value))
        if not phased:
            return ir.passes.PassResult(model, modified=False)
        graph.sort()
        ir.passes.common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=True)


def _phase_convs(em: Emitter, node: ir.Node) -> Phases | None:
    rows, weight = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    if weight is None or weight.const_value is None or len(node.inputs) > 2 or out.shape is None:
        return None
    if node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET" or rows is None or rows.shape is None:
        return None
    group = node.attributes.get_int("group", 1)
    kernel = [int(k) for k in node.attributes.get_ints("kernel_shape", [])]
    strides = list(node.attributes.get_ints("strides", [1] * len(kernel)))
    dilations = list(node.attributes.get_ints("dilations", [1] * len(kernel)))
    pads = list(node.attributes.get_ints("pads", [0] * 2 * len(kernel)))
    in_sizes, out_sizes, channels = _ints(list(out.shape)[2:]), _ints(list(rows.shape)[2:]), _ints([out.shape[1]])
    if len(kernel) != 2 or in_sizes is None or out_sizes is None or channels is None:
        return None
    if group == 1 and channels[0] < _NARROW_DENSE:
        return None
    kernels = phase_kernels(weight.const_value.numpy(), group, strides, kernel, dilations, pads[:2],
                            in_sizes, out_sizes)
    if kernels is None:
        return None
    parts = [[em.Conv(rows, em.const(k), pads=p, group=group, kernel_shape=list(k.shape[2:])) for k, p in row]
             for row in kernels]
    return Phases(strides[0], parts, 4, (in_sizes[0], in_sizes[1]))


def _ints(dims: list) -> list[int] | None:
    """The dims as ints, or None when one is symbolic."""
    return [int(d) for d in dims] if all(isinstance(d, int) for d in dims) else None


def _map(em: Emitter, node: ir.Node, phased: dict[ir.Value, Phases],
         local_phases: dict[tuple[ir.Value, int], ir.Value]) -> Phases | None:
    """``node`` applied phase by phase, or None where it needs its phased inputs whole."""
    first = next(v for v in node.inputs if v in phased)
    s, rank, spatial = phased[first].stride, phased[first].rank, phased[first].spatial
    if len(node.outputs) != 1 or any(v in phased and phased[v].spatial != spatial for v in node.inputs):
        return None
    attributes = {name: attr.value for name, attr in node.attributes.items()}

    def each(make, rank: int = rank) -> Phases:
        return Phases(s, [[make(r_h, r_w) for r_w in range(s)] for r_h in range(s)], rank, spatial)

    def part(value: ir.Value | None, r_h: int, r_w: int) -> ir.Value | None:
        return phased[value].parts[r_h][r_w] if value in phased else value

    op = node.op_type
    if op in _UNARY and node.inputs[0] in phased and not any(v in phased for v in node.inputs[1:]):
        return each(lambda r_h, r_w: em.op(op, *[part(v, r_h, r_w) for v in node.inputs], **attributes))
    if op in _BINARY and len(node.inputs) == 2:
        ranks = [phased[v].rank for v in node.inputs if v in phased]
        if all(v in phased for v in node.inputs):
            return each(lambda r_h, r_w: em.op(op, *[part(v, r_h, r_w) for v in node.inputs]), max(ranks))
        other = node.inputs[1] if node.inputs[0] in phased else node.inputs[0]
        if op != "Mul" or other is None or other.shape is None:
            return None
        pick = _local_phase(em, other, spatial, s, local_phases)
        if pick is None:
            return None
        # Mul commutes
        return each(lambda r_h, r_w: em.Mul(part(first, r_h, r_w), pick(r_h, r_w)), max(rank, len(other.shape)))
    if op == "Reshape" and node.inputs[0] in phased:
        found = _phase_shape(em, node, spatial, s)
        if found is None:
            return None
        shape, new_rank = found
        return each(lambda r_h, r_w: em.Reshape(part(first, r_h, r_w), shape), new_rank)
    if op == "Conv" and node.inputs[0] in phased and _narrowing_pointwise(node):
        return each(lambda r_h, r_w: em.op("Conv", *[part(v, r_h, r_w) for v in node.inputs], **attributes))
    return None


def _local_phase(em: Emitter, value: ir.Value, spatial: tuple[int, int], s: int,
                 cache: dict[tuple[ir.Value, int], ir.Value]):
    """phase (r_h, r_w) -> the matching phase of a forward value that multiplies a phased one."""
    shape = value.shape
    if shape is None:
        return None
    dims = list(shape)
    if len(dims) < 2 or dims[-2:] == [1, 1]:
        return lambda r_h, r_w: value  # constant over H and W: the same for every phase
    if len(dims) != 4 or tuple(dims[-2:]) != spatial or not isinstance(dims[1], int):
        return None
    channels = dims[1]

    def pick(r_h: int, r_w: int) -> ir.Value:
        # SpaceToDepth stacks the phases on the channels, phase (r_h, r_w) at block r_h*s + r_w:
        # one pass over the value, where strided Slices would copy element by element.
        block = r_h * s + r_w
        if (value, block) not in cache:
            stacked = cache.get((value, -1)) or em.SpaceToDepth(value, blocksize=s)
            cache[(value, -1)] = stacked
            cache[(value, block)] = em.slice(stacked, [block * channels], [(block + 1) * channels], [1])
        return cache[(value, block)]

    return pick


def _phase_shape(em: Emitter, node: ir.Node, spatial: tuple[int, int], s: int) -> tuple[ir.Value, int] | None:
    """A phase's shape operand, and the result's rank, when the Reshape keeps the last two axes
    (its shape ends in the literal H, W): a constant, or a Concat ending in a constant."""
    shape = node.inputs[1]
    if shape is None or node.attributes.get_int("allowzero", False):
        return None
    phase = [spatial[0] // s, spatial[1] // s]
    if (values := const_ints(shape)) is not None:
        if values[-2:] != list(spatial) or 0 in values[-2:]:
            return None
        return em.ints(values[:-2] + phase), len(values)
    concat = producer(shape, "Concat")
    if concat is None or any(v is None or v.shape is None for v in concat.inputs):
        return None
    values = const_ints(concat.inputs[-1]) or []
    lengths = [v.shape[0] for v in concat.inputs]  # type: ignore[union-attr, index]
    if values[-2:] != list(spatial) or not all(isinstance(n, int) for n in lengths):
        return None
    return em.Concat(*concat.inputs[:-1], em.ints(values[:-2] + phase), axis=0), sum(lengths)  # type: ignore[arg-type]


def _narrowing_pointwise(node: ir.Node) -> bool:
    """A 1x1 Conv, stride 1, no padding, with fewer output than input channels (or as many):
    it acts on each position alone, and interleaving after it moves less data than before."""
    weight = node.inputs[1]
    if weight is None or weight.shape is None or len(weight.shape) != 4 or list(weight.shape)[2:] != [1, 1]:
        return False
    attrs = node.attributes
    if any(v != 1 for v in attrs.get_ints("strides", [1, 1])) or any(attrs.get_ints("pads", [0, 0, 0, 0])):
        return False
    if attrs.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return False
    group = attrs.get_int("group", 1)
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    return isinstance(out_channels, int) and isinstance(in_per_group, int) and out_channels <= in_per_group * group


def interleave(em: Emitter, parts: list[list[ir.Value]], rank: int, spatial: tuple[int, int]) -> ir.Value:
    """[r_h][r_w] -> [..., Q_h, Q_w] phases into one [..., H, W] tensor (rank ``rank``), with
    concatenations on the last axes (contiguous copies) instead of a transpose."""
    rows = []
    for row in parts:  # along W: [..., Q_h, Q_w, s] -> [..., Q_h, s*Q_w]
        stacked = em.Concat(*[em.unsqueeze(p, [rank]) for p in row], axis=rank)
        rows.append(em.Reshape(stacked, em.ints([0] * (rank - 1) + [-1])))
    stacked = em.Concat(*[em.unsqueeze(r, [rank - 1]) for r in rows], axis=rank - 1)  # [..., Q_h, s, W]
    return em.Reshape(stacked, em.ints([0] * (rank - 2) + list(spatial)))


def phase_kernels(weight: np.ndarray, group: int, strides: list[int], kernel: list[int], dilations: list[int],
                  pads_begin: list[int], in_sizes: list[int], out_sizes: list[int]
                  ) -> list[list[tuple[np.ndarray, list[int]]]] | None:
    """A strided 2-D conv's input gradient as s*s stride-1 Convs, one per output phase.

    Input position y = s*q + r receives tap i from cotangent position q - m with
    m = (i*dilation - r - pad_begin) / s, when that is an integer: each phase r is a plain
    correlation of the cotangent with the taps of that phase. Returns [r_h][r_w] -> (weights,
    pads), or None when the geometry does not fit (unequal strides, sizes not divisible by s,
    a phase without taps, pads that would crop).
    """
    s = strides[0]
    if len(strides) != 2 or s == 1 or any(t != s for t in strides) or any(i % s for i in in_sizes):
        return None
    axes = []  # per axis, per phase: (taps [(i, m)], kernel length, pad begin, pad end)
    for k, d, p, size, out in zip(kernel, dilations, pads_begin, in_sizes, out_sizes):
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
    flipped = flipped_transposed(weight, group)  # [C_in, C_out/g, k_h, k_w], kernels rotated
    k_h, k_w = kernel
    result = []
    for taps_h, len_h, top_h, end_h in axes[0]:
        row = []
        for taps_w, len_w, top_w, end_w in axes[1]:
            weights_r = np.zeros(flipped.shape[:2] + (len_h, len_w), dtype=weight.dtype)
            for i_h, m_h in taps_h:
                for i_w, m_w in taps_w:
                    # correlation tap t = top - m reads cotangent position q + t - top = q - m
                    weights_r[:, :, len_h - 1 - (top_h - m_h), len_w - 1 - (top_w - m_w)] = \
                        flipped[:, :, k_h - 1 - i_h, k_w - 1 - i_w]
            row.append((np.ascontiguousarray(weights_r[:, :, ::-1, ::-1]), [top_h, top_w, end_h, end_w]))
        result.append(row)
    return result
