"""What the ONNX-TensorRT parser accepts, as a table, and a checker for graphs meant for TensorRT.

Source: onnx/onnx-tensorrt ``docs/operators.md`` as of the 10.1 GA release (read from the repository;
its operator matrix covers TensorRT 10.0/10.1), plus the later 10.x facts recorded in the design card
(TensorRT 10.15: opsets 9..24, ScatterElements reductions run through a plugin, Resize still only
nearest/linear). TensorRT itself cannot be installed here, so this module is the executable form of
that documentation, not a parse by the real parser: where the two disagree, the parser wins and this
table should be corrected.

``tensorrt_problems(model)`` lists, one line each, everything in a model that the documentation says
the parser rejects or handles only in a limited way (DOUBLE cast down, plugins)::

    >>> import onnx
    >>> node = onnx.helper.make_node("MaxUnpool", ["x", "i"], ["y"], kernel_shape=[2, 2])
    >>> graph = onnx.helper.make_graph([node], "g", [], [])
    >>> tensorrt_problems(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    ['node 0 (MaxUnpool): MaxUnpool is not supported by the ONNX-TensorRT parser']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["MAX_OPSET", "MIN_OPSET", "SUPPORTED", "UNSUPPORTED", "tensorrt_problems"]

MIN_OPSET = 9
MAX_OPSET = 24  # TensorRT 10.15 (10.0/10.1: 20; TensorRT 11: 25)

# Op type -> the restriction the parser documents ("" where it documents none). Ops absent from both
# tables are unknown to the parser (newer than its table, or from a non-default domain).
SUPPORTED: dict[str, str] = {
    **dict.fromkeys(
        "Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh BatchNormalization Cast CastLike Ceil "
        "Celu Clip Concat ConstantOfShape Conv ConvTranspose Cos Cosh DepthToSpace Div Einsum Elu Equal "
        "Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool "
        "GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish "
        "Identity ImageScaler InstanceNormalization IsInf IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax "
        "LRN LpNormalization MatMul Max Mean MeanVarianceNormalization Min Mish Mod Mul Neg "
        "NonMaxSuppression NonZero Not Or ParametricSoftplus Pow PRelu RandomNormal RandomNormalLike "
        "RandomUniform RandomUniformLike Range Reciprocal Relu Reshape ReverseSequence RoiAlign Round "
        "ScaledTanh Scan Scatter Selu Shape Shrink Sigmoid Sign Sin Sinh Size Softmax Softplus Softsign "
        "SpaceToDepth Split Sqrt Sub Sum Tan Tanh ThresholdedRelu Tile Transpose Trilu Upsample Where "
        "Xor".split(),
        "",
    ),
    "AveragePool": "2-D or 3-D pooling only; dilations empty or all ones",
    "Constant": "sparse_value, value_string and value_strings unsupported",
    "CumSum": "axis must be an initializer",
    "DeformConv": "1-D or 2-D spatial input; begin and end pads equal per axis",
    "DequantizeLinear": "x_zero_point must be zero",
    "Dropout": "training_mode must be an initializer that is False",
    "EyeLike": "input must have static dimensions",
    "GridSample": "4-D input only",
    "GRU": "bidirectional: the same activations both ways",
    "Hardmax": "the axis dimension must be a build-time constant",
    "If": "both branches' outputs of the same rank, with different names",
    "LayerNormalization": "only the first output Y",
    "Loop": "scan output length static; loop-carried shapes fixed across iterations",
    "LpPool": "dilations empty or all ones",
    "LSTM": "bidirectional: the same activations both ways; input_forget = 0; layout = 0",
    "MaxPool": "2-D or 3-D pooling only; no Indices output; dilations empty or all ones",
    "OneHot": "depth must be a build-time constant",
    "Pad": "axes must be an initializer",
    "QuantizeLinear": "y_zero_point must be zero",
    "Resize": "modes nearest/linear; coordinate transformations half_pixel, pytorch_half_pixel, "
    "tf_half_pixel_for_nn, asymmetric, align_corners; nearest modes floor, ceil, round_prefer_floor, "
    "round_prefer_ceil; aspect-ratio policy stretch; tensor scales need axes = 0..rank-1; no antialias",
    "RNN": "bidirectional: the same activations both ways",
    "ScatterElements": "a reduction other than none runs through TensorRT's ScatterElements plugin",
    "ScatterND": "reduction unsupported",
    "Slice": "axes must be an initializer",
    "Squeeze": "axes must be an initializer",
    "TopK": "sorted must be 1; K below 3840",
    "Unsqueeze": "axes must be a constant tensor",
    **dict.fromkeys(
        "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
        "ReduceSum ReduceSumSquare".split(),
        "axes must be an initializer",
    ),
}

# Ops the table marks as not supported.
UNSUPPORTED: frozenset[str] = frozenset(
    "AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Col2Im "
    "CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow "
    "HannWindow ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial "
    "NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul "
    "RegexFullMatch STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert "
    "SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer "
    "StringSplit TfIdfVectorizer Unique".split()
)

_TENSOR_TYPES = {  # element types TensorRT represents (quantized ones only through Q/DQ)
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT32,
    onnx.TensorProto.INT64, onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL,
    onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.INT4,
}  # fmt: skip
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                      "align_corners"}  # fmt: skip
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_TOPK_MAX = 3840
_DEFAULT_DOMAINS = ("", "ai.onnx")


class _Scope:
    """What a node can see: constant values (initializers and Constant outputs) of its graph and the
    graphs enclosing it, the model's local functions and the default-domain opset."""

    def __init__(self, constants: dict[str, np.ndarray | None], functions: set[tuple[str, str]], opset: int):
        self.constants = constants
        self.functions = functions
        self.opset = opset

    def inner(self, graph: onnx.GraphProto) -> _Scope:
        constants = dict(self.constants)
        for init in graph.initializer:
            constants[init.name] = _array(init)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
                tensor = next((a.t for a in node.attribute if a.name == "value"), None)
                constants[node.output[0]] = _array(tensor) if tensor is not None else None
        return _Scope(constants, self.functions, self.opset)

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def value(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)


