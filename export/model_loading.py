"""Reading a classifier into onnx-ir and normalising the graph quirks exporters leave behind.

What comes out of ``load_classifier`` is a graph the rules can rely on:
- initializers are not listed as graph inputs (old IR versions did that);
- values computed from constants and known sizes (Constant, ConstantOfShape, Shape and the
  arithmetic after it, also where only the batch axis is dynamic) are folded into initializers,
  so rules read weights, axes, pads and indices as constants (export/shape_folding.py);
- every value carries the dtype and shape ONNX shape inference found;
- the one float data input and the logits (pre-softmax, 2-D) are identified.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes
from varrt.core.contract import MAX_OPSET, MIN_OPSET
from varrt.core.errors import ModelError, UnsupportedOpError, UsageError
from varrt.export.shape_folding import fold_constants

# An image input's dims as users give them: a size fixes a dimension, a name leaves it dynamic.
InputShape = Sequence[int | str]

# Ops that only rearrange a tensor: walking back through them from a graph output finds a softmax.
_LAYOUT_ONLY = {"Reshape", "Flatten", "Squeeze", "Identity", "Unsqueeze"}


@dataclass
class Classifier:
    """A normalised classifier graph and its two ends."""

    model: ir.Model
    data_input: ir.Value
    logits_source: ir.Value  # the pre-softmax scores as the model computes them (any rank)
    opset: int


def read_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Load a model file (external data next to it included) or pass a ModelProto through."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"no such model file: {path}")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf raises several unrelated types for a bad file
        raise ModelError(f"{path}: not a readable ONNX model ({_first_line(error)})") from error


def load_classifier(proto: onnx.ModelProto, name: str = "model", batch: int | None = None,
                    input_shape: InputShape | None = None) -> Classifier:
    """Check and normalise ``proto``; find its data input and logits. ``batch`` fixes the size of the
    data input's batch axis, ``input_shape`` (ints fix a dimension, names leave it as the model has
    it) any of its dimensions; both before constant folding and shape inference, so every value's
    shape knows them and shape arithmetic on them folds."""
    opset = _default_opset(proto, name)
    proto = _without_non_tensor_outputs(proto)
    try:
        onnx.checker.check_model(proto)
    except Exception as error:  # ValidationError, or UnicodeDecodeError on non-UTF-8 names
        raise ModelError(f"{name}: fails onnx.checker: {_first_line(error)}") from error
    try:
        model = ir.serde.deserialize_model(proto)
        ir_passes.RemoveInitializersFromInputsPass()(model)
    except Exception as error:  # SerdeError on tensors whose data contradicts their type or dims
        cause = error.__cause__ or error
        raise ModelError(f"{name}: cannot read the graph: {_first_line(cause)}") from error
    for init in model.graph.initializers.values():
        try:  # the checker does not compare a tensor's data size with its dims; rules would fail later
            if init.const_value is not None:
                init.const_value.numpy()
        except Exception as error:
            raise ModelError(f"{name}: initializer '{init.name}' is unreadable: {_first_line(error)}") from error
    _unknown_for_non_positive(model.graph)
    wanted = _wanted_dims(batch, input_shape, name)
    if wanted is not None:
        fix_input_dims(model.graph, wanted, name)
    infer_shapes(model, name)  # so that Shape of every value with known sizes folds
    fold_constants(model.graph)  # infers the shapes inference lost at computed sizes as it folds
    fold_pads_into_convs(model.graph)
    if wanted is not None:
        for node in model.graph:  # shapes inferred before folding keep the sizes folding removed
            for value in node.outputs:
                value.shape = None
        infer_shapes(model, name)
        fold_constants(model.graph)
    infer_shapes(model, name)
    data_input = _data_input(model.graph, name)
    logits = _logits_source(model.graph, name)
    _check_domains(model.graph, data_input, logits, name)
    if logits.shape is None:
        raise ModelError(f"{name}: ONNX shape inference finds no shape for the logits '{logits.name}'"
                         f"{_strict_inference_error(model)}")
    return Classifier(model, data_input, logits, opset)


def _check_domains(graph: ir.Graph, data_input: ir.Value, logits: ir.Value, name: str) -> None:
    """Custom-domain ops between the image and the logits have no rule (and no inferred shapes,
    which would otherwise surface later as a far less readable error)."""
    depends = {data_input}
    for node in graph:
        if any(v in depends for v in node.inputs if v is not None):
            depends.update(node.outputs)
            if node.domain not in ("", "ai.onnx") and _reaches(node, logits):
                raise UnsupportedOpError(
                    f"{name}: op {node.op_type} in custom domain '{node.domain}' (node '{node.name}') is on the "
                    "path from the input to the logits; varrt differentiates standard ONNX ops only")


def _reaches(node: ir.Node, target: ir.Value) -> bool:
    seen, stack = set(), [target]
    while stack:
        producer = stack.pop().producer()
        if producer is None or id(producer) in seen:
            continue
        if producer is node:
            return True
        seen.add(id(producer))
        stack.extend(v for v in producer.inputs if v is not None)
    return False


def _without_non_tensor_outputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """skl2onnx's ZipMap output (a sequence of maps) in place of the probabilities it zips:
    the explanation needs tensors only, and onnx-ir reads no map types."""
    outputs = proto.graph.output
    if all(o.type.HasField("tensor_type") for o in outputs):
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    producers = {out: node for node in copy.graph.node for out in node.output}
    kept = []
    for output in copy.graph.output:
        if output.type.HasField("tensor_type"):
            kept.append(output)
            continue
        node = producers.get(output.name)
        if node is not None and node.op_type == "ZipMap":
            kept.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, [None, None]))
            copy.graph.node.remove(node)
    del copy.graph.output[:]
    copy.graph.output.extend(kept)
    return copy


def _default_opset(proto: onnx.ModelProto, name: str) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ModelError(f"{name}: imports no default-domain opset")
    opset = versions[0]
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(f"{name}: opset {opset} is outside the supported {MIN_OPSET}..{MAX_OPSET}")
    return opset


# Ops whose output has their first input's type and shape, but whose shape ONNX's inference leaves
# unknown (function ops: it does not infer their bodies), which would hide every shape after them.
_SHAPE_OF_INPUT = ("GroupNormalization",)


def infer_shapes(model: ir.Model, name: str) -> None:
    while True:
        try:
            ir_passes.ShapeInferencePass(strict_mode=False)(model)
        except Exception as error:
            raise ModelError(f"{name}: ONNX shape inference failed: {_first_line(error)}") from error
        if not _fill_shapes_of_input(model.graph):
            break
    # ONNX infers negative sizes for windows larger than their input (a kernel of 100 on 8 pixels);
    # left in, they abort C++ shape code later (std::clamp assertions), so stop here.
    for node in model.graph:
        for value in node.outputs:
            if value.shape is not None and any(isinstance(d, int) and (d < 0 or d == 0 and _is_float(value))
                                               for d in value.shape):
                raise ModelError(f"{name}: {node.op_type} node '{node.name}' gives '{value.name}' an impossible "
                                 f"shape {list(value.shape)}")


def _fill_shapes_of_input(graph: ir.Graph) -> bool:
    """Give the outputs of ``_SHAPE_OF_INPUT`` ops their input's type and shape; whether any changed."""
    filled = False
    for node in graph:
        x, y = (node.inputs[0] if node.inputs else None), node.outputs[0]
        if node.op_type in _SHAPE_OF_INPUT and y.shape is None and x is not None and x.shape is not None:
            y.type, y.shape = x.type, x.shape
            filled = True
    return filled


