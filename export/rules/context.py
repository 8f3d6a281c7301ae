"""What a VJP rule is handed: the emitter, the rule flags, and the shape questions rules ask.

Cotangents carry a leading class axis: the cotangent of a forward value of shape [N, ...] has
shape [K, N, ...]. Elementwise rules broadcast forward values against it for free; rules that need
an N-D operator's batch axis (ConvTranspose, pooling) fold K into N with ``to_rows`` and unfold
with ``from_rows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
from varrt.core.errors import ModelError
from varrt.export import bias_masks, phases
from varrt.export.emitter import Emitter
from varrt.export.phases import Phased


class _Zero:
    """A symbolic zero cotangent: no gradient flows, and no tensor of zeros is built."""

    def __repr__(self) -> str:
        return "ZERO"


ZERO: Any = _Zero()


@dataclass
class Context:
    em: Emitter
    guided: bool = False  # guided backprop: ReLU-family rules pass only positive cotangents
    output_cotangents: list[Any] = field(default_factory=list)  # of the node at hand, None = none
    _class_batch: Any = None  # [K, N] as an int64 vector, emitted once per backward pass
    # from_rows results -> (their rows, the static dims after the batch): to_rows of such a value
    # hands the rows back instead of reshaping twice (a Reshape pair would also cut ONNX Runtime's
    # blocked layout between two convolutions).
    _rows_of: dict[Any, tuple[ir.Value, tuple[int, ...]]] = field(default_factory=dict)

    @property
    def opset(self) -> int:
        return self.em.opset

    # -- reading the forward node ------------------------------------------------------------
    def fail(self, node: ir.Node, why: str) -> ModelError:
        return ModelError(f"{node.op_type} node '{node.name}': {why}")

    def const(self, node: ir.Node, index: int, default: Any = None) -> np.ndarray | None:
        """Input ``index`` of ``node`` as a NumPy array; ``default`` when the input is absent."""
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None if default is None else np.asarray(default)
        value = node.inputs[index]
        if value.const_value is None:  # type: ignore[union-attr]
            raise self.fail(node, f"input {index} ('{value.name}') must be a constant")  # type: ignore[union-attr]
        return value.const_value.numpy()  # type: ignore[union-attr]

    def ints_attr_or_input(self, node: ir.Node, name: str, index: int, since: int) -> list[int] | None:
        """An int list that moved from attribute to input at opset ``since`` (axes, pads...)."""
        if self.opset < since:
            attr = node.attributes.get(name)
            return None if attr is None else list(attr.value)
        array = self.const(node, index)
        return None if array is None else [int(v) for v in array.reshape(-1)]

    # -- shapes ------------------------------------------------------------------------------
    def dims(self, value: ir.Value) -> list[int | None]:
        """Static dims of a forward value, None where a dim is symbolic."""
        if value.shape is None:
            node = value.producer()
            where = f" (output of {node.op_type} '{node.name}')" if node else ""
            raise ModelError(f"shape inference found no rank for '{value.name}'{where}")
        return [d if isinstance(d, int) else None for d in value.shape]

    def rank(self, value: ir.Value) -> int:
        return len(self.dims(value))

    def static_dims(self, node: ir.Node, value: ir.Value, axes: Sequence[int]) -> list[int]:
        dims = self.dims(value)
        if any(a >= len(dims) for a in axes):
            raise self.fail(node, f"expects '{value.name}' to have more than {max(axes)} dimensions "
                                  f"(has shape {value.shape})")
        picked = [dims[a] for a in axes]
        if any(d is None for d in picked):
            raise self.fail(node, f"needs static sizes on axes {list(axes)} of '{value.name}' "
                                  f"(has {value.shape}); export the model with a fixed image size")
        return picked  # type: ignore[return-value]

    def sum_to(self, g: ir.Value, target: ir.Value, g_dims: Sequence[int | None]) -> ir.Value:
        """Undo broadcasting: sum the cotangent ``g`` (forward dims ``g_dims``) to ``target``'s shape."""
        t_dims = self.dims(target)
        extra = len(g_dims) - len(t_dims)
        axes = [1 + i for i in range(extra)]
        axes += [1 + extra + i for i, d in enumerate(t_dims) if d == 1 and g_dims[extra + i] != 1]
        if not axes:
            return g
        g = self.whole(g)
        summed = self.em.reduce_sum(g, axes, keepdims=True)
        return self.em.squeeze(summed, list(range(1, 1 + extra))) if extra else summed

    def with_classes(self, forward: ir.Value, g: ir.Value) -> ir.Value:
        """The shape [K, *forward.shape] as an int64 vector (K read from the cotangent ``g``)."""
        return self.em.Concat(self.em.shape(g, 0, 1), self.em.shape(forward), axis=0)

    def like_forward(self, g: ir.Value, forward: ir.Value) -> ir.Value:
        """Reshape a cotangent of the same size to [K, *forward.shape]."""
        return self.em.Reshape(g, self.em.Concat(self.em.ints([-1]), self.em.shape(forward), axis=0))

    def to_rows(self, g: ir.Value, of: ir.Value, tail: Sequence[int | None] | None = None) -> ir.Value:
        """[K, N, ...] -> [K*N, ...] for the cotangent ``g`` of forward value ``of`` (or of a value
        whose dims after the batch are ``tail``)."""
        tail = self.dims(of)[1:] if tail is None else tail
        known = self._rows_of.get(g)
        if known is not None and known[1] == tuple(tail):
            return known[0]
        if all(d is not None for d in tail):  # static: one Reshape with a constant shape
            return self.em.Reshape(g, self.em.ints([-1, *tail]))  # type: ignore[list-item]
        return self.em.Reshape(g, self.em.Concat(self.em.ints([-1]), self.em.shape(g, 2), axis=0))

    def from_rows(
        self, rows: ir.Value, g: ir.Value, of: ir.Value, tail: Sequence[int | None] | None = None
    ) -> ir.Value:
        """[K*N, ...] -> [K, N, ...]: ``rows`` becomes a cotangent of forward value ``of`` (or of a
        value whose dims after the batch are ``tail``); K and N are read once per backward pass
        from the cotangent ``g``."""
        if self._class_batch is None:
            self._class_batch = self.em.shape(g, 0, 2)
        tail = self.dims(of)[1:] if tail is None else tail
        if all(d is not None for d in tail):
            shape = self.em.Concat(self._class_batch, self.em.ints(tail), axis=0)  # type: ignore[arg-type]
            result = self.em.Reshape(rows, shape)
            self._rows_of[result] = (rows, tuple(tail))  # type: ignore[arg-type]
            return result
        return self.em.Reshape(rows, self.em.Concat(self._class_batch, self.em.shape(rows, 1), axis=0))

    # -- cotangents that may be held as stride phases (see export/phases.py) ----------------
    def whole(self, g: Any) -> Any:
        """``g`` as one tensor: a ``Phased`` cotangent is interleaved (once, however often asked)."""
        if not isinstance(g, Phased):
            return g
        if g.joined is None:
            _batch, channels, *sizes = self.dims(g.of)
            s = g.stride
            tail = [channels, *(size // s for size in sizes)]
            first = g.parts[0][0]
            rows = [[self.to_rows(part, g.of, tail) for part in row] for row in g.parts]
            joined = phases.interleave(self.em, rows, channels, sizes)  # type: ignore[arg-type]
            g.joined = self.from_rows(joined, first, g.of)
        return g.joined

    def add_all(self, parts: list[ir.Value]) -> ir.Value:
        """The sum of cotangents; of their rows when all are Conv rows alike (so the sum stays in
        ONNX Runtime's blocked layout, or fuses into the Conv as its accumulator)."""
        known = [self._rows_of.get(p) for p in parts]
        if len(parts) > 1 and all(k is not None for k in known) and len({k[1] for k in known}) == 1:  # type: ignore[index]
            return self._like_rows(self.em.add_all([k[0] for k in known]), parts[0])  # type: ignore[index]
        return self.em.add_all(parts)

    def times(self, g: Any, local: ir.Value) -> Any:
        """g * local, phase by phase for a ``Phased`` g."""
        return phases.times(self.em, g, local)

    def positive_part(self, g: Any) -> Any:
        """Relu(g), for guided backprop. When g is a Conv's output reshaped from rows, the Relu goes
        before the Reshape, right on the Conv, where runtimes fuse it into the convolution."""
        if isinstance(g, Phased):
            return g.map(lambda part, *_: self.positive_part(part), g.of)
        conv_rows = self._conv_rows(g)
        if conv_rows is not None:
            return self._like_rows(self.em.Relu(conv_rows), g)
        return self.em.Relu(g)

    def guided_relu_by_bias(self, g: Any, y: ir.Value, high: float) -> Any | None:
        """relu(g) * (0 < y < high) in the bias form of export/bias_masks.py, for the cotangent g of
        a ReLU-family activation's output y; None where that form does not apply."""
        if not bias_masks.fits(self.em, y, high):
            return None
        channels: int = y.shape[1]  # type: ignore[index, assignment]
        if isinstance(g, Phased):  # phase by phase, each against its phase of y
            rows = [[self._conv_rows(part) for part in row] for row in g.parts]
            if any(r is None for row in rows for r in row):
                return None
            return g.map(lambda part, r_h, r_w: self._like_rows(bias_masks.guided_relu(
                self.em, rows[r_h][r_w], y, high, channels, phase=(g.stride, r_h, r_w)), part), g.of)
        conv_rows = self._conv_rows(g)
        if conv_rows is None:
            return None
        return self._like_rows(bias_masks.guided_relu(self.em, conv_rows, y, high, channels), g)

    def _conv_rows(self, g: Any) -> ir.Value | None:
        """The rows [K*N, ...] when g is a single-use Conv output reshaped to [K, N, ...] and not
        used yet."""
        reshape = None if isinstance(g, Phased) else g.producer()
        if reshape is None or reshape.op_type != "Reshape" or g.uses():
            return None
        rows = reshape.inputs[0]
        conv = rows.producer() if rows is not None else None
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or len(rows.uses()) != 1:
            return None
        return rows

    def _like_rows(self, rows: ir.Value, g: ir.Value) -> ir.Value:
        """New rows shaped as the reshaped rows ``g`` were (and known to to_rows the same way)."""
        result = self.em.Reshape(rows, g.producer().inputs[1])  # type: ignore[union-attr]
        known = self._rows_of.get(g)
        if known is not None:
            self._rows_of[result] = (rows, known[1])
        return result