Check = Callable[[onnx.NodeProto, _Scope], list[str]]


def _array(tensor: onnx.TensorProto) -> np.ndarray | None:
    try:
        return numpy_helper.to_array(tensor)
    except Exception:  # external data not loaded, exotic types: its value is unknown, its constness not
        return None


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


# --- per-op checks: (node, scope) -> problems, without the node prefix --------------------------------
def _constant_input(index: int, what: str) -> Check:
    def check(node: onnx.NodeProto, scope: _Scope) -> list[str]:
        name = _input(node, index)
        if name and not scope.is_constant(name):
            return [f"{what} input '{name}' is computed at run time; TensorRT needs an initializer"]
        return []

    return check


def _pool(node: onnx.NodeProto, scope: _Scope) -> list[str]:
    problems = []
    kernel = _attr(node, "kernel_shape", [])
    if len(kernel) not in (2, 3):  # type: ignore[arg-type]
        problems.append(f"{len(kernel)}-D pooling; TensorRT pools 2-D or 3-D only")  # type: ignore[arg-type]
    dilations = _attr(node, "dilations", [])
    if any(d != 1 for d in dilations):  # type: ignore[attr-defined]
        problems.append(f"dilations {list(dilations)} unsupported")  # type: ignore[call-overload]
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        problems.append(f"the Indices output '{node.output[1]}' is unsupported")
    return problems


