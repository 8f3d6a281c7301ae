"""The batched image of the methods that average gradients over many points (steps or samples).

Integrated gradients, SmoothGrad and GradientSHAP run one forward over B + 1 blocks of the N
images, [(B + 1) * N, ...]: block 0 is the image itself (its logits are the ones reported and the
classes are chosen from; its gradient weighs 0) and blocks 1..B are the points. The backward's seed
weighs block b by w_b, so summing the input gradient over blocks gives the weighted mean:

    integrated_gradients  point_b = baseline + alpha_b * (x - baseline)              w_b = 1 / steps
                          attribution = (x - baseline) * sum_b w_b * grad(point_b)
                          alpha_b = b / steps, b = 1..steps (the right Riemann sum)
    smoothgrad            point_b = x + eps_b, eps_b ~ N(0, sigma^2)                  w_b = 1 / samples
                          attribution = sum_b w_b * grad(point_b)
    gradient_shap         x_b = x + eps_b, eps_b ~ N(0, sigma^2)                      w_b = 1 / samples
                          point_b = baseline + u_b * (x_b - baseline), u_b ~ U(0, 1)
                          attribution = sum_b w_b * grad(point_b) * (x_b - baseline)

    deeplift              block 1 is the baseline image; both blocks weigh 1, as in Captum's
                          DeepLift (the rescale multipliers compare the two forwards); only block
                          0's gradient is kept: attribution = (x - baseline) * grad_0

with sigma = noise * (max(x) - min(x)) per image. GradientSHAP is Captum's ``GradientShap``
(``NoiseTunnel`` smoothgrad over ``InputBaselineXGradient``) with one baseline, the constant
``baseline``, and ``stdevs`` = sigma; u is drawn per image and sample, eps per pixel. The noise
comes from the graph's RandomNormalLike/RandomUniformLike nodes, seeded at export: a fresh session
draws the same numbers, and every further run of a session draws new ones (ONNX Runtime keeps one
generator per node).

With ``step_batch`` the points are not fixed in the graph but fed per run, so a caller can run
the steps in chunks and add the chunks' attributions (the Explainer does, with Captum's
``internal_batch_size`` as the model): the graph takes one more input,

    alphas          float [B]   integrated_gradients: the alphas of this run's steps
    sample_weights  float [B]   smoothgrad, gradient_shap: w_b of this run's B samples

and the attributions are the run's share of the sum (1/steps is fixed at export for the steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from varrt.export.emitter import Emitter, float_dtype

#: The extra input of graphs exported with ``step_batch``, per batching kind.
STEP_INPUTS = {"interpolate": "alphas", "noise": "sample_weights", "shap": "sample_weights"}


@dataclass
class Steps:
    batched: ir.Value  # [(B + 1) * N, ...]: the image, then the B points
    weights: ir.Value  # float [B + 1]: each block's weight in the seed (block 0: 0)
    per_block: ir.Value | None  # [(B + 1) * N, ...]: multiplies each block's gradient before the sum
    after_sum: ir.Value | None  # [N, ...]: multiplies the summed gradient
    step_input: ir.Value | None  # the fed alphas or sample_weights, when exported with step_batch


def batch_steps(em: Emitter, image: ir.Value, kind: str, *, steps: int, baseline: float, samples: int,
                noise: float, seed: int, step_batch: int | None) -> Steps:
    """The batched image of ``kind`` ("interpolate", "noise", "shap" or "baseline") for ``image`` [N, ...]."""
    rank = len(image.shape or [])
    dtype = float_dtype(image)
    if kind == "baseline":
        reference = em.Expand(em.scalar(baseline, like=image), em.shape(image))
        pair = em.Concat(em.unsqueeze(image, [0]), em.unsqueeze(reference, [0]), axis=0)
        return Steps(_rows(em, pair, image), em.const(np.ones(2, dtype)), None, em.Sub(image, reference), None)
    count = steps if kind == "interpolate" else samples
    fed = None
    if step_batch is not None:
        fed = ir.Value(name=STEP_INPUTS[kind], type=ir.TensorType(image.dtype), shape=ir.Shape(["B"]))  # type: ignore[arg-type]
    if kind == "interpolate":
        alphas = fed if fed is not None else em.const((np.arange(1, count + 1) / count).astype(dtype))
        points_weights = em.Expand(em.scalar(1.0 / count, like=image), em.shape(alphas))
    else:
        points_weights = fed if fed is not None else em.const(np.full(count, 1.0 / count, dtype))
    weights = em.Concat(em.const(np.zeros(1, dtype)), points_weights, axis=0)  # block 0, the image: 0
    baseline_value = em.scalar(baseline, like=image)
    ones = [1] * (rank - 1)
    per_block = after_sum = None
    if kind == "interpolate":
        diff = em.Sub(image, baseline_value)
        points = em.Add(baseline_value, em.Mul(em.Reshape(alphas, em.ints([-1, 1] + ones)), em.unsqueeze(diff, [0])))
        after_sum = diff
    else:
        copies = em.Expand(em.unsqueeze(image, [0]), em.Concat(em.shape(points_weights), em.shape(image), axis=0))
        axes = list(range(1, rank))
        spread = em.Sub(em.reduce("ReduceMax", image, axes), em.reduce("ReduceMin", image, axes))
        sigma = em.Mul(spread, em.scalar(noise, like=image))
        eps = em.RandomNormalLike(copies, seed=float(seed), dtype=int(image.dtype))  # type: ignore[arg-type]
        points = noisy = em.Add(copies, em.Mul(eps, sigma))  # [B, N, ...]
        if kind == "shap":
            one_per_image = em.Expand(em.const(np.zeros([1] * (rank + 1), dtype)),
                                      em.Concat(em.shape(copies, 0, 2), em.ints(ones), axis=0))  # [B, N, 1...]
            u = em.RandomUniformLike(one_per_image, seed=float(seed) + 1.0, dtype=int(image.dtype))  # type: ignore[arg-type]
            delta = em.Sub(noisy, baseline_value)
            points = em.Add(baseline_value, em.Mul(u, delta))
            per_block = _rows(em, em.Concat(em.unsqueeze(em.Sub(image, baseline_value), [0]), delta, axis=0), image)
    batched = _rows(em, em.Concat(em.unsqueeze(image, [0]), points, axis=0), image)
    return Steps(batched, weights, per_block, after_sum, fed)


def _rows(em: Emitter, blocks: ir.Value, image: ir.Value) -> ir.Value:
    """[B + 1, N, ...] -> [(B + 1) * N, ...]."""
    return em.Reshape(blocks, em.Concat(em.ints([-1]), em.shape(image, 1), axis=0))
