"""Cascading model randomization (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A map that explains the model must change when the model's learned weights are destroyed. The
layers with weights are randomized from the output backwards, one more at each step, and each
step's maps are compared with the original model's maps. Low similarity is good.

What is randomized: every Conv, ConvTranspose, Gemm and MatMul whose weight is an initializer;
its weight is redrawn from N(0, std of that weight) and its bias (Conv/Gemm input C, or the
initializer of an Add that directly follows a MatMul) from N(0, std of that bias). Normalization
layers (BatchNormalization, LayerNormalization) are left alone: they rescale channels but hold
no learned features, and in exported inference graphs they are usually folded into the conv
(the bundled EfficientNet-Lite0 has none left). Each layer draws from its own seeded generator,
so a layer randomized at step d holds the same random values at every later step - the cascade
only ever adds layers.

What is compared: the top-1 class's map (class ids fixed from the original model, so every step
explains the same classes) as the sum of absolute values over channels; Spearman rank
correlation on the raw magnitudes and SSIM on maps scaled to a maximum of 1.
Read SSIM with care for sparse maps: VAR zeroes most pixels, and two mostly-zero maps share a
flat background that SSIM counts as similar structure even when their non-zero pixels differ;
Spearman, which ranks every pixel, does not reward that. A map that is zero everywhere has no
ranking: its Spearman value is left out of the mean (NaN when every image's map is empty).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from varrt.bench import metrics
from varrt.core import defaults
from varrt.core.errors import ModelError
from varrt.explainer import Explainer
from varrt.export.methods import METHODS as EXPORT_METHODS
from varrt.export.model_loading import read_model

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
METHODS = EXPORT_METHODS  # every method varrt exports; --methods all
DEFAULT_METHODS = ("gradient", "guided_backprop", "integrated_gradients", "gradcam")

Progress = Callable[[int, int, str], None]


def _no_progress(done: int, total: int, label: str) -> None:
    del done, total, label


@dataclass(frozen=True)
class Layer:
    """A layer with learned weights: its node and the initializers it owns."""

    node: str
    op_type: str
    weight: str
    bias: str | None


def weight_layers(model: onnx.ModelProto) -> list[Layer]:
    """Layers with initializer weights, in graph order (input side first)."""
    initializers = {init.name: init for init in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in LAYER_OPS:
            continue
        if node.op_type == "MatMul":
            weight = next((n for n in node.input if n in initializers and len(initializers[n].dims) >= 2), None)
        else:
            weight = node.input[1] if len(node.input) > 1 and node.input[1] in initializers else None
        if weight is None:
            continue
        bias = None
        if node.op_type != "MatMul":
            if len(node.input) > 2 and node.input[2] in initializers:
                bias = node.input[2]
        else:
            following = consumers.get(node.output[0], [])
            if len(following) == 1 and following[0].op_type == "Add":
                bias = next((n for n in following[0].input if n in initializers), None)
        layers.append(
            Layer(node=node.name or f"{node.op_type}_{index}", op_type=node.op_type, weight=weight, bias=bias)
        )
    return layers


def _redraw(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, float(array.std()), size=array.shape).astype(array.dtype)


def randomize_top_layers(model: onnx.ModelProto, depth: int, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` with its last ``depth`` weight layers re-initialized."""
    layers = weight_layers(model)
    if depth > len(layers):
        raise ModelError(f"cannot randomize {depth} layers: the model has {len(layers)} with weights")
    randomized = onnx.ModelProto()
    randomized.CopyFrom(model)
    initializers = {init.name: init for init in randomized.graph.initializer}
    for position in range(len(layers) - depth, len(layers)):
        layer = layers[position]
        # One generator per layer, keyed by its position from the output: the cascade is nested.
        rng = np.random.default_rng([seed, len(layers) - 1 - position])
        for name in (layer.weight, layer.bias):
            if name is None:
                continue
            fresh = _redraw(numpy_helper.to_array(initializers[name]), rng)
            initializers[name].CopyFrom(numpy_helper.from_array(fresh, name))
    return randomized