def _strict_inference_error(model: ir.Model) -> str:
    """Why lenient shape inference left values without shapes: the strict run's first error."""
    try:
        onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model), check_type=True, strict_mode=True)
    except Exception as error:
        return f" ({_first_line(error)})"
    return ""


def _is_float(value: ir.Value) -> bool:
    return value.dtype is not None and value.dtype.is_floating_point()


def _data_input(graph: ir.Graph, name: str) -> ir.Value:
    floats = [v for v in graph.inputs if v.dtype is not None and v.dtype.is_floating_point()]
    if len(graph.inputs) != 1 or len(floats) != 1:
        described = ", ".join(f"{v.name} ({v.dtype})" for v in graph.inputs) or "none"
        raise ModelError(f"{name}: expected exactly one float image input, found: {described}")
    if floats[0].shape is not None and any(d == 0 for d in floats[0].shape):
        raise ModelError(f"{name}: input '{floats[0].name}' has a zero-size dimension (shape {floats[0].shape})")
    return floats[0]


def _wanted_dims(batch: int | None, input_shape: InputShape | None, name: str) -> list[int | str] | None:
    """``batch`` and ``input_shape`` as one list of dims (a name: leave that dimension as it is)."""
    if input_shape is None:
        return None if batch is None else [batch]
    if isinstance(input_shape, str) or not all(isinstance(d, (int, str)) and not isinstance(d, bool)
                                               for d in input_shape):
        raise UsageError(f"--input-shape must be a sequence of sizes or names, like (1, 3, 224, 224) "
                         f"(got {input_shape!r})")
    dims = list(input_shape)
    bad = [d for d in dims if isinstance(d, int) and d < 1]
    if bad:
        raise UsageError(f"--input-shape {format_input_shape(dims)}: every size must be positive (got {bad[0]})")
    if batch is not None and dims and isinstance(dims[0], int) and dims[0] != batch:
        raise UsageError(f"--batch {batch} and --input-shape {format_input_shape(dims)} disagree on the batch axis")
    if batch is not None and dims:
        dims[0] = batch  # a name there leaves the batch axis to --batch
    return dims


def _unknown_for_non_positive(graph: ir.Graph) -> None:
    """Input dims written as ``dim_value: -1`` or 0 (some converters' "dynamic") become unknown dims."""
    for value in graph.inputs:
        if value.shape is not None and any(isinstance(d, int) and d < 1 for d in value.shape):
            value.shape = ir.Shape([ir.SymbolicDim(None) if isinstance(d, int) and d < 1 else d for d in value.shape])


