"""Folding constants and shape arithmetic into initializers, with shapes inferred as the fold goes.

Exporters compute sizes at run time: "same" padding from Shape (TensorFlow-style EfficientNets),
window partitions (Swin), channel splits, class tokens expanded to the batch. ONNX shape inference
loses every size after the first Pad, Slice or Reshape whose operand is such a computation, and
a Shape after that point no longer folds, so a file whose sizes are all fixed looked dynamic.

``fold_constants`` walks the graph once in topological order and, per node:
- folds it when its inputs are constants (an allow-list of ops evaluated by onnx.reference), or
  when it is a Shape of a value whose dims are all known;
- otherwise tracks small integer tensors whose entries are partly known: Shape of a value with
  a dynamic batch axis is [N, 64, 7, 7] with N unknown (named after its symbol), and Gather,
  Slice, Concat, casts and arithmetic carry the known entries, so [64, 7, 7] arithmetic folds
  although the batch is dynamic; a result whose entries are all known becomes a constant;
- gives the node's outputs the shapes ONNX's per-node inference finds from what is known by now
  (constants as data), and for Reshape, Expand, ConstantOfShape and Resize fed a partly known
  shape, the dims that shape fixes (the unknown entries stay dynamic).
Entries computed from an unknown one are unknown; nothing is guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

# Ops folded when all their inputs are constants: the shape arithmetic and weight construction
# exporters leave behind. A whitelist, because folding runs onnx.reference, whose kernels for
# some numeric ops (BatchNormalization-9, Softmax-11, LRN) disagree with the spec.
FOLDABLE = {"Constant", "ConstantOfShape", "Shape", "Size", "Gather", "Concat", "Unsqueeze", "Squeeze",
            "Reshape", "Slice", "Cast", "Range", "Add", "Sub", "Mul", "Div", "Neg", "Equal", "Where",
            "Expand", "Transpose", "Identity", "Floor", "Ceil", "ReduceProd", "Min", "Max", "Abs", "Not",
            "Tile", "Flatten", "Sqrt", "Reciprocal", "Pow", "Mod", "Less", "Greater", "LessOrEqual",
            "GreaterOrEqual", "And", "Or", "Clip"}
_FOLD_LIMIT = 1 << 22  # elements; larger constant subgraphs are rare and left to the runtime

# Partly known tensors are shape vectors and the scalars taken out of them.
_PARTIAL_LIMIT = 64
# Ops that only move the entries of input 0 (Concat: of every input); their other inputs must be
# constants. Evaluated on an index tensor, so each output entry says which input entry it is.
_MOVING = {"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Expand", "Transpose",
           "Tile", "Flatten"}
# Elementwise ops: an output entry is known where every input entry it reads is known.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Min", "Max", "Equal", "Less",
                "Greater", "LessOrEqual", "GreaterOrEqual", "Where", "Not", "And", "Or", "Sqrt", "Reciprocal",
                "Pow", "Cast", "Clip"}


@dataclass
class _Partial:
    """An integer tensor with some entries unknown; ``names`` holds a dim's symbol where one is known."""

    values: np.ndarray  # a placeholder (1) where unknown
    unknown: np.ndarray  # bool, same shape
    names: np.ndarray  # object: the symbol of an unknown entry that is a named dim (None otherwise)

    @staticmethod
    def of_constant(array: np.ndarray) -> _Partial:
        return _Partial(array, np.zeros(array.shape, bool), np.full(array.shape, None, dtype=object))

    def entries(self) -> list[int | str | None]:
        flat = zip(self.values.reshape(-1), self.unknown.reshape(-1), self.names.reshape(-1))
        return [name if unknown else int(value) for value, unknown, name in flat]