def _resize(node: onnx.NodeProto, scope: _Scope) -> list[str]:
    problems = []
    mode = _text(_attr(node, "mode", "nearest"))
    if mode not in _RESIZE_MODES:
        problems.append(f"mode '{mode}' unsupported (nearest and linear only)")
    transform = _text(_attr(node, "coordinate_transformation_mode", "half_pixel"))
    if transform not in _RESIZE_TRANSFORMS:
        problems.append(f"coordinate_transformation_mode '{transform}' unsupported")
    nearest = _text(_attr(node, "nearest_mode", "round_prefer_floor"))
    if mode == "nearest" and nearest not in _RESIZE_NEAREST:
        problems.append(f"nearest_mode '{nearest}' unsupported")
    if _attr(node, "antialias", 0):
        problems.append("antialias unsupported")
    policy = _text(_attr(node, "keep_aspect_ratio_policy", "stretch"))
    if policy != "stretch":
        problems.append(f"keep_aspect_ratio_policy '{policy}' unsupported")
    axes = _attr(node, "axes")
    if axes is not None and list(axes) != list(range(len(axes))):  # type: ignore[call-overload, arg-type]
        problems.append(f"axes {list(axes)} are not 0..rank-1")  # type: ignore[call-overload]
    return problems


def _topk(node: onnx.NodeProto, scope: _Scope) -> list[str]:
    problems = []
    if _attr(node, "sorted", 1) != 1:
        problems.append("sorted=0 unsupported")
    k = scope.value(_input(node, 1)) if scope.opset >= 10 else np.asarray(_attr(node, "k", 0))
    if scope.opset >= 10 and not scope.is_constant(_input(node, 1)):
        problems.append(f"K input '{_input(node, 1)}' is computed at run time; TensorRT needs a constant")
    elif k is not None and int(np.asarray(k).reshape(-1)[0]) >= _TOPK_MAX:
        problems.append(f"K = {int(np.asarray(k).reshape(-1)[0])} is not below {_TOPK_MAX}")
    return problems


def _reduction(attr: str, allowed: tuple[str, ...], why: str) -> Check:
    def check(node: onnx.NodeProto, scope: _Scope) -> list[str]:
        value = _text(_attr(node, attr, "none"))
        return [] if value in allowed else [f"{attr}='{value}' {why}"]

    return check


def _reduce(node: onnx.NodeProto, scope: _Scope) -> list[str]:
    # axes became an input in opset 13 for ReduceSum and in opset 18 for the others.
    return _constant_input(1, "axes")(node, scope)


def _squeeze(node: onnx.NodeProto, scope: _Scope) -> list[str]:
    return _constant_input(1, "axes")(node, scope)


def _dropout(node: onnx.NodeProto, scope: _Scope) -> list[str]:
    name = _input(node, 2)
    if not name:
        return []
    value = scope.value(name)
    if not scope.is_constant(name) or (value is not None and bool(np.asarray(value).any())):
        return [f"training_mode '{name}' must be a constant False"]
    return []


def _layer_norm(node: onnx.NodeProto, scope: _Scope) -> list[str]:
    extra = [o for o in node.output[1:] if o]
    return [f"outputs {extra} unsupported (only Y)"] if extra else []


def _constant(node: onnx.NodeProto, scope: _Scope) -> list[str]:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return [f"attribute {bad[0]} unsupported"] if bad else []


def _lstm(node: onnx.NodeProto, scope: _Scope) -> list[str]:
    problems = []
    if _attr(node, "input_forget", 0):
        problems.append("input_forget=1 unsupported")
    if _attr(node, "layout", 0):
        problems.append("layout=1 unsupported")
    return problems


_CHECKS: dict[str, Check] = {
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "Resize": _resize,
    "TopK": _topk,
    "ScatterND": _reduction("reduction", ("none",), "unsupported"),
    "ScatterElements": _reduction("reduction", ("none",), "needs TensorRT's ScatterElements plugin"),
    "Squeeze": _squeeze,
    "Unsqueeze": _squeeze,
    "Slice": _constant_input(3, "axes"),
    "Pad": _constant_input(3, "axes"),
    "CumSum": _constant_input(1, "axis"),
    "OneHot": _constant_input(1, "depth"),
    "Dropout": _dropout,
    "LayerNormalization": _layer_norm,
    "Constant": _constant,
    "LSTM": _lstm,
    **dict.fromkeys([op for op, why in SUPPORTED.items() if op.startswith("Reduce")], _reduce),
}