def format_input_shape(dims: Sequence[int | str]) -> str:
    return "x".join(str(d) for d in dims)


def fix_input_dims(graph: ir.Graph, wanted: Sequence[int | str], name: str) -> bool:
    """Fix the image input's dimensions to the ints in ``wanted`` (a name leaves one as it is; a list
    of one entry is the batch axis alone); whether any dimension changed. Shapes recorded against the
    old dims are dropped, since inference would keep them."""
    image = _data_input(graph, name)
    dims = list(image.shape or [])
    if not dims:
        raise ModelError(f"{name}: input '{image.name}' has no known rank, so its dimensions cannot be fixed")
    given = format_input_shape(wanted)
    if len(wanted) > 1 and len(wanted) != len(dims):
        raise UsageError(f"{name}: --input-shape {given} has {len(wanted)} dimensions, but input '{image.name}' "
                         f"has {len(dims)} ({_shape_text(dims)})")
    new = list(dims)
    for axis, (want, have) in enumerate(zip(wanted, dims)):
        if isinstance(want, str):
            continue
        if isinstance(have, int) and have != want and len(wanted) == 1:
            raise UsageError(f"{name}: the batch axis of input '{image.name}' is fixed to {have}, not {want}")
        if isinstance(have, int) and have != want:
            what = "the batch axis" if axis == 0 else "the channel count" if axis == 1 else f"dimension {axis}"
            raise UsageError(f"{name}: --input-shape {given} sets {what} of input '{image.name}' to {want}, "
                             f"but the model fixes it to {have} ({_shape_text(dims)})")
        new[axis] = want
    if new == dims:
        return False
    image.shape = ir.Shape(new)
    for node in graph:
        for value in node.outputs:
            value.shape = None
    return True


def _shape_text(dims: Sequence[object]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _logits_source(graph: ir.Graph, name: str) -> ir.Value:
    outputs = [v for v in graph.outputs if v.dtype is not None and v.dtype.is_floating_point()]
    if not outputs:
        # skl2onnx's ZipMap turns probabilities into a sequence of maps: use the tensor it zips.
        for output in graph.outputs:
            node = output.producer()
            if node is not None and node.op_type == "ZipMap" and node.inputs[0] is not None:
                outputs.append(node.inputs[0])
    if not outputs:
        raise ModelError(f"{name}: has no float output to explain")
    value = outputs[0]
    walked = value
    while (node := walked.producer()) is not None:
        if node.op_type in ("Softmax", "LogSoftmax"):
            return node.inputs[0]  # type: ignore[return-value]
        if node.op_type not in _LAYOUT_ONLY:
            break
        walked = node.inputs[0]  # type: ignore[assignment]
    return value


# -- folding -----------------------------------------------------------------------------------
def fold_pads_into_convs(graph: ir.Graph) -> None:
    """Pad(zeros) -> Conv becomes one Conv with larger pads.

    TensorFlow-style exports pad asymmetrically with a separate Pad; folded, the forward is
    unchanged and the backward needs no Slice for the Pad.
    """
    for conv in list(graph):
        pad = conv.inputs[0].producer() if conv.op_type == "Conv" and conv.inputs[0] is not None else None
        if pad is None or pad.op_type != "Pad" or len(pad.outputs[0].uses()) != 1 or pad.outputs[0].is_graph_output():
            continue
        if conv.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            continue
        amounts = _zero_pad_amounts(pad, graph.opset_imports.get("", 1))
        x = pad.inputs[0]
        if amounts is None or x is None or x.shape is None and len(amounts) == 0:
            continue
        rank = len(amounts) // 2
        begin, end = amounts[:rank], amounts[rank:]
        if begin[:2] != [0, 0] or end[:2] != [0, 0] or min(amounts) < 0:
            continue
        spatial = rank - 2
        current = list(conv.attributes.get_ints("pads", [0] * (2 * spatial)))
        merged = [c + p for c, p in zip(current[:spatial], begin[2:])] + \
                 [c + p for c, p in zip(current[spatial:], end[2:])]
        conv.attributes["pads"] = ir.AttrInt64s("pads", merged)
        conv.replace_input_with(0, x)


def _zero_pad_amounts(pad: ir.Node, opset: int) -> list[int] | None:
    """The pads of a constant, zero-valued Pad over all axes, or None."""
    if pad.attributes.get_string("mode", "constant") != "constant":
        return None
    if opset < 11:
        if pad.attributes.get_float("value", 0.0) != 0.0:
            return None
        return list(pad.attributes.get_ints("pads", []))
    inputs = list(pad.inputs) + [None] * 4
    pads, value, axes = inputs[1], inputs[2], inputs[3]
    if pads is None or pads.const_value is None or axes is not None:
        return None
    if value is not None and (value.const_value is None or float(value.const_value.numpy().reshape(-1)[0]) != 0.0):
        return None
    return [int(v) for v in pads.const_value.numpy().reshape(-1)]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
