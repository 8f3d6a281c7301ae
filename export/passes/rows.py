"""Sink the reshapes between [K, N, ...] cotangents and the [K*N, ...] rows convolutions take.

Rules fold the class axis into the batch axis before a convolution's VJP and unfold it after
(``Context.to_rows``/``from_rows``), so between two convolutions the plain graph reshapes rows
to [K, N, C, H, W] and straight back, sums cotangents in the 5-D form and applies guided
backprop's Relu to the 5-D form. ONNX Runtime's CPU provider runs convolutions in a channel-
blocked layout (NCHWc) and leaves it at every Reshape, so each pair costs two reorders of the
largest tensors of the backward. This pass rewrites, until nothing changes:

    Reshape(Reshape(x, s1), s2)          -> Reshape(x, s2), or x when that is x's own shape
    Add(Reshape(a, s), Reshape(b, s))    -> Reshape(Add(a, b), s)     a, b of one static shape
    Relu(Reshape(a, s))                  -> Reshape(Relu(a), s)

Each rewrite moves the same elements in the same order through the same arithmetic, so the
result is bit-identical (tests/export/test_passes.py checks that on every rule graph and model).
"""

from __future__ import annotations

import onnx_ir as ir
from varrt.export.passes.graph import inferred_shapes, producer, static_tail


class SinkReshapes(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inferred_shapes(model)
        graph, changed, sweep = model.graph, False, True
        while sweep:  # a rewrite can make another one possible (Reshape(Add) after the Add sank)
            sweep = False
            for node in list(graph):
                if node.graph is not None:  # else removed by an earlier rewrite in this sweep
                    sweep |= _rewrite(graph, node)
            changed |= sweep
        if changed:
            ir.passes.common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=changed)


def _reshaped(value: ir.Value | None) -> ir.Node | None:
    node = producer(value, "Reshape")
    return node if node is not None and not node.attributes.get_int("allowzero", False) else None


def _rewrite(graph: ir.Graph, node: ir.Node) -> bool:
    if not node.outputs[0].uses() and not node.outputs[0].is_graph_output():
        return False  # dead: an earlier rewrite took its uses
    if node.op_type == "Reshape" and (inner := _reshaped(node.inputs[0])) is not None:
        if _has_zero(node.inputs[1]):  # a 0 copies a dim of the input, which would change
            return False
        source = inner.inputs[0]
        if source is None:
            return False
        if _same_shape(source, node.outputs[0]):
            node.outputs[0].replace_all_uses_with(source, replace_graph_outputs=False)
        else:
            node.replace_input_with(0, source)
        return True
    if node.op_type == "Relu" and (reshape := _reshaped(node.inputs[0])) is not None:
        _sink(graph, node, reshape, [reshape.inputs[0]])
        return True
    if node.op_type == "Add" and len(node.inputs) == 2:
        a, b = (_reshaped(v) for v in node.inputs)
        if a is None or b is None or not _equal(a.inputs[1], b.inputs[1]):
            return False
        tail_a, tail_b = static_tail(a.inputs[0]), static_tail(b.inputs[0])
        if tail_a is None or tail_a != tail_b:
            return False
        _sink(graph, node, a, [a.inputs[0], b.inputs[0]])
        return True
    return False


def _sink(graph: ir.Graph, node: ir.Node, reshape: ir.Node, inputs: list) -> None:
    """Replace ``node`` (whose operands are reshaped by ``reshape``'s shape) by the same op on
    ``inputs``, reshaped after."""
    inner = ir.Node("", node.op_type, inputs, num_outputs=1)
    inner.outputs[0].type = node.outputs[0].type
    inner.outputs[0].shape = inputs[0].shape  # Relu, or an Add of two equal shapes
    outer = ir.Node("", "Reshape", [inner.outputs[0], reshape.inputs[1]], num_outputs=1)
    graph.insert_before(node, [inner, outer])
    node.outputs[0].replace_all_uses_with(outer.outputs[0], replace_graph_outputs=True)
    graph.remove(node, safe=True)


def _has_zero(shape: ir.Value | None) -> bool:
    if shape is None or shape.const_value is None:
        producer = shape.producer() if shape is not None else None
        # from_rows' shapes, Concat(Shape(g)[0:2], constant tail): K and N are not 0 (varrt never
        # runs an empty batch or an empty class list)
        return producer is None or producer.op_type != "Concat" or any(
            _has_zero(v) for v in producer.inputs if v is not None and v.const_value is not None)
    return bool((shape.const_value.numpy() == 0).any())


def _same_shape(a: ir.Value | None, b: ir.Value) -> bool:
    """Whether ``b`` (a reshape of ``a``) provably has ``a``'s shape: the same static dims after
    the first (the sizes agree, so the first dims agree too)."""
    tail = static_tail(a)
    return tail is not None and tail == static_tail(b) and len(a.shape) == len(b.shape)  # type: ignore[union-attr, arg-type]


def _equal(a: ir.Value | None, b: ir.Value | None) -> bool:
    """Whether two shape operands are provably equal: one value, equal constants, or Concats
    (Shape, Slice...) of equal operands with equal attributes."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    if a.const_value is not None and b.const_value is not None:
        x, y = a.const_value.numpy(), b.const_value.numpy()
        return x.dtype == y.dtype and x.shape == y.shape and bool((x == y).all())
    p, q = a.producer(), b.producer()
    if p is None or q is None or p.op_type != q.op_type or p.domain != q.domain or len(p.inputs) != len(q.inputs):
        return False
    if {k: v.value for k, v in p.attributes.items()} != {k: v.value for k, v in q.attributes.items()}:
        return False
    return a.index() == b.index() and all(_equal(u, v) for u, v in zip(p.inputs, q.inputs))
