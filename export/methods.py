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
    batching: str | None = None  # "interpolate" (integrated gradients), "noise" (SmoothGrad), "shap" (export/steps.py)
    times_input: bool = False  # multiply by (input - baseline)
    cam: bool = False  # Grad-CAM at a feature map; with `guided`, times guided backprop
    description: str = ""


METHOD_TABLE: dict[str, Method] = {
    "gradient": Method(description="d logit_k / d input, signed"),
    "input_x_gradient": Method(times_input=True, description="input * gradient"),
    "guided_backprop": Method(modified="guided", description="gradient with only positive signals through ReLUs"),
    "integrated_gradients": Method(batching="interpolate", times_input=True,
                                   description="mean gradient on the path from a baseline, times (input - baseline)"),
    "smoothgrad": Method(batching="noise", description="mean gradient over noisy copies of the input"),
    "gradient_shap": Method(batching="shap", times_input=True,
                            description="mean of gradient x (noisy input - baseline) at random points between them"),
    "gradcam": Method(cam=True, description="ReLU of the gradient-weighted last feature map, upsampled"),
    "guided_gradcam": Method(modified="guided", cam=True, description="guided backprop times Grad-CAM"),
    "deconvolution": Method(modified="deconvolution",
                            description="gradient with ReLUs applied to the backward signal (Zeiler & Fergus)"),
}

METHODS: tuple[str, ...] = tuple(METHOD_TABLE)