def default_depths(layer_count: int, steps: int = 8) -> list[int]:
    """0, then about ``steps`` depths spaced geometrically up to all layers (top layers first)."""
    if layer_count == 0:
        return [0]
    spaced = np.unique(np.round(np.geomspace(1, layer_count, num=max(steps, 1))).astype(int))
    return [0] + [int(d) for d in spaced]


@dataclass
class SanityResult:
    model: str
    layers: list[Layer]
    depths: list[int]
    # method -> "base"/"var" -> "spearman"/"ssim" -> [steps] mean over images
    similarity: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    # method -> "base"/"var" -> [steps, H, W] maps of the first image
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    # method -> why it could not explain this model (no LRP rule for an op...): a row, not a crash
    refused: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "cascading_randomization",
            "model": self.model,
            "settings": self.settings,
            "depths": self.depths,
            "layers_output_first": [layer.node for layer in reversed(self.layers)],
            "similarity": self.similarity,
            "refused": self.refused,
        }

    def table_rows(self) -> list[list[str]]:
        rows = []
        for method, kinds in self.similarity.items():
            for index, depth in enumerate(self.depths):
                rows.append(
                    [method, str(depth)]
                    + [
                        f"{kinds[kind][measure][index]:.3f}"
                        for measure in ("spearman", "ssim")
                        for kind in ("base", "var")
                    ]
                )
        rows.extend([method, "-", f"refused: {reason}", "", "", ""] for method, reason in self.refused.items())
        return rows


TABLE_HEADERS = ["method", "layers randomized", "Spearman base", "Spearman VAR", "SSIM base", "SSIM VAR"]


def top_class_maps(explanation: Any) -> tuple[np.ndarray, np.ndarray]:
    """|map| of the first explained class, base and VAR, [N, H, W]."""
    base = metrics.to_host(explanation.attributions)[:, 0]
    var = metrics.to_host(explanation.var)[:, 0]
    has_channels = base.ndim == 4
    layout = getattr(explanation, "layout", "nchw")  # [N, C, H, W] or channels-last [N, H, W, C]
    return metrics.channel_abs_sum(base, has_channels, layout), metrics.channel_abs_sum(var, has_channels, layout)


def similarities(original: np.ndarray, randomized: np.ndarray) -> dict[str, float]:
    """Mean Spearman and SSIM over images; NaN pairs (a constant map) are left out of the mean."""
    rho = [metrics.spearman(a, b) for a, b in zip(original, randomized, strict=True)]
    structural = [
        metrics.ssim(metrics.unit_scale(a), metrics.unit_scale(b)) for a, b in zip(original, randomized, strict=True)
    ]
    return {
        "spearman": float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
        "ssim": float(np.mean(structural)),
    }


def run_sanity(
    model: str | os.PathLike[str],
    inputs: np.ndarray,
    methods: Sequence[str] = METHODS,
    depths: Sequence[int] | None = None,
    *,
    steps: int = 8,
    seed: int = 0,
    temperature: float = defaults.TEMPERATURE,
    tau: float = defaults.TAU,
    var_scale: str = defaults.VAR_SCALE,
    classes: str = defaults.CLASSES,
    batch_size: int = 8,
    backend: str = "auto",
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    explainer_factory: Callable[..., Any] | None = None,
    progress: Progress = _no_progress,
) -> SanityResult:
    """Similarity of each method's maps (base and VAR) to the original as layers are randomized."""
    factory = explainer_factory or Explainer
    original = read_model(model)
    layers, depths = _layers_and_depths(model, original, depths, steps)
    settings = _settings(seed, temperature, tau, classes, inputs)
    result = SanityResult(model=os.fspath(model), layers=layers, depths=depths, settings=settings)
    settings["var_scale"] = var_scale
    options = {**_explainer_options(classes, backend, temperature, tau, batch_size), "var_scale": var_scale}
    total = len(methods) * len(depths)
    # Randomized models are throwaway: their explanation graphs go to a temporary cache rather
    # than the user's, which would otherwise keep one graph per method and depth.
    with tempfile.TemporaryDirectory(prefix="varrt-sanity-") as scratch:
        cascade = _Cascade(factory, original, inputs, seed, scratch, options, method_options)
        for index, method in enumerate(methods):
            try:
                curves, maps = _method_similarity(cascade, method, depths, progress, index * len(depths), total)
            except ModelError as error:  # this method cannot explain this model; a usage error still ends the run
                result.refused[method] = str(error)
                continue
            result.similarity[method] = curves
            result.maps[method] = maps
    return result