def fold_constants(graph: ir.Graph) -> None:
    """Replace every value computable from constants and known sizes by an initializer, and give
    values the shapes that become known on the way (see the module docstring)."""
    from onnx.reference import ReferenceEvaluator  # ~60 ms to import; only folding needs it

    partial: dict[ir.Value, _Partial] = {}
    for node in list(graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        values = _folded(node, graph.opset_imports, ReferenceEvaluator)
        if values is not None:
            _replace_by_constants(graph, node, values)
            continue
        result = _partly_known(node, partial, graph.opset_imports, ReferenceEvaluator)
        if result is not None:
            if not result.unknown.any():
                _replace_by_constants(graph, node, [result.values])
                continue
            partial[node.outputs[0]] = result
        _infer_outputs(node, partial, graph.opset_imports)


def _folded(node: ir.Node, opsets: dict[str, int], evaluator: Any) -> list[np.ndarray] | None:
    if node.op_type not in FOLDABLE:
        return None
    if node.op_type == "Shape":
        dims = _static_shape(node.inputs[0])
        if dims is None:
            return None
        start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", len(dims))
        return [np.asarray(dims, dtype=np.int64)[start:end]]
    if not all(v is None or v.const_value is not None for v in node.inputs):
        return None
    inputs = [v for v in node.inputs if v is not None]
    if sum(int(v.const_value.size) for v in inputs) > _FOLD_LIMIT:  # type: ignore[union-attr,misc]
        return None
    try:
        return _evaluate(evaluator, node, opsets, {v.name: v.const_value.numpy() for v in inputs})  # type: ignore[union-attr]
    except Exception:
        return None  # the runtime computes it instead


def _replace_by_constants(graph: ir.Graph, node: ir.Node, values: Sequence[np.ndarray]) -> None:
    for out, array in zip(node.outputs, values):
        if out.is_graph_output() or not out.uses():
            continue
        name = graph.initializers.get(out.name or "") and f"{out.name}_folded" or out.name or "folded"
        const = ir.Value(name=f"varrt_folded_{name}", shape=ir.Shape(array.shape),
                         type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                         const_value=ir.tensor(array))
        graph.register_initializer(const)
        out.replace_all_uses_with(const)


# -- partly known integer tensors ------------------------------------------------------------------
def _partly_known(node: ir.Node, partial: dict[ir.Value, _Partial], opsets: dict[str, int],
                  evaluator: Any) -> _Partial | None:
    """The node's single output as a partly known tensor, when its inputs are known or partly known."""
    if len(node.outputs) != 1:
        return None
    if node.op_type == "Shape":
        return _shape_entries(node)
    if not any(v in partial for v in node.inputs if v is not None):
        return None  # all known: folding's business (or an op it does not fold)
    inputs: list[_Partial | None] = []
    for value in node.inputs:
        if value is None:
            inputs.append(None)
        elif value in partial:
            inputs.append(partial[value])
        elif value.const_value is not None and value.const_value.size <= _PARTIAL_LIMIT:
            inputs.append(_Partial.of_constant(value.const_value.numpy()))
        else:
            return None
    try:
        if node.op_type in _MOVING:
            return _moved(node, inputs, opsets, evaluator)
        if node.op_type in _ELEMENTWISE:
            return _elementwise(node, inputs, opsets, evaluator)
    except Exception:
        return None  # the partly known entries are left to the runtime
    return None


def _shape_entries(node: ir.Node) -> _Partial | None:
    value = node.inputs[0]
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", len(dims))
    dims = dims[start:end]
    known = [isinstance(d, int) for d in dims]
    return _Partial(np.asarray([d if isinstance(d, int) else 1 for d in dims], dtype=np.int64),
                    np.asarray([not k for k in known], dtype=bool),
                    np.asarray([None if k else getattr(d, "value", None) for d, k in zip(dims, known)], dtype=object))


def _moved(node: ir.Node, inputs: list[_Partial | None], opsets: dict[str, int], evaluator: Any) -> _Partial | None:
    moving = range(len(inputs)) if node.op_type == "Concat" else [0]
    if any(i not in moving and v is not None and v.unknown.any() for i, v in enumerate(inputs)):
        return None  # indices, axes or shapes only partly known
    feeds, offset = {}, 0
    sources = []
    for i, value in enumerate(node.inputs):
        if value is None:
            continue
        array = inputs[i]
        if i in moving and array is not None:
            if array.values.size > _PARTIAL_LIMIT:
                return None
            feeds[value.name] = (offset + np.arange(array.values.size, dtype=np.int64)).reshape(array.values.shape)
            offset += array.values.size
            sources.append(array)
        else:
            feeds[value.name] = array.values  # type: ignore[union-attr]
    (index,) = _evaluate(evaluator, node, opsets, feeds)
    values = np.concatenate([s.values.reshape(-1) for s in sources])
    unknown = np.concatenate([s.unknown.reshape(-1) for s in sources])
    names = np.concatenate([s.names.reshape(-1) for s in sources])
    flat = index.reshape(-1).astype(np.int64)
    return _Partial(values[flat].reshape(index.shape), unknown[flat].reshape(index.shape),
                    names[flat].reshape(index.shape))


def _elementwise(node: ir.Node, inputs: list[_Partial | None], opsets: dict[str, int], evaluator: Any) -> _Partial:
    present = [(value, array) for value, array in zip(node.inputs, inputs) if value is not None and array is not None]
    if any(array.values.size > _PARTIAL_LIMIT for _, array in present):
        raise ValueError("too large to track")
    feeds = {value.name: np.where(array.unknown, np.ones((), array.values.dtype), array.values)
             for value, array in present}
    (out,) = _evaluate(evaluator, node, opsets, feeds)
    unknown = np.zeros(out.shape, bool)
    for _, array in present:
        unknown = unknown | np.broadcast_to(array.unknown, out.shape)
    names = np.full(out.shape, None, dtype=object)
    if node.op_type == "Cast" and np.issubdtype(out.dtype, np.integer):
        names = present[0][1].names.copy()  # an integer cast keeps a dim's name
    return _Partial(out, unknown, names)


# -- shapes ---------------------------------------------------------------------------------------
Dim = int | str | None


def _infer_outputs(node: ir.Node, partial: dict[ir.Value, _Partial], opsets: dict[str, int]) -> None:
    """Shapes for the node's outputs that ONNX's inference left partly or wholly unknown."""
    if all(v.shape is not None and all(_dim(d) is not None for d in v.shape) for v in node.outputs):
        return  # every dim a size or a name the model gave
    inferred = _from_partial_shape(node, partial) or _node_inference(node, opsets)
    for value, dims in zip(node.outputs, inferred):
        if dims is not None:
            _merge(value, dims)


def _from_partial_shape(node: ir.Node, partial: dict[ir.Value, _Partial]) -> list[list[Dim] | None] | None:
    """Output dims of an op whose output shape is its shape operand, when that is partly known."""
    shape_input = {"Reshape": 1, "Expand": 1, "ConstantOfShape": 0, "Resize": 3}.get(node.op_type)
    if shape_input is None or len(node.inputs) <= shape_input:
        return None
    operand = node.inputs[shape_input]
    if operand is None or operand not in partial or partial[operand].values.ndim != 1:
        return None
    entries = partial[operand].entries()
    data = node.inputs[0]
    in_dims: list[Dim] = [] if data is None or data.shape is None else [_dim(d) for d in data.shape]
    if node.op_type == "ConstantOfShape":
        return [entries]
    if data is None or data.shape is None:
        return None
    if node.op_type == "Resize":
        if node.attributes.get("axes") is not None or len(entries) != len(in_dims):
            return None
        return [entries]
    if node.op_type == "Expand":
        return [_broadcast(in_dims, entries)]
    if node.attributes.get_int("allowzero", 0):
        return None
    return [_reshaped(in_dims, entries)]


def _reshaped(in_dims: list[Dim], entries: list[Dim]) -> list[Dim] | None:
    out: list[Dim] = [(in_dims[i] if i < len(in_dims) else None) if e == 0 else e for i, e in enumerate(entries)]
    if -1 not in out:
        return out
    rest = [d for d in out if d != -1]
    position = out.index(-1)
    out[position] = None
    if any(d is None for d in rest + in_dims):
        return out
    # sizes cancel as products of numbers and named dims: N*256*4*4 / (N*256) = 16
    def split(dims: list[Dim]) -> tuple[int, Counter]:
        return int(np.prod([d for d in dims if isinstance(d, int)])), Counter(d for d in dims if isinstance(d, str))

    (total, names), (known, rest_names) = split(in_dims), split(rest)
    if names == rest_names and known > 0 and total % known == 0:
        out[position] = total // known
    return out


def _broadcast(in_dims: list[Dim], entries: list[Dim]) -> list[Dim]:
    rank = max(len(in_dims), len(entries))
    a: list[Dim] = [*[1] * (rank - len(in_dims)), *in_dims]
    b: list[Dim] = [*[1] * (rank - len(entries)), *entries]
    out: list[Dim] = []
    for x, y in zip(a, b):
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        elif isinstance(x, int):  # y unknown or named: it must broadcast against x, so x it is
            out.append(x)
        else:
            out.append(None)
    return out


def _node_inference(node: ir.Node, opsets: dict[str, int]) -> list[list[Dim] | None]:
    """ONNX's shape inference of this one node, given its inputs' types and its constant inputs."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get("", 1), "")
    except Exception:
        return []
    types: dict[str, onnx.TypeProto] = {}
    data: dict[str, onnx.TensorProto] = {}
    for value in node.inputs:
        if value is None or value.name is None:
            continue
        if value.dtype is None:
            return []
        shape = None if value.shape is None else [d if isinstance(d, int) else getattr(d, "value", None)
                                                  for d in value.shape]
        types[value.name] = onnx.helper.make_tensor_type_proto(int(value.dtype), shape)
        const = value.const_value
        if const is not None and const.size <= _PARTIAL_LIMIT:  # shapes, axes, pads, Resize's scales
            data[value.name] = onnx.numpy_helper.from_array(const.numpy(), value.name)
    try:
        found = onnx.shape_inference.infer_node_outputs(
            schema, ir.serde.serialize_node(node), types, data,
            opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
    except Exception:
        return []
    result: list[list[Dim] | None] = []
    for value in node.outputs:
        proto = found.get(value.name or "")
        if proto is None or not proto.tensor_type.HasField("shape"):
            result.append(None)
            continue
        if value.dtype is None and proto.tensor_type.elem_type:
            value.dtype = ir.DataType(proto.tensor_type.elem_type)
        result.append([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                       for d in proto.tensor_type.shape.dim])
    return result


def _merge(value: ir.Value, dims: Sequence[Dim]) -> None:
    """Give ``value`` the better known of its dims and ``dims`` (sizes over names over unknowns)."""
    old = list(value.shape) if value.shape is not None else None
    if old is not None and len(old) != len(dims):
        return
    merged = []
    for i, new in enumerate(dims):
        have = None if old is None else _dim(old[i])
        if isinstance(have, int) or (have is not None and not isinstance(new, int)):
            merged.append(old[i])  # type: ignore[index]
        elif isinstance(new, int) and new >= 0:
            merged.append(new)
        else:
            merged.append(ir.SymbolicDim(new) if isinstance(new, str) else ir.SymbolicDim(None))
    value.shape = ir.Shape(merged)


def _dim(d: Any) -> Dim:
    """A dim as a size, a name, or None for unknown (ONNX's inference names unknown dims unk__K)."""
    if isinstance(d, int):
        return d
    name = getattr(d, "value", None)
    return None if name is None or name.startswith("unk__") else name


def _evaluate(evaluator_cls: Any, node: ir.Node, opsets: dict[str, int], feeds: dict[str | None, np.ndarray]
              ) -> list[np.ndarray]:
    proto_node = ir.serde.serialize_node(node)
    names = [v.name or "" for v in node.inputs if v is not None]
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names]
    outputs = [onnx.helper.make_tensor_value_info(o.name or "", onnx.TensorProto.UNDEFINED, None)
               for o in node.outputs]
    graph = onnx.helper.make_graph([proto_node], "fold", inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v)
                                                         for d, v in opsets.items()])
    results = evaluator_cls(model).run(None, feeds)
    return [np.asarray(r) for r in results]


def _static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None  # type: ignore[return-value]
