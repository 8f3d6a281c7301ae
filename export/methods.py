"""The explanation methods, each a small description of how it uses the one autodiff.

A method says which modified backward of the rule families it runs with, how the image is batched before the
forward (integrated-gradients steps, SmoothGrad samples), and how the input cotangents are
reduced afterwards; the pipeline in ``explanation.py`` is shared by all of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    modified: str | None = None  # a modified backward of the rule table's families ("guided")
    batching: str | None = None  # "interpolate" (integrated gradients), "noise" (SmoothGrad), "baseline" (DeepLIFT)
    times_input: bool = False  # multiply by (input - baseline)
    relevance: bool = False  # seed the backward with the logit itself (LRP's relevance), not with 1
    cam: bool = False  # Grad-CAM at a feature map; with `guided`, times guided backprop
    description: str = ""


METHOD_TABLE: dict[str, Method] = {
    "gradient": Method(description="d logit_k / d input, signed"),
    "input_x_gradient": Method(times_input=True, description="input * gradient"),
    "guided_backprop": Method(modified="guided", description="gradient with only positive signals through ReLUs"),
    "integrated_gradients": Method(batching="interpolate", times_input=True,
                                   description="mean gradient on the path from a baseline, times (input - baseline)"),
    "smoothgrad": Method(batching="noise", description="mean gradient over noisy copies of the input"),
    "gradcam": Method(cam=True, description="ReLU of the gradient-weighted last feature map, upsampled"),
    "guided_gradcam": Method(modified="guided", cam=True, description="guided backprop times Grad-CAM"),
    "deconvolution": Method(modified="deconvolution",
                            description="gradient with ReLUs applied to the backward signal (Zeiler & Fergus)"),
    "deeplift": Method(modified="deeplift", batching="baseline", times_input=True,
                       description="DeepLIFT rescale multipliers against a baseline, times (input - baseline)"),
    "lrp": Method(modified="lrp", relevance=True,
                  description="layer-wise relevance propagation (--lrp-rule epsilon, gamma or zplus)"),
}

METHODS: tuple[str, ...] = tuple(METHOD_TABLE)