# --- the walk ----------------------------------------------------------------------------------------
def _node_problems(node: onnx.NodeProto, index: str, scope: _Scope) -> Iterator[str]:
    where = f"node {index}" + (f" '{node.name}'" if node.name else "") + f" ({node.op_type})"
    if node.domain not in _DEFAULT_DOMAINS:
        if (node.domain, node.op_type) not in scope.functions:
            yield f"{where}: custom domain '{node.domain}' is not parsed by TensorRT (no plugin assumed)"
        return
    if node.op_type in UNSUPPORTED:
        yield f"{where}: {node.op_type} is not supported by the ONNX-TensorRT parser"
        return
    if node.op_type not in SUPPORTED:
        yield f"{where}: {node.op_type} is not in the ONNX-TensorRT parser's operator table"
        return
    for problem in _CHECKS.get(node.op_type, lambda n, s: [])(node, scope):
        yield f"{where}: {problem}"
    if node.op_type in ("Cast", "CastLike") and _attr(node, "to") == onnx.TensorProto.DOUBLE:
        yield f"{where}: casts to DOUBLE, which TensorRT casts down to FLOAT"
    for attr in node.attribute:
        subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for k, sub in enumerate(subgraphs):
            yield from _graph_problems(sub, scope.inner(sub), f"{index}.{attr.name}{k or ''}.")


def _type_problem(what: str, name: str, elem_type: int) -> Iterator[str]:
    if elem_type == onnx.TensorProto.DOUBLE:
        yield f"{what} '{name}' is DOUBLE, which TensorRT casts down to FLOAT"
    elif elem_type not in _TENSOR_TYPES and elem_type != onnx.TensorProto.UNDEFINED:
        yield f"{what} '{name}' has type {onnx.TensorProto.DataType.Name(elem_type)}, which TensorRT lacks"


def _graph_problems(graph: onnx.GraphProto, scope: _Scope, prefix: str = "") -> Iterator[str]:
    for init in graph.initializer:
        yield from _type_problem("initializer", init.name, init.data_type)
    for vi in [*graph.input, *graph.output]:
        if vi.type.HasField("tensor_type"):
            yield from _type_problem("graph input/output", vi.name, vi.type.tensor_type.elem_type)
        else:
            yield f"graph input/output '{vi.name}' is a {vi.type.WhichOneof('value')}, not a tensor"
    for i, node in enumerate(graph.node):
        yield from _node_problems(node, f"{prefix}{i}", scope)


def tensorrt_problems(model: onnx.ModelProto, *, max_opset: int = MAX_OPSET) -> list[str]:
    """Everything in ``model`` the ONNX-TensorRT parser's documentation says it rejects or degrades.

    One line per problem, naming the node (index, name, op type) and the rule; an empty list means the
    graph uses only documented-supported ops within their documented restrictions. Nested graphs (If,
    Loop, Scan) and the model's local functions are checked too.
    """
    problems = []
    opsets = {o.domain or "": o.version for o in model.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", 0))
    if not MIN_OPSET <= opset <= max_opset:
        problems.append(f"model: default-domain opset {opset} is outside TensorRT's {MIN_OPSET}..{max_opset}")
    for domain in sorted(set(opsets) - {"", "ai.onnx"}):
        if any(n.domain == domain for n in _all_nodes(model.graph)):
            problems.append(f"model: imports opset domain '{domain}'")
    functions = {(f.domain, f.name) for f in model.functions}
    top = _Scope({}, functions, opset).inner(model.graph)
    problems += _graph_problems(model.graph, top)
    for f in model.functions:
        body = onnx.helper.make_graph(list(f.node), f.name, [], [])
        for line in _graph_problems(body, top.inner(body)):
            problems.append(f"function {f.domain}.{f.name}: {line}")
    return problems


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _all_nodes(sub)
