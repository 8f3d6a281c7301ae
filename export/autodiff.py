"""Reverse-mode autodiff of an ONNX graph into standard ONNX nodes of the same graph.

``backward`` walks the forward graph once in reverse topological order and asks each node's VJP
rule (export/rules/table.py) for its input cotangents. It does the generic work so rules stay
small: it restricts the walk to the gradient path (float values that depend on ``wrt`` and reach a
seed), sums the cotangents of values with several consumers, applies the modified backward of the
node's family (guided backprop, DeepLIFT, LRP), checks each rule answered one entry per input, and fails naming
the op type, node and opset when a rule is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir
from varrt.core.errors import UnsupportedOpError
from varrt.export.emitter import Emitter
from varrt.export.rules.context import ZERO, Context
from varrt.export.rules.table import lookup, modified


def backward(
    em: Emitter,
    seeds: Mapping[ir.Value, ir.Value],
    wrt: Sequence[ir.Value],
    *,
    modified_backward: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> list[ir.Value]:
    """Cotangents [K, *v.shape] of each value in ``wrt``, given cotangents of ``seeds``' keys.

    Each seed cotangent has the shape [K, *key.shape]. Values in ``wrt`` that no seed depends on
    get an explicit zero tensor. ``modified_backward`` ("guided", "deconvolution", "deeplift", "lrp") swaps the true
    gradient for a modified one on the families that declare it; ``settings`` are its parameters
    (LRP: ``rule``, ``epsilon``, ``gamma``).
    """
    forward_nodes = list(em.graph)  # snapshot: the nodes emitted below are not walked
    path = _gradient_path(forward_nodes, set(seeds), set(wrt))
    ctx = Context(em, settings=settings or {})
    cotangents: dict[ir.Value, list[ir.Value]] = {value: [g] for value, g in seeds.items()}

    for node in reversed(forward_nodes):
        if not any(v in cotangents for v in node.outputs) or not any(v in path for v in node.inputs):
            continue
        row = lookup(node.op_type, em.opset) if node.domain in ("", "ai.onnx") else None
        if row is None:
            domain = f" in domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
            raise UnsupportedOpError(
                f"no gradient rule for op {node.op_type}{domain} (node '{node.name}', opset {em.opset}) "
                "on the path from the input to the logits"
            )
        outs = [_total(em, cotangents.get(v)) for v in node.outputs]
        ctx.output_cotangents = outs
        first = next(g for g in outs if g is not None)
        modifier = modified(row, modified_backward)
        if modifier is not None and outs[0] is not None:
            results = modifier(ctx, node, first, row.rule)
        else:
            results = row.rule(ctx, node, first)
        if len(results) != len(node.inputs):
            raise AssertionError(f"rule for {node.op_type} returned {len(results)} entries "
                                 f"for {len(node.inputs)} inputs")
        for index, (value, g) in enumerate(zip(node.inputs, results)):
            if value is None or value not in path or g is ZERO:
                continue
            if g is None:
                raise UnsupportedOpError(
                    f"{node.op_type} node '{node.name}': its input {index} ('{value.name}') depends on "
                    "the image, and varrt differentiates this op only through its other inputs"
                )
            cotangents.setdefault(value, []).append(g)

    grads = []
    for value in wrt:
        total = _total(em, cotangents.get(value))
        if total is None:
            some_seed = next(iter(seeds.values()))
            total = em.zeros_like(em.Concat(em.shape(some_seed, 0, 1), em.shape(value), axis=0), value)
        grads.append(total)
    return grads


def _gradient_path(nodes: Sequence[ir.Node], seeds: set[ir.Value], wrt: set[ir.Value]) -> set[ir.Value]:
    """Float values that depend on ``wrt`` and that some seed depends on."""
    depends = set(wrt)
    for node in nodes:
        if any(v in depends for v in node.inputs if v is not None):
            depends.update(v for v in node.outputs if _is_float(v))
    reaches = set(seeds)
    for node in reversed(nodes):
        if any(v in reaches for v in node.outputs):
            reaches.update(v for v in node.inputs if v is not None and v in depends)
    return depends & reaches


def _total(em: Emitter, parts: list[ir.Value] | None) -> ir.Value | None:
    return em.add_all(parts) if parts else None


def _is_float(value: ir.Value) -> bool:
    # Shape arithmetic is int64 and comparisons are bool: neither is on a gradient path.
    return value.dtype is None or value.dtype.is_floating_point()
