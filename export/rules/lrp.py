"""Layer-wise relevance propagation (Bach et al.) as Captum's ``LRP`` runs it, as modified backwards.

The cotangent is the relevance R, seeded with the logit itself (Captum multiplies its result by
the target's output). A layer y = f(a) with its rule hands its input a the relevance

    R_a = a * VJP_f'(R / (z' + s * sign(z')))        sign(0) = 1

where f' is the layer with the rule's weights and z' = f'(a) on the forward's own inputs (Captum's
``PropagationRule``: weights changed in place, activations of the first forward fed again):

- epsilon (``EpsilonRule``): f' = f, s = ``epsilon`` (Captum's default 1e-9);
- gamma (``GammaRule``): weights W + gamma * max(W, 0), bias unchanged, s = 1e-9;
- zplus (``Alpha1_Beta0_Rule``, the z+ rule): weights max(W, 0), bias unchanged, s = 1e-9.

The chosen rule (``settings["rule"]``) applies to the layers with weights: Conv, ConvTranspose,
Gemm, MatMul and Einsum with one input that is not a constant, and BatchNormalization (its scale
is the weight, as ``module.weight`` is in PyTorch). Fixed linear maps (average pooling, sums,
resizing, Mul or Div by a constant) and selections (MaxPool) take the epsilon rule, which is
Captum's default for its pooling layers and its ``Addition_Module``. Rectifiers and odd squashes
(Tanh) pass the relevance unchanged (Captum's identity for ReLU and Tanh); shape ops move it with
their gradient. Every other op (Sigmoid, products of two activations, normalisations) has no LRP
rule in Captum and is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from varrt.export.rules.context import ZERO, Context, Rule

STABILITY = 1e-9  # Captum's PropagationRule.STABILITY_FACTOR, which GammaRule and Alpha1_Beta0_Rule keep
RULES = ("epsilon", "gamma", "zplus")
_REWEIGHT: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "gamma": lambda w, gamma: w + gamma * np.maximum(w, 0),
    "zplus": lambda w, gamma: np.maximum(w, 0),
}
# The operands of a weighted layer: the activation and its weights (the bias is left alone).
_OPERANDS = {"Conv": (0, 1), "ConvTranspose": (0, 1), "BatchNormalization": (0, 1), "Gemm": (0, 1), "MatMul": (0, 1)}


def weighted(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    """The chosen rule on a layer with weights."""
    positions = _OPERANDS.get(node.op_type, range(len(node.inputs)))  # Einsum: every operand
    operands = [i for i in positions if i < len(node.inputs) and node.inputs[i] is not None]
    variable = [i for i in operands if node.inputs[i].const_value is None]  # type: ignore[union-attr]
    if len(variable) != 1:
        raise ctx.fail(node, "lrp: LRP's rules are defined on layers with constant weights and one input; "
                             f"this one has {len(variable)} non-constant operands")
    name = ctx.settings["rule"]
    if name == "epsilon":
        return _redistribute(ctx, node, node, g, rule, ctx.settings["epsilon"])
    reweight = _REWEIGHT[name]
    inputs = list(node.inputs)
    for i in operands:
        if i not in variable:
            w = inputs[i].const_value.numpy()  # type: ignore[union-attr]
            inputs[i] = ctx.em.const(reweight(w, ctx.settings["gamma"]).astype(w.dtype))
    y = node.outputs[0]
    z = ctx.em.op(node.op_type, *inputs, **dict(node.attributes.items()))
    z.type, z.shape = y.type, y.shape
    changed = z.producer()
    assert changed is not None
    return _redistribute(ctx, node, changed, g, rule, STABILITY)


def fixed(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    """The epsilon rule on a fixed linear map or a selection."""
    return _redistribute(ctx, node, node, g, rule, ctx.settings["epsilon"])


def scaling(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    """Mul by a constant, or Div by one, is a fixed linear map; other products have no rule."""
    constant = [v is not None and v.const_value is not None for v in node.inputs]
    if (node.op_type == "Mul" and any(constant)) or (node.op_type == "Div" and constant[1:] == [True]):
        return fixed(ctx, node, g, rule)
    return undefined(ctx, node, g, rule)


def identity(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    """Activations pass the relevance on unchanged."""
    return [g] + [None] * (len(node.inputs) - 1)


def undefined(ctx: Context, node: ir.Node, g: ir.Value, rule: Rule) -> list:
    raise ctx.fail(node, "lrp: LRP's rules (Captum's LRP: Conv, Linear, pooling, BatchNorm, sums; identity on "
                         "ReLU and Tanh) define no relevance propagation for this op")


def _redistribute(ctx: Context, node: ir.Node, forward: ir.Node, g: ir.Value, rule: Rule, stability: float) -> list:
    """R_a = a * VJP_forward(R / (z + stability * sign(z))) for each input a of ``node``."""
    em = ctx.em
    z = forward.outputs[0]
    signed = em.Where(em.Less(z, em.scalar(0.0, like=z)), em.scalar(-stability, like=z), em.scalar(stability, like=z))
    shares = rule(ctx, forward, em.Div(g, em.Add(z, signed)))
    return [em.Mul(share, a) if isinstance(share, ir.Value) and share is not ZERO and a is not None else share
            for a, share in zip(node.inputs, shares)]