def _layers_and_depths(
    model: str | os.PathLike[str], original: onnx.ModelProto, depths: Sequence[int] | None, steps: int
) -> tuple[list[Layer], list[int]]:
    """The model's weight layers and the numbers of them to randomize, checked against each other."""
    layers = weight_layers(original)
    if not layers:
        raise ModelError(f"{model}: no Conv/Gemm/MatMul layer with initializer weights to randomize")
    depths = list(depths) if depths is not None else default_depths(len(layers), steps)
    if any(d < 0 or d > len(layers) for d in depths):
        raise ModelError(f"depths must lie in 0..{len(layers)}, got {depths}")
    return layers, depths


def _settings(seed: int, temperature: float, tau: float, classes: str, inputs: np.ndarray) -> dict[str, Any]:
    """The report's record of how the run was made."""
    return {
        "seed": seed,
        "temperature": temperature,
        "tau": tau,
        "classes": classes,
        "images": int(len(inputs)),
        "map": "sum over channels of |attribution|, top-1 class",
    }


def _explainer_options(classes: str, backend: str, temperature: float, tau: float, batch_size: int) -> dict[str, Any]:
    """The Explainer's keyword arguments shared by every method and depth."""
    return {
        "classes": classes,
        "backend": backend,
        "var": True,
        "temperature": temperature,
        "tau": tau,
        "batch_size": batch_size,
    }


@dataclass
class _Cascade:
    """What every step shares: the Explainer, the original model, the images and where graphs go."""

    factory: Callable[..., Any]
    original: onnx.ModelProto
    inputs: np.ndarray
    seed: int
    scratch: str
    options: dict[str, Any]
    method_options: Mapping[str, Mapping[str, Any]] | None

    def explain(self, method: str, depth: int, class_ids: np.ndarray | None) -> Any:
        """The explanation of the images by the model with its top ``depth`` layers randomized."""
        graph = self.original if depth == 0 else randomize_top_layers(self.original, depth, self.seed)
        extra = dict((self.method_options or {}).get(method, {}))
        explainer = self.factory(graph, method=method, cache_dir=self.scratch, **self.options, **extra)
        return explainer(self.inputs, class_ids=class_ids)


def _method_similarity(
    cascade: _Cascade, method: str, depths: Sequence[int], progress: Progress, done_before: int, total: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, np.ndarray]]:
    """One method's similarity to its original maps at each depth, and its first image's maps."""
    class_ids: np.ndarray | None = None
    reference: tuple[np.ndarray, np.ndarray] | None = None
    curves: dict[str, dict[str, list[float]]] = {kind: {"spearman": [], "ssim": []} for kind in ("base", "var")}
    step_maps: dict[str, list[np.ndarray]] = {"base": [], "var": []}
    for step, depth in enumerate(depths):
        explanation = cascade.explain(method, depth, class_ids)
        if class_ids is None:
            # Fix the original model's classes: every step explains the same classes.
            class_ids = metrics.to_host(explanation.class_ids).astype(np.int64)
        maps = top_class_maps(explanation)
        reference = reference or maps
        for kind, current, first in zip(("base", "var"), maps, reference, strict=True):
            for measure, value in similarities(first, current).items():
                curves[kind][measure].append(value)
            step_maps[kind].append(current[0])
        progress(done_before + step + 1, total, f"{method}, {depth} layers randomized")
    return curves, {kind: np.stack(step_maps[kind]) for kind in ("base", "var")}
