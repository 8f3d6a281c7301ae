"""The VJP rule table: every op varrt differentiates, its rule, its opsets and its family.

One row per op and opset range (the range where the op's semantics are those the rule assumes).
A rule is ``rule(ctx, node, g) -> list``: given the forward node and the cotangent ``g`` of its
first output (``ctx.output_cotangents`` holds all of them, None where nothing flows), it returns
one entry per node input: a cotangent [K, *input.shape], ``ZERO`` when no gradient flows, or
``None`` for an input the rule does not differentiate (weights, shapes, indices). Rules are the
math only; runtime tuning happens in export/passes/ after the backward.

A family says how the modified-backward methods treat its ops, so an op added to a family gets
its treatment without touching the rule: guided backprop (Springenberg et al.) hands every
rectifier only the positive part of its cotangent, as pytorch-grad-cam's and Captum's guided
ReLU backward do; deconvolution (Zeiler & Fergus, Captum's Deconvolution) passes the rectified
cotangent without the forward's mask. DeepLIFT (export/rules/deeplift.py) rescales every
elementwise nonlinearity and has Captum's rule for MaxPool; LRP (export/rules/lrp.py) runs its
chosen rule on the layers with weights, the epsilon rule on fixed linear maps and selections, and
passes relevance through rectifiers and squashes unchanged. A family that declares ``undefined``
for a method refuses it by name rather than fall back to the gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import onnx_ir as ir
from varrt.export.rules import activation as act
from varrt.export.rules import arithmetic as ar
from varrt.export.rules import deeplift as dl
from varrt.export.rules import layout as lay
from varrt.export.rules import linear as lin
from varrt.export.rules import lrp
from varrt.export.rules import normalization as norm
from varrt.export.rules import pooling as pool
from varrt.export.rules import recurrent as rec
from varrt.export.rules import reduction as red
from varrt.export.rules import resize as rsz
from varrt.export.rules.context import Context, Rule

# A modified backward: the input cotangents of a node given its output cotangent and its true rule.
Modifier = Callable[[Context, ir.Node, ir.Value, Rule], list]


def _rectifies(ctx: Context, node: ir.Node) -> bool:
    # Clip rectifies only with a lower bound of 0 (ReLU6); Clip(-1, 1) is a plain saturation.
    return node.op_type != "Clip" or act.clip_bounds(ctx, node)[0] == 0.0


def _guided(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    """Guided backprop (Springenberg et al.): the true rule, on the positive part of the cotangent."""
    return rule(ctx, node, ctx.em.Relu(g) if _rectifies(ctx, node) else g)


def _deconvolution(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    """Deconvolution (Zeiler & Fergus): the rectifier applied to the cotangent instead of its
    derivative; the forward's mask is not used."""
    if not _rectifies(ctx, node):
        return rule(ctx, node, g)
    return [ctx.em.Relu(g)] + [None] * (len(node.inputs) - 1)


@dataclass(frozen=True)
class Family:
    name: str
    modifiers: Mapping[str, Modifier] = field(default_factory=dict)  # modified backward -> its rule


# Linear, affine and shape ops need no DeepLIFT rule: their gradient is their rescale multiplier.
AFFINE = Family("affine", {"lrp": lrp.weighted})  # weighted sums of the input: Conv, Gemm, MatMul
LINEAR = Family("linear", {"lrp": lrp.fixed})  # fixed linear maps: sums, means, pooling averages, resizing
SHAPE = Family("shape")  # moves elements without changing them
ELEMENTWISE = Family("elementwise", {"lrp": lrp.scaling})  # products, quotients, powers
ACTIVATION = Family("activation", {"deeplift": dl.rescale, "lrp": lrp.undefined})  # smooth pointwise functions
SQUASH = Family("squash", {"deeplift": dl.rescale, "lrp": lrp.identity})  # odd, saturating: Tanh
RECTIFIER = Family("rectifier", {"guided": _guided, "deconvolution": _deconvolution,  # ReLU-like activations
                                 "deeplift": dl.rescale, "lrp": lrp.identity})
