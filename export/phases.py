"""A strided convolution's input cotangent, kept as its stride phases until a rule needs it whole.

The Conv rule computes the input gradient of a stride-s 2-D convolution as s*s stride-1 Convs, one
per phase r = (r_h, r_w) of the input positions y = s*q + r. Interleaving the phases into one
tensor costs passes over the largest tensors of the whole backward: in MobileNet and EfficientNet
blocks the strided layer is a depthwise conv over the expanded channels at the higher resolution.
Yet the rules that come next (the activation's mask, then a 1x1 Conv that narrows the channels)
act on each position alone, so they can act on each phase alone. ``Phased`` carries the phases;
the driver hands it to the rules that take it (``takes_phases``) and interleaves it, once, for
every other consumer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx_ir as ir
from varrt.export.emitter import Emitter


@dataclass(eq=False)
class Phased:
    """The cotangent of a value [N, C, H, W] as s*s phase tensors; ``Context.whole`` joins it."""

    parts: list[list[ir.Value]]  # [r_h][r_w] -> cotangent phase [K, N, C, H/s, W/s]
    of: ir.Value  # the forward value [N, C, H, W] whose cotangent this is
    joined: ir.Value | None = None  # the interleaved tensor, once some rule asked for it

    @property
    def stride(self) -> int:
        return len(self.parts)

    def map(self, fn: Callable[[ir.Value, int, int], ir.Value], of: ir.Value) -> Phased:
        """fn(part, r_h, r_w) on every phase: the cotangent of forward value ``of``."""
        return Phased([[fn(part, r_h, r_w) for r_w, part in enumerate(row)] for r_h, row in enumerate(self.parts)], of)


def takes_phases(rule: Callable) -> Callable:
    """Mark a rule that accepts a ``Phased`` cotangent (the driver joins it for all others)."""
    rule.takes_phases = True  # type: ignore[attr-defined]
    return rule


def times(em: Emitter, g: ir.Value | Phased, local: ir.Value) -> ir.Value | Phased:
    """g * local for a local derivative ``local`` shaped like the forward value [N, C, H, W]."""
    if not isinstance(g, Phased):
        return em.Mul(g, local)
    # SpaceToDepth stacks the phases along the channels, phase (r_h, r_w) at block r_h*s + r_w:
    # one pass, where strided Slices copy element by element.
    stacked = em.SpaceToDepth(local, blocksize=g.stride)
    channels = g.of.shape[1]  # type: ignore[index]

    def phase(r_h: int, r_w: int) -> ir.Value:
        block = r_h * g.stride + r_w
        return em.slice(stacked, [block * channels], [(block + 1) * channels], [1])

    return g.map(lambda part, r_h, r_w: em.Mul(part, phase(r_h, r_w)), g.of)


def add(parts: Sequence[ir.Value | Phased], join: Callable[[Phased], ir.Value],
        add_all: Callable[[list[ir.Value]], ir.Value]) -> ir.Value | Phased:
    """The sum of cotangents of one value: phase by phase when all are phased alike."""
    if all(isinstance(p, Phased) for p in parts) and len({p.stride for p in parts}) == 1:  # type: ignore[union-attr]
        first: Phased = parts[0]  # type: ignore[assignment]
        return first.map(lambda _, r_h, r_w: add_all([p.parts[r_h][r_w] for p in parts]), first.of)  # type: ignore[union-attr]
    return add_all([join(p) if isinstance(p, Phased) else p for p in parts])


def interleave(em: Emitter, phases: Sequence[Sequence[ir.Value]], channels: int, sizes: Sequence[int]) -> ir.Value:
    """[r_h][r_w] -> [B, C, Q_h, Q_w] phases into one [B, C, s*Q_h, s*Q_w] tensor, with
    concatenations on the last axes (contiguous copies) instead of a 6-D transpose."""
    rows = []
    for row in phases:  # interleave along W: [B, C, Q_h, Q_w, s] -> [B, C, Q_h, s*Q_w]
        stacked = em.Concat(*[em.unsqueeze(p, [4]) for p in row], axis=4)
        rows.append(em.Reshape(stacked, em.ints([0, channels, 0, -1])))
    stacked = em.Concat(*[em.unsqueeze(r, [3]) for r in rows], axis=3)  # [B, C, Q_h, s, s*Q_w]
    return em.Reshape(stacked, em.ints([0, channels, *sizes]))
