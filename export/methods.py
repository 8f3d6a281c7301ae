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
    # how the image is batched: "interpolate" (integrated gradients), "noise" (SmoothGrad), "shap"
    # (GradientSHAP) in export/steps.py; "baseline" (DeepLIFT: image and baseline); "masks" (perturbation)
    batching: str | None = None
    times_input: bool = False  # multiply by (input - baseline)
    cam: str | None = None  # a CAM of export/cams.py at a feature map; with `guided`, times guided backprop
    perturbation: bool = False  # forward-only, on masked copies (export/perturbation.py); no backward
    per_pixel: bool = False  # one value per pixel, [H, W], whatever the channels (RISE)
    relevance: bool = False  # seed the backward with the logit itself (LRP's relevance), not with 1
    description: str = ""

    @property
    def pixel_map(self) -> bool:
        """Whether the map is [H, W] per class (Grad-CAM, RISE) rather than the input's shape."""
        return (self.cam is not None and not self.modified) or self.per_pixel


METHOD_TABLE: dict[str, Method] = {
    "gradient": Method(description="d logit_k / d input, signed"),
    "input_x_gradient": Method(times_input=True, description="input * gradient"),
    "guided_backprop": Method(modified="guided", description="gradient with only positive signals through ReLUs"),
    "integrated_gradients": Method(batching="interpolate", times_input=True,
                                   description="mean gradient on the path from a baseline, times (input - baseline)"),
    "smoothgrad": Method(batching="noise", description="mean gradient over noisy copies of the input"),
    "gradient_shap": Method(batching="shap", times_input=True,
                            description="mean of gradient x (noisy input - baseline) at random points between them"),
    "gradcam": Method(cam="gradcam", description="ReLU of the gradient-weighted last feature map, upsampled"),
    "guided_gradcam": Method(modified="guided", cam="gradcam", description="guided backprop times Grad-CAM"),
    "deconvolution": Method(modified="deconvolution",
                            description="gradient with ReLUs applied to the backward signal (Zeiler & Fergus)"),
    "gradcam_plus_plus": Method(cam="gradcam_plus_plus",
                                description="Grad-CAM with second- and third-order gradient weights"),
    "xgradcam": Method(cam="xgradcam", description="Grad-CAM weighted by gradient x activation / activation sum"),
    "layercam": Method(cam="layercam", description="per-position ReLU(gradient) x activation, summed over channels"),
    "hirescam": Method(cam="hirescam", description="per-position gradient x activation, summed over channels"),
    "scorecam": Method(cam="scorecam", description="forward-only: channels weighted by the softmax of the class "
                       "score of the image masked by each channel"),
    "occlusion": Method(batching="masks", perturbation=True,
                        description="mean logit drop over the square windows covering a pixel (Captum's Occlusion)"),
    "rise": Method(batching="masks", perturbation=True, per_pixel=True,
                   description="logits of randomly masked copies, weighted by their masks (Petsiuk et al. 2018)"),
    "deeplift": Method(modified="deeplift", batching="baseline", times_input=True,
                       description="DeepLIFT rescale multipliers against a baseline, times (input - baseline)"),
    "lrp": Method(modified="lrp", relevance=True,
                  description="layer-wise relevance propagation (--lrp-rule epsilon, gamma or zplus)"),
}

METHODS: tuple[str, ...] = tuple(METHOD_TABLE)


def default_samples(method: str) -> int:
    """``samples`` when not given: RISE's masks (Petsiuk et al. use thousands), else SmoothGrad's
    and GradientSHAP's noisy copies."""
    return 2000 if method == "rise" else 16
