"""What a VJP rule is handed: the emitter and the shape questions rules ask.

Cotangents carry a leading class axis: the cotangent of a forward value of shape [N, ...] has
shape [K, N, ...]. Elementwise rules broadcast forward values against it for free; rules that need
an N-D operator's batch axis (ConvTranspose, pooling) fold K into N with ``to_rows`` and unfold
with ``from_rows``. Nothing here knows of a runtime: layouts and fusions are the passes' business
(export/passes/).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
from varrt.core.errors import ModelError
from varrt.export import spellings
from varrt.export.emitter import Emitter


class _Zero:
    """A symbolic zero cotangent: no gradient flows, and no tensor of zeros is built."""

    def __repr__(self) -> str:
        return "ZERO"


ZERO: Any = _Zero()


@dataclass
class Context:
    em: Emitter
    output_cotangents: list[Any] = field(default_factory=list)  # of the node at hand, None = none
    settings: Mapping[str, Any] = field(default_factory=dict)  # the modified backward's (LRP's rule, epsilon)
    _class_batch: Any = None  # [K, N] as an int64 vector, emitted once per backward pass
    _row_shapes: dict[tuple[int, ...], ir.Value] = field(default_factory=dict)  # tail -> [K, N, *tail]

    @property
    def opset(self) -> int:
        return self.em.opset

    # -- reading the forward node ------------------------------------------------------------
    def fail(self, node: ir.Node, why: str) -> ModelError:
        return ModelError(f"{node.op_type} node '{node.name}': {why}")

    def arg(self, node: ir.Node, index: int) -> ir.Value:
        """Input ``index`` of ``node``, one the op requires (or the rule needs)."""
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is None:
            raise self.fail(node, f"has no input {index}")
        return value

    def const(self, node: ir.Node, index: int, default: Any = None) -> np.ndarray | None:
        """Input ``index`` of ``node`` as a NumPy array; ``default`` when the input is absent."""
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None if default is None else np.asarray(default)
        value: Any = node.inputs[index]
        if value.const_value is None:
            raise self.fail(node, f"input {index} ('{value.name}') must be a constant")
        return np.asarray(value.const_value.numpy())

    def operand(self, node: ir.Node, name: str) -> np.ndarray | None:
        """Operand ``name`` (axes, pads, min...), attribute or input as the opset spells it."""
        try:
            return spellings.operand(node, name, self.opset)
        except spellings.NotConstantError as error:
            raise self.fail(node, f"its {name} ('{error.value.name}') must be a constant") from error

    def ints(self, node: ir.Node, name: str) -> list[int] | None:
        array = self.operand(node, name)
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
        return [int(d) for d in picked if d is not None]

    def sum_to(self, g: ir.Value, target: ir.Value, g_dims: Sequence[int | None]) -> ir.Value:
        """Undo broadcasting: sum the cotangent ``g`` (forward dims ``g_dims``) to ``target``'s shape."""
        t_dims = self.dims(target)
        extra = len(g_dims) - len(t_dims)
        axes = [1 + i for i in range(extra)]
        axes += [1 + extra + i for i, d in enumerate(t_dims) if d == 1 and g_dims[extra + i] != 1]
        if not axes:
            return g
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
            key = tuple(int(d) for d in tail if d is not None)
            if key not in self._row_shapes:  # one shape value per tail: equal reshapes look equal
                self._row_shapes[key] = self.em.Concat(self._class_batch, self.em.ints(key), axis=0)
            return self.em.Reshape(rows, self._row_shapes[key])
        return self.em.Reshape(rows, self.em.Concat(self._class_batch, self.em.shape(rows, 1), axis=0))


# A VJP rule (export/rules/table.py): the node's input cotangents given its output cotangent.
Rule = Callable[[Context, ir.Node, Any], list]
