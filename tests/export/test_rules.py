"""Every registered VJP rule against central finite differences.

One row per case: an op, its opset, attributes and inputs. The check is the inner-product test
<c, J t> = <J^T c, t> for K = 2 random cotangents c and one random direction t: J t by central
differences of the op evaluated by ONNX Runtime in float64 where it has a float64 kernel (else in
float32 with a larger step), J^T c by the emitted backward graph run with ONNX Runtime in float32.
onnx.reference is not used as the forward: its Softmax-11 (axis coercion) and LRN disagree with
the spec and with ONNX Runtime. ``test_every_rule_has_a_case`` makes a new rule fail until it
has a row here.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
from varrt.core.errors import ModelError
from varrt.export.passes import TARGETS
from varrt.export.rules import RULES
from varrt.export.tensorrt_support import tensorrt_problems
from varrt.export.vjp import vjp_model


@dataclass
class In:
    """An input of the op under test: active (differentiated) or a constant initializer."""

    shape: tuple = ()
    active: bool = True
    positive: bool = False
    value: np.ndarray | None = None  # a fixed constant (axes, indices, shapes...)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if self.value is not None:
            return np.asarray(self.value)
        x = rng.standard_normal(self.shape)
        return np.abs(x) + 0.5 if self.positive else x


def X(*shape: int) -> In:
    return In(shape)


def P(*shape: int) -> In:
    return In(shape, positive=True)


def W(*shape: int, positive: bool = False) -> In:
    return In(shape, active=False, positive=positive)


def C(value, dtype=np.int64) -> In:
    """A constant kept in its own dtype (axes, indices, scales)."""
    return In(active=False, value=np.asarray(value, dtype=dtype))


def F(value) -> In:
    """A float constant in the dtype under test (Clip bounds, exponents)."""
    return In(active=False, value=np.asarray(value, dtype=np.float64), positive=True)


NONE = None
# ReduceProd at zeros: rows with one zero, two zeros and none (the product is multilinear, so
# central differences are exact there).
WITH_ZEROS = In((2, 3, 4), positive=True, value=np.array(
    [[[0.5, 0.0, 1.5, -2.0], [0.0, 1.2, 0.0, 0.7], [1.1, -0.6, 0.9, 1.3]],
     [[0.8, 1.4, -0.3, 0.0], [0.6, 0.6, -1.2, 0.5], [0.0, 0.0, 0.0, 0.4]]]))
# ThresholdedRelu jumps by alpha at x = alpha and ONNX Runtime runs it in float32 only (step
# 1e-2): inputs stay 0.1 clear of both thresholds tested (0.3 and the default 1).
OFF_THRESHOLD = In((2, 3, 4), positive=True, value=np.array(
    [-1.3, -0.4, 0.0, 0.1, 0.5, 0.7, 1.2, 1.6, 2.1, -0.8, 0.6, 1.4] * 2).reshape(2, 3, 4))
# Ties for ReduceMin/ReduceMax along axis 1: at a tie the central difference averages the two
# one-sided slopes, (max(ta, tb) + min(ta, tb)) / 2, which is the even split the rules make.
TIED = In((2, 3, 2), positive=True, value=np.array(
    [[[1.0, -0.5], [1.0, 0.3], [-2.0, -0.5]], [[0.2, 0.4], [0.9, 0.4], [0.9, -1.0]]]))


@dataclass
class Case:
    op: str
    inputs: list
    opset: int = 17
    attrs: dict = field(default_factory=dict)
    outputs: int = 1
    tol: float = 2e-3
    # onnx's checker rejects an op at an opset where a later one deprecated it (GroupNormalization
    # 18, replaced in 21), though exporters wrote such files and ONNX Runtime runs them.
    deprecated: bool = False

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.op}-op{self.opset}-{extra}"[:90]


CASES = [
    # linear
    Case("Conv", [X(2, 4, 9, 9), W(6, 2, 3, 3)], attrs=dict(group=2, strides=[2, 2], pads=[1, 0, 2, 1])),
    Case("Conv", [X(2, 3, 9, 8), W(4, 3, 3, 2), W(4)], attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    Case("Conv", [X(1, 3, 11, 11), W(3, 1, 3, 3)], attrs=dict(dilations=[2, 2], group=3, pads=[2, 2, 2, 2])),
    Case("Conv", [X(2, 3, 10), W(4, 3, 3)], opset=9, attrs=dict(strides=[3], auto_pad="SAME_LOWER")),
    Case("Conv", [X(2, 4, 7, 8), W(6, 2, 3, 2)], attrs=dict(group=2, pads=[1, 0, 2, 1])),
    # strided with even sizes: one stride-1 Conv per phase (export/phases.py)
    Case("Conv", [X(2, 4, 8, 8), W(4, 1, 5, 5)], attrs=dict(group=4, strides=[2, 2], pads=[2, 2, 2, 2])),
    Case("Conv", [X(2, 4, 8, 8), W(4, 1, 3, 3)], attrs=dict(group=4, strides=[2, 2], pads=[0, 0, 1, 1])),
    Case("Conv", [X(2, 3, 12, 6), W(5, 3, 3, 3)], attrs=dict(strides=[3, 3], pads=[1, 0, 1, 2], dilations=[1, 2])),
    # dense with 16 input channels (fewer take the transposed form), and grouped, at stride 3
    Case("Conv", [X(1, 16, 12, 12), W(4, 16, 3, 3)], attrs=dict(strides=[3, 3])),
    Case("Conv", [X(2, 6, 9, 9), W(6, 2, 3, 3)], attrs=dict(group=3, strides=[3, 3], pads=[0, 0, 0, 0])),
    Case("Conv", [X(1, 4, 8, 10), W(6, 2, 4, 3)], attrs=dict(group=2, strides=[2, 2], pads=[1, 1, 1, 0])),
    Case("Gemm", [X(3, 5), W(4, 5), W(4)], attrs=dict(transB=1, alpha=0.5, beta=2.0)),
    Case("Gemm", [X(5, 3), X(5, 4), X(3, 1)], opset=9, attrs=dict(transA=1)),
    Case("MatMul", [X(2, 3, 4), W(4, 5)]),
    Case("MatMul", [X(2, 1, 3, 4), X(5, 4, 2)]),
    Case("MatMul", [X(4), X(2, 4, 3)]),
    Case("MatMul", [X(2, 3, 4), X(4)]),
    Case("MatMul", [X(4), W(4)]),
    Case("Einsum", [X(2, 3, 4), X(2, 4, 5)], opset=12, attrs=dict(equation="bij,bjk->bik")),
    Case("Einsum", [X(2, 3, 4, 2), W(5, 3)], attrs=dict(equation="nchw,oc->nohw")),
    Case("Einsum", [X(2, 2, 3, 4), X(2, 2, 5, 4)], attrs=dict(equation="bhid, bhjd -> bhij")),
    Case("Einsum", [X(2, 3, 4, 5), X(2, 3, 5, 2)], attrs=dict(equation="...ij,...jk->...ik")),
    Case("Einsum", [X(2, 3, 4), X(4, 5)], attrs=dict(equation="...ij,jk")),  # implicit output
    Case("Einsum", [X(2, 3, 4), X(2, 5)], attrs=dict(equation="bij,bk->bk")),  # i, j summed in one operand
    Case("Einsum", [X(2, 3), X(3, 4), X(4, 2)], attrs=dict(equation="bi,ij,jk->bk")),
    Case("Einsum", [X(3, 4)], attrs=dict(equation="ij->ji")),
    Case("ConvTranspose", [X(2, 4, 5, 5), W(4, 3, 3, 3)], attrs=dict(strides=[2, 2], pads=[1, 0, 1, 1])),
    Case("ConvTranspose", [X(2, 4, 4, 5), W(4, 2, 3, 2), W(4)],
         attrs=dict(group=2, strides=[2, 3], output_padding=[1, 2], dilations=[1, 2])),
    Case("ConvTranspose", [X(2, 3, 6), W(3, 2, 4)], opset=9, attrs=dict(strides=[3], pads=[1, 2], auto_pad="NOTSET")),
    Case("ConvTranspose", [X(1, 2, 3, 3), W(2, 2, 2, 2)], attrs=dict(auto_pad="VALID")),
    # arithmetic
    Case("Add", [X(2, 3, 4), X(3, 1)]),
    Case("Sub", [X(3, 1), X(2, 3, 4)]),
    Case("Mul", [X(2, 3, 4), X(2, 1, 4)]),
    Case("Div", [X(2, 3, 4), P(4)]),
    Case("Sum", [X(2, 3), X(3), X(1, 3)]),
    Case("Mean", [X(2, 3), X(3)]),
    Case("Neg", [X(2, 3)]),
    Case("Pow", [P(2, 3), F(2.5)]),
    Case("Pow", [P(2, 3), X(3)]),
    Case("Max", [X(2, 3), X(3), X(2, 1)]),
    Case("Min", [X(2, 3), X(2, 3)]),
    Case("Where", [C(np.array([[True, False, True], [False, True, True]]), np.bool_), X(2, 3), X(3)]),
    Case("Expand", [X(3, 1), C([2, 3, 4])]),
    Case("Identity", [X(2, 3)]),
    Case("Dropout", [X(2, 3)], opset=12),
    Case("Cast", [X(2, 3)], attrs=dict(to=onnx.TensorProto.FLOAT)),
    # activations
    Case("Relu", [X(2, 3, 4)]),
    Case("LeakyRelu", [X(2, 3, 4)], attrs=dict(alpha=0.1)),
    Case("Elu", [X(2, 3, 4)], attrs=dict(alpha=0.7)),
    Case("PRelu", [X(2, 3, 4, 4), W(3, 1, 1)]),
    Case("Clip", [X(2, 3, 4)], opset=9, attrs=dict(min=-0.5, max=0.5)),
    Case("Clip", [X(2, 3, 4), F(0.0), F(1.0)], opset=13),
    Case("Clip", [X(2, 3, 4), F(-1.0)], opset=13),
    Case("Selu", [X(2, 3, 4)]),
    Case("Selu", [X(2, 3, 4)], attrs=dict(alpha=1.2, gamma=0.8)),
    Case("Celu", [X(2, 3, 4)], opset=12),
    Case("Celu", [X(2, 3, 4)], opset=13, attrs=dict(alpha=0.6)),
    Case("ThresholdedRelu", [OFF_THRESHOLD], opset=10, attrs=dict(alpha=0.3)),
    Case("ThresholdedRelu", [OFF_THRESHOLD], opset=17),
    Case("Sigmoid", [X(2, 3)]),
    Case("Mish", [X(3, 4)], opset=18),
    Case("Softsign", [X(3, 4)]),
    Case("HardSigmoid", [X(4, 5)], attrs=dict(alpha=0.3, beta=0.4)),
    Case("HardSwish", [In((4, 5))], opset=14),
    Case("Tanh", [X(2, 3)]),
    Case("Erf", [X(2, 3)]),
    Case("Gelu", [X(2, 3)], opset=20),
    Case("Gelu", [X(2, 3)], opset=20, attrs=dict(approximate="tanh")),
    Case("Softplus", [X(2, 3)]),
    Case("Exp", [X(2, 3)]),
    Case("Log", [P(2, 3)]),
    Case("Sqrt", [P(2, 3)]),
    Case("Reciprocal", [P(2, 3)]),
    Case("Abs", [X(2, 3)]),
    Case("Floor", [X(2, 3)]),
    Case("Ceil", [X(2, 3)]),
    Case("Round", [X(2, 3)]),
    Case("Sign", [X(2, 3)]),
    # normalisation
    Case("BatchNormalization", [X(2, 3, 4, 4), W(3), W(3), W(3), W(3, positive=True)], opset=9),
    Case("BatchNormalization", [X(2, 3, 5), W(3), W(3), W(3), W(3, positive=True)], opset=15, attrs=dict(epsilon=1e-3)),
    Case("InstanceNormalization", [X(2, 3, 4, 5), W(3), W(3)]),
    Case("LayerNormalization", [X(2, 3, 6), W(6), W(6)], opset=17),
    Case("LayerNormalization", [X(2, 3, 4, 2), W(4, 2)], opset=17, attrs=dict(axis=2, epsilon=1e-3)),
    Case("GroupNormalization", [X(2, 6, 3, 4), W(3), W(3)], opset=18, attrs=dict(num_groups=3), deprecated=True),
    # stash_type double: the float64 forward of the finite differences must compute its statistics
    # in float64 too (the default, float32, leaves 1e-7 errors that a 1e-6 step magnifies)
    Case("GroupNormalization", [X(2, 4, 5), W(4), W(4)], opset=21,
         attrs=dict(num_groups=2, epsilon=1e-3, stash_type=onnx.TensorProto.DOUBLE)),
    Case("LRN", [X(2, 5, 3, 3)], attrs=dict(size=3, alpha=0.5, beta=0.75, bias=2.0)),
    Case("LRN", [X(2, 6, 3, 3)], opset=9, attrs=dict(size=5, alpha=0.3, beta=0.6)),
    # pooling
    Case("MaxPool", [X(2, 3, 9, 9)], attrs=dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    Case("MaxPool", [X(2, 3, 8, 8)], attrs=dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    Case("MaxPool", [X(1, 2, 9, 9)], opset=12, attrs=dict(kernel_shape=[2, 2], dilations=[2, 2])),
    Case("MaxPool", [X(2, 3, 9, 9)], opset=9, attrs=dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    Case("MaxPool", [X(2, 3, 10)], attrs=dict(kernel_shape=[3], strides=[2])),
    Case("AveragePool", [X(2, 3, 9, 9)], attrs=dict(kernel_shape=[3, 3], strides=[2, 2])),
    Case("AveragePool", [X(2, 3, 9, 9)], attrs=dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    Case(
        "AveragePool",
        [X(2, 3, 9, 9)],
        attrs=dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    ),
    Case("AveragePool", [X(2, 3, 8, 7)], attrs=dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1)),
    Case("AveragePool", [X(2, 3, 7, 7)], opset=9, attrs=dict(kernel_shape=[2, 2], pads=[1, 0, 1, 0])),
    Case("GlobalAveragePool", [X(2, 3, 4, 5)]),
    Case("GlobalMaxPool", [X(2, 3, 4, 5)]),
    # reductions
    Case("ReduceMean", [X(2, 3, 4)], opset=13, attrs=dict(axes=[1, 2], keepdims=0)),
    Case("ReduceMean", [X(2, 3, 4), C([-1])], opset=18),
    Case("ReduceSum", [X(2, 3, 4)], opset=11, attrs=dict(axes=[1], keepdims=1)),
    Case("ReduceSum", [X(2, 3, 4), C([0, 2])], opset=13, attrs=dict(keepdims=0)),
    Case("ReduceMax", [X(2, 3, 4)], opset=13, attrs=dict(axes=[2], keepdims=0)),
    Case("ReduceMax", [X(2, 3, 4), C([1])], opset=18),
    Case("ReduceMin", [X(2, 3, 4)], opset=13, attrs=dict(axes=[2], keepdims=0)),
    Case("ReduceMin", [TIED, C([1])], opset=18),
    Case("ReduceMax", [TIED, C([1])], opset=18),
    Case("ReduceL1", [X(2, 3, 4)], opset=13, attrs=dict(axes=[1, 2], keepdims=0)),
    Case("ReduceL1", [X(2, 3, 4), C([-1])], opset=18),
    Case("ReduceL2", [X(2, 3, 4)], opset=13, attrs=dict(axes=[2])),
    Case("ReduceL2", [X(2, 3, 4), C([1, 2])], opset=18, attrs=dict(keepdims=0)),
    Case("ReduceSumSquare", [X(2, 3, 4)], opset=13, attrs=dict(axes=[0], keepdims=0)),
    Case("ReduceSumSquare", [X(2, 3, 4), C([2])], opset=18),
    Case("ReduceLogSumExp", [X(2, 3, 4)], opset=13, attrs=dict(axes=[1])),
    Case("ReduceLogSumExp", [X(2, 3, 4), C([2])], opset=18, attrs=dict(keepdims=0)),
    Case("ReduceProd", [X(2, 3, 4)], opset=13, attrs=dict(axes=[1, 2], keepdims=0)),
    Case("ReduceProd", [WITH_ZEROS, C([2])], opset=18),  # one zero in a row, two zeros, none
    Case("CumSum", [X(2, 5, 3), C(1)], opset=11),
    Case("CumSum", [X(2, 5, 3), C([-1])], opset=14, attrs=dict(exclusive=1)),
    Case("CumSum", [X(2, 5, 3), C(1)], opset=14, attrs=dict(reverse=1)),
    Case("CumSum", [X(4, 3), C(0)], opset=14, attrs=dict(exclusive=1, reverse=1)),
    Case("Softmax", [X(2, 3, 4)], opset=11, attrs=dict(axis=1)),
    Case("Softmax", [X(2, 3, 4)], opset=13),
    Case("LogSoftmax", [X(2, 5)], opset=13, attrs=dict(axis=1)),
    Case("LogSoftmax", [X(2, 3, 4)], opset=9, attrs=dict(axis=1)),
    # layout
    Case("Reshape", [X(2, 3, 4), C([2, -1])]),
    Case("Flatten", [X(2, 3, 4)], attrs=dict(axis=1)),
    Case("Transpose", [X(2, 3, 4)], attrs=dict(perm=[0, 2, 1])),
    Case("Squeeze", [X(2, 1, 3)], opset=11, attrs=dict(axes=[1])),
    Case("Squeeze", [X(2, 1, 3), C([1])], opset=13),
    Case("Unsqueeze", [X(2, 3)], opset=11, attrs=dict(axes=[1])),
    Case("Unsqueeze", [X(2, 3), C([0, 3])], opset=13),
    Case("Concat", [X(2, 3), X(2, 2), W(2, 1)], attrs=dict(axis=1)),
    Case("Split", [X(2, 6)], opset=11, attrs=dict(axis=1, split=[2, 4]), outputs=2),
    Case("Split", [X(4, 3), C([1, 3])], opset=13, outputs=2),
    Case("Slice", [X(5, 6)], opset=9, attrs=dict(starts=[1, 0], ends=[4, 100], axes=[0, 1])),
    Case("Slice", [X(2, 9, 8), C([1, -7]), C([8, 8]), C([1, 2]), C([2, 3])], opset=13),
    Case("Slice", [X(2, 7), C([5]), C([0]), C([1]), C([-2])], opset=13),
    Case("Gather", [X(2, 5, 3), C(1)], attrs=dict(axis=1)),
    Case("Gather", [X(2, 5, 3), C([4, 0, 4])], attrs=dict(axis=1)),
    Case("Gather", [X(6, 3), C([[1, 2], [3, 4]])], attrs=dict(axis=0)),
    Case("Pad", [X(2, 3, 4)], opset=9, attrs=dict(pads=[0, 1, 2, 0, 2, 1])),
    Case("Pad", [X(2, 3, 4), C([0, 0, 1, 0, 1, 2])], opset=13),
    Case("Pad", [X(2, 3, 4)], opset=9, attrs=dict(pads=[0, 1, 2, 0, 2, 1], mode="reflect")),
    Case("Pad", [X(2, 3, 5, 4), C([0, 0, 2, 3, 0, 0, 1, 3])], opset=13, attrs=dict(mode="reflect")),
    Case("Pad", [X(2, 3, 4), C([0, 2, 3, 0, 1, 2])], opset=11, attrs=dict(mode="edge")),
    Case("Pad", [X(2, 3, 4, 4), C([1, 2, 2, 1]), NONE, C([2, -1])], opset=18, attrs=dict(mode="edge")),
    Case("Pad", [X(2, 3, 4), C([0, 0, 5, 0, 2, 3])], opset=19, attrs=dict(mode="wrap")),
    Case("DepthToSpace", [X(2, 8, 3, 2)], opset=11, attrs=dict(blocksize=2)),
    Case("DepthToSpace", [X(2, 8, 3, 2)], opset=13, attrs=dict(blocksize=2, mode="CRD")),
    Case("DepthToSpace", [X(1, 18, 2, 2)], opset=13, attrs=dict(blocksize=3, mode="CRD")),
    Case("SpaceToDepth", [X(2, 3, 4, 6)], opset=13, attrs=dict(blocksize=2)),
    Case("Tile", [X(2, 3), C([2, 3])]),
    Case(
        "Resize",
        [X(1, 2, 4, 5), NONE, C([1, 1, 2, 1.5], np.float32)],
        opset=13,
        attrs=dict(mode="linear", coordinate_transformation_mode="half_pixel"),
    ),
    Case("Resize", [X(1, 2, 4, 5), NONE, NONE, C([1, 2, 7, 3])], opset=13, attrs=dict(mode="nearest")),
    Case(
        "Resize",
        [X(1, 2, 4, 4), C([], np.float32), C([], np.float32), C([1, 2, 7, 9])],
        opset=11,
        attrs=dict(mode="linear", coordinate_transformation_mode="align_corners"),
    ),
    Case("Resize", [X(1, 2, 4, 4), C([1, 1, 2, 2], np.float32)], opset=10, attrs=dict(mode="nearest")),
    Case("Upsample", [X(1, 2, 3, 4), C([1, 1, 2, 2], np.float32)], opset=9, attrs=dict(mode="linear")),
    # recurrent: X [T, N, I], W [D, gates*H, I], R [D, gates*H, H], B [D, 2*gates*H], sequence_lens,
    # initial_h (and initial_c) [D, N, H]; all three outputs (Y, Y_h, Y_c) get cotangents
    Case("LSTM", [X(3, 2, 4), W(1, 12, 4), W(1, 12, 3), W(1, 24)], attrs=dict(hidden_size=3), outputs=3),
    Case("LSTM", [X(4, 2, 3), W(2, 8, 3), W(2, 8, 2), W(2, 16), C([4, 4], np.int32), X(2, 2, 2), X(2, 2, 2)],
         opset=14, attrs=dict(hidden_size=2, direction="bidirectional"), outputs=3),
    Case("LSTM", [X(3, 1, 2), W(1, 8, 2), W(1, 8, 2)], attrs=dict(hidden_size=2, direction="reverse"), outputs=2),
    Case("GRU", [X(3, 2, 4), W(1, 9, 4), W(1, 9, 3), W(1, 18)], attrs=dict(hidden_size=3, linear_before_reset=1),
         outputs=2),
    Case("GRU", [X(4, 2, 3), W(2, 6, 3), W(2, 6, 2), W(2, 12), NONE, X(2, 2, 2)], opset=14,
         attrs=dict(hidden_size=2, direction="bidirectional"), outputs=2),
    Case("GRU", [X(2, 1, 2), W(1, 6, 2), W(1, 6, 2)], opset=9, attrs=dict(hidden_size=2, direction="reverse")),
]

# The newest opsets ONNX Runtime runs, for the rows added with issue 12 (their semantics did not
# change after the opsets above; 22-25 added types).
CASES += [
    Case("ReduceL2", [X(2, 3, 4), C([1])], opset=25),
    Case("ReduceProd", [WITH_ZEROS, C([1, 2])], opset=25),
    Case("Mish", [X(3, 4)], opset=25),
    Case("Selu", [X(3, 4)], opset=22),
    Case("ThresholdedRelu", [OFF_THRESHOLD], opset=25),
    Case("Pad", [X(2, 3, 5, 4), C([0, 0, 2, 3, 0, 0, 1, 3])], opset=25, attrs=dict(mode="reflect")),
    Case("DepthToSpace", [X(2, 8, 3, 2)], opset=25, attrs=dict(blocksize=2, mode="CRD")),
    Case("CumSum", [X(2, 5, 3), C(2)], opset=25, attrs=dict(exclusive=1)),
    Case("GroupNormalization", [X(2, 4, 5), W(4), W(4)], opset=25,
         attrs=dict(num_groups=2, stash_type=onnx.TensorProto.DOUBLE)),
    Case("ConvTranspose", [X(2, 4, 5, 5), W(4, 3, 3, 3)], opset=22, attrs=dict(strides=[2, 2], pads=[1, 0, 1, 1])),
    Case("Einsum", [X(2, 2, 3, 4), X(2, 2, 5, 4)], opset=25, attrs=dict(equation="bhid,bhjd->bhij")),
]


def _model(case: Case, rng: np.random.Generator, dtype) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    names, graph_inputs, initializers, feeds = [], [], [], {}
    for i, spec in enumerate(case.inputs):
        if spec is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        value = spec.sample(rng)
        if spec.value is None or (spec.positive and spec.value is not None):  # random, or F(...)
            value = value.astype(dtype)
        if spec.active:
            graph_inputs.append(oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(value.dtype), value.shape))
            feeds[name] = value
        else:
            initializers.append(onnx.numpy_helper.from_array(value, name))
    attrs = dict(case.attrs)
    if case.op == "Cast":
        attrs["to"] = oh.np_dtype_to_tensor_dtype(np.dtype(dtype))
    outs = [f"out{j}" for j in range(case.outputs)]
    node = oh.make_node(case.op, names, outs, **attrs)
    graph = oh.make_graph(
        [node],
        "case",
        graph_inputs,
        [oh.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs],
        initializer=initializers,
    )
    opsets = [oh.make_opsetid("", case.opset)]
    model = oh.make_model(graph, opset_imports=opsets, ir_version=max(7, oh.find_min_ir_version_for(opsets)))
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    if case.op in SHAPE_OF_INPUT:
        model.graph.output[0].type.CopyFrom(model.graph.input[0].type)
    return model, feeds


# Function ops onnx infers no shapes for (its inference does not expand functions); their output
# has the shape and type of their first input.
SHAPE_OF_INPUT = {"GroupNormalization"}


def _forward(model64: onnx.ModelProto, model32: onnx.ModelProto, feeds64: dict[str, np.ndarray]):
    """(run(float64 feeds) -> float64 outputs, finite-difference step)."""
    options = dict(providers=["CPUExecutionProvider"])
    try:
        session = ort.InferenceSession(model64.SerializeToString(), **options)
        session.run(None, feeds64)  # LSTM registers a float64 kernel that refuses to run
        return (lambda feeds: session.run(None, feeds)), 1e-6
    except Exception:  # no float64 kernel for this op: float32 with a step float32 can resolve
        session32 = ort.InferenceSession(model32.SerializeToString(), **options)
        return (
            lambda feeds: [
                o.astype(np.float64) for o in session32.run(None, {n: v.astype(np.float32) for n, v in feeds.items()})
            ]
        ), 1e-2


def test_every_rule_has_a_case():
    """Each row of the table (an op over an opset range) has a case inside that range."""
    def covers(row, case):
        first, last = row.opsets
        return case.op == row.op and first <= case.opset and (last is None or case.opset <= last)

    missing = [(row.op, row.opsets) for row in RULES if not any(covers(row, case) for case in CASES)]
    assert missing == []


def test_readme_lists_every_rule():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    paragraph = readme[readme.index("Ops with a VJP rule"):].split(". Shape-only")[0]
    listed = re.sub(r"\([^)]*\)", "", paragraph.split(":", 1)[1])  # drop the notes in parentheses
    assert sorted(op.strip() for op in listed.split(",")) == sorted({row.op for row in RULES})


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_against_finite_differences(case: Case, target: str):
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    model64, feeds64 = _model(case, rng, np.float64)
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    model32, feeds32 = _model(case, rng, np.float32)

    grad_model = vjp_model(model32, target=target)
    if not case.deprecated:
        onnx.checker.check_model(grad_model, full_check=True)
    # What the rule emitted stays inside the ONNX-TensorRT parser's documented support (node 0 is
    # the op under test itself, as the case wrote it: 1-D or dilated MaxPool are TensorRT's limits).
    emitted = [p for p in tensorrt_problems(grad_model, max_opset=25) if not p.startswith("node 0 ")]
    assert emitted == []
    session = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    forward, eps = _forward(model64, model32, feeds64)
    feeds = feeds64
    outputs = forward(feeds)

    k = 2
    cotangents = {f"cotangent_out{j}": rng.standard_normal((k, *np.shape(o))) for j, o in enumerate(outputs)}
    direction = {name: rng.standard_normal(v.shape) for name, v in feeds.items()}
    grads = session.run(
        [f"grad_{n}" for n in feeds32], {**feeds32, **{n: c.astype(np.float32) for n, c in cotangents.items()}}
    )

    plus = forward({n: v + eps * direction[n] for n, v in feeds.items()})
    minus = forward({n: v - eps * direction[n] for n, v in feeds.items()})
    jvp = [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
    for class_index in range(k):
        lhs = sum(float(np.sum(cotangents[f"cotangent_out{j}"][class_index] * jvp[j])) for j in range(len(jvp)))
        rhs = sum(float(np.sum(g[class_index] * direction[n])) for g, n in zip(grads, feeds))
        scale = (
            sum(float(np.sum(np.abs(cotangents[f"cotangent_out{j}"][class_index] * jvp[j]))) for j in range(len(jvp)))
            + 1e-6
        )
        assert abs(lhs - rhs) <= case.tol * scale, f"{case.id}: <c, J t> = {lhs}, <J^T c, t> = {rhs}"


REFUSED = [
    (Case("Einsum", [X(2, 3, 3)], attrs=dict(equation="bii->bi")), "repeats an index"),
    (Case("Einsum", [X(2, 3, 4), X(1, 4, 5)], attrs=dict(equation="...ij,...jk->...ik")), "broadcasts an ellipsis"),
    (Case("ConvTranspose", [X(1, 2, 4, 4), W(2, 2, 3, 3)], attrs=dict(strides=[2, 2], auto_pad="SAME_UPPER")),
     "auto_pad=SAME_UPPER"),
    (Case("Pad", [X(2, 3, 4), C([0, -1, 1, 0, 1, 1])], opset=13, attrs=dict(mode="reflect")), "negative pads"),
    (Case("LSTM", [X(3, 2, 4), W(1, 12, 4), W(1, 12, 3)], attrs=dict(hidden_size=3, clip=2.0)), "clip"),
    (Case("LSTM", [X(3, 2, 4), W(1, 12, 4), W(1, 12, 3), NONE, NONE, NONE, NONE, W(1, 9)], attrs=dict(hidden_size=3)),
     "peepholes"),
    (Case("GRU", [X(3, 2, 4), W(1, 9, 4), W(1, 9, 3)],
          attrs=dict(hidden_size=3, activations=["Sigmoid", "Relu"])), "not the default"),
    (Case("GRU", [X(3, 2, 4), W(1, 9, 4), W(1, 9, 3), NONE, C([3, 2], np.int32)], attrs=dict(hidden_size=3)),
     "sequence_lens"),
]


@pytest.mark.parametrize("case,why", REFUSED, ids=[f"{c.id}-{why}" for c, why in REFUSED])
def test_rules_refuse_what_they_cannot_do_exactly(case: Case, why: str):
    model, _ = _model(case, np.random.default_rng(0), np.float32)
    with pytest.raises(ModelError, match=why):
        vjp_model(model)


def test_recurrent_rules_refuse_a_dynamic_sequence_length():
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["T", 2, 3])
    weights = [onnx.numpy_helper.from_array(np.ones((1, 12, n), np.float32), name) for name, n in (("w", 3), ("r", 3))]
    node = oh.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=3)
    graph = oh.make_graph([node], "lstm", [x], [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], weights)
    with pytest.raises(ModelError, match="static sequence length"):
        vjp_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def _rectifies(case: Case) -> bool:
    """Guided backprop's definition: ReLU-like units pass only positive cotangents; Clip is one
    when its lower bound is 0 (ReLU6), not as a plain saturation."""
    if case.op == "Clip":
        low = case.attrs.get("min") if case.opset < 11 else (case.inputs[1].value if len(case.inputs) > 1 else None)
        return low is not None and float(low) == 0.0
    return case.op in ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_guided_backprop_is_the_gradient_of_the_positive_cotangent_on_rectifiers(case: Case):
    """guided VJP(c) == plain VJP(relu(c)) on rectifiers, == plain VJP(c) on every other op."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    model32, feeds = _model(case, rng, np.float32)
    plain, guided = (ort.InferenceSession(vjp_model(model32, modified_backward=m).SerializeToString(),
                                          providers=["CPUExecutionProvider"]) for m in (None, "guided"))
    cotangents = {i.name: rng.standard_normal([2, *i.shape[1:]]).astype(np.float32)
                  for i in plain.get_inputs() if i.name.startswith("cotangent_")}
    passed = {n: np.maximum(c, 0) for n, c in cotangents.items()} if _rectifies(case) else cotangents
    ours = guided.run(None, {**feeds, **cotangents})
    expected = plain.run(None, {**feeds, **passed})
    for a, b in zip(ours, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_deconvolution_passes_the_rectified_cotangent_through_rectifiers(case: Case):
    """deconvolution VJP(c) == relu(c) on rectifiers (no forward mask), == plain VJP(c) elsewhere."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    model32, feeds = _model(case, rng, np.float32)
    plain, deconv = (ort.InferenceSession(vjp_model(model32, modified_backward=m).SerializeToString(),
                                          providers=["CPUExecutionProvider"]) for m in (None, "deconvolution"))
    cotangents = {i.name: rng.standard_normal([2, *i.shape[1:]]).astype(np.float32)
                  for i in plain.get_inputs() if i.name.startswith("cotangent_")}
    grads = [o.name for o in deconv.get_outputs() if o.name.startswith("grad_")]
    ours = deconv.run(grads, {**feeds, **cotangents})
    if _rectifies(case):
        (c,) = cotangents.values()
        np.testing.assert_array_equal(ours[0], np.maximum(c, 0))  # the rectifier's input, x
    else:
        for a, b in zip(ours, plain.run(grads, {**feeds, **cotangents})):
            np.testing.assert_array_equal(a, b)