SELECTION = Family("selection", {"deeplift": dl.selection, "lrp": lrp.fixed})  # routes to the chosen element
NORMALIZATION = Family("normalization", {"deeplift": dl.undefined,  # statistics over axes: norms, softmax, LRN
                                         "lrp": lrp.undefined})
CONSTANT = Family("constant", {"deeplift": dl.undefined, "lrp": lrp.undefined})  # piecewise constant
RECURRENT = Family("recurrent", {"deeplift": dl.undefined,  # gated recurrences, unrolled over time
                                    "lrp": lrp.undefined})

MODIFIED_BACKWARDS = ("guided", "deconvolution", "deeplift", "lrp")


@dataclass(frozen=True)
class Row:
    op: str
    rule: Rule
    family: Family
    opsets: tuple[int, int | None] = (1, None)  # first and last opset of these semantics


RULES: tuple[Row, ...] = (
    Row("Abs", act.absolute, ACTIVATION),
    Row("Add", ar.add, LINEAR),
    Row("AveragePool", pool.average_pool, LINEAR),
    Row("BatchNormalization", norm.batch_norm, AFFINE),
    Row("Cast", ar.cast, SHAPE),
    Row("Ceil", ar.zero, CONSTANT),
    Row("Celu", act.celu, RECTIFIER, (12, None)),  # an Elu: see Elu
    Row("Clip", act.clip, RECTIFIER),
    Row("Concat", lay.concat, SHAPE),
    Row("Conv", lin.conv, AFFINE),
    Row("ConvTranspose", lin.conv_transpose, AFFINE),
    Row("CumSum", red.cumsum, LINEAR, (11, None)),
    Row("DepthToSpace", lay.depth_to_space, SHAPE),
    Row("Div", ar.div, ELEMENTWISE),
    Row("Dropout", ar.dropout, SHAPE),
    # Elu and its kin (Selu, Celu) are ReLUs with a smooth negative part, in the family as
    # LeakyRelu is: guided backprop passes only positive cotangents through every ReLU-like gate.
    Row("Elu", act.leaky_relu, RECTIFIER),
    Row("Einsum", lin.einsum, AFFINE, (12, None)),
    Row("Erf", act.erf, SQUASH),
    Row("Exp", act.exp, ACTIVATION),
    Row("Expand", ar.expand, SHAPE),
    Row("Flatten", lay.reshape, SHAPE),
    Row("Floor", ar.zero, CONSTANT),
    Row("Gather", lay.gather, SHAPE),
    Row("Gelu", act.gelu, ACTIVATION, (20, None)),
    Row("Gemm", lin.gemm, AFFINE),
    Row("GRU", rec.gru, RECURRENT, (9, None)),  # default activations; static length; 9: ConstantOfShape
    Row("GlobalAveragePool", pool.global_average_pool, LINEAR),
    Row("GlobalMaxPool", pool.global_max_pool, SELECTION),
    Row("GroupNormalization", norm.group_norm_18, NORMALIZATION, (18, 20)),  # scale per group
    Row("GroupNormalization", norm.group_norm, NORMALIZATION, (21, None)),  # scale per channel
    Row("HardSigmoid", act.hard_sigmoid, ACTIVATION),
    Row("HardSwish", act.hard_swish, ACTIVATION, (14, None)),
    Row("Identity", ar.identity, SHAPE),
    Row("InstanceNormalization", norm.instance_norm, NORMALIZATION),
    Row("LayerNormalization", norm.layer_norm, NORMALIZATION, (17, None)),
    Row("LeakyRelu", act.leaky_relu, RECTIFIER),
    Row("Log", act.log, ACTIVATION),
    Row("LogSoftmax", red.log_softmax_coerced, NORMALIZATION, (1, 12)),  # 2-D coercion at axis
    Row("LogSoftmax", red.log_softmax, NORMALIZATION, (13, None)),
    Row("LRN", norm.lrn, NORMALIZATION),
    Row("LSTM", rec.lstm, RECURRENT, (9, None)),  # as GRU; no peepholes
    Row("MatMul", lin.matmul, AFFINE),
    Row("Max", ar.extremum, SELECTION),
    Row("MaxPool", pool.max_pool, SELECTION),
    Row("Mish", act.mish, ACTIVATION, (18, None)),  # smooth, negative outputs: a Swish, not a gate
    Row("Mean", ar.mean, LINEAR),
    Row("Min", ar.extremum, SELECTION),
    Row("Mul", ar.mul, ELEMENTWISE),
    Row("Neg", ar.neg, LINEAR),
    Row("Pad", lay.pad, SHAPE),
    Row("Pow", ar.power, ELEMENTWISE),
    Row("PRelu", act.prelu, RECTIFIER),
    Row("Reciprocal", act.reciprocal, ACTIVATION),
    Row("ReduceL1", red.reduce_l1, ELEMENTWISE),
    Row("ReduceL2", red.reduce_l2, NORMALIZATION),
    Row("ReduceLogSumExp", red.reduce_log_sum_exp, NORMALIZATION),
    Row("ReduceMax", red.reduce_max, SELECTION),
    Row("ReduceMean", red.reduce_sum_mean, LINEAR),
    Row("ReduceMin", red.reduce_max, SELECTION),
    Row("ReduceProd", red.reduce_prod, ELEMENTWISE),
    Row("ReduceSum", red.reduce_sum_mean, LINEAR),
    Row("ReduceSumSquare", red.reduce_sum_square, ELEMENTWISE),
    Row("Relu", act.relu, RECTIFIER),
    Row("Reshape", lay.reshape, SHAPE),
    Row("Resize", rsz.resize, LINEAR, (10, None)),
    Row("Round", ar.zero, CONSTANT, (11, None)),
    Row("Selu", act.selu, RECTIFIER),  # a scaled Elu: see Elu
    Row("Sigmoid", act.sigmoid, ACTIVATION),
    Row("Sign", ar.zero, CONSTANT, (9, None)),
    Row("Slice", lay.slice_, SHAPE),
    Row("Softmax", red.softmax_coerced, NORMALIZATION, (1, 12)),  # 2-D coercion at axis
    Row("Softmax", red.softmax, NORMALIZATION, (13, None)),
    Row("Softplus", act.softplus, ACTIVATION),
    Row("Softsign", act.softsign, SQUASH),  # a saturating squash like Tanh
    Row("SpaceToDepth", lay.space_to_depth, SHAPE),
    Row("Split", lay.split, SHAPE),
    Row("Sqrt", act.sqrt, ACTIVATION),
    Row("Squeeze", lay.reshape, SHAPE),
    Row("Sub", ar.sub, LINEAR),
    Row("Sum", ar.add, LINEAR),
    Row("Tanh", act.tanh, SQUASH),
    # x above the threshold, 0 elsewhere: a ReLU whose gate opens at alpha instead of 0, so
    # guided backprop treats it as one.
    Row("ThresholdedRelu", act.thresholded_relu, RECTIFIER, (10, None)),
    Row("Tile", lay.tile, SHAPE),
    Row("Transpose", lay.transpose, SHAPE),
    Row("Unsqueeze", lay.reshape, SHAPE),
    Row("Upsample", rsz.resize, LINEAR, (7, None)),
    Row("Where", ar.where, SELECTION, (9, None)),
)


def lookup(op_type: str, opset: int) -> Row | None:
    """The row for ``op_type`` at ``opset``, or None."""
    for row in RULES:
        first, last = row.opsets
        if row.op == op_type and first <= opset and (last is None or opset <= last):
            return row
    return None


def modified(row: Row, backward: str | None) -> Modifier | None:
    """How the modified backward ``backward`` (None: the true gradient) treats ``row``'s op."""
    if backward is None:
        return None
    if backward not in MODIFIED_BACKWARDS:
        raise ValueError(f"unknown modified backward '{backward}'")
    return row.family.modifiers.get(backward)
