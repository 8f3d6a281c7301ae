"""Insertion and deletion AUC (Petsiuk et al. 2018, "RISE"): does removing what a map ranks first
destroy the prediction, and does adding it back restore it?

One map per image: the explained class is the model's top-1, explained with K = 5 classes
("top4+min", top-1 first; all classes, most likely first, when the model has fewer than 5), so
VAR's distribution runs over the classes the paper uses. Pixels are ranked by the map:

- ``positive`` (default): sum the signed attribution over channels, keep the positive part - a
  pixel ranks high when its channels together raise the class's logit (the grid pointing game's
  reading). Pixels with no positive evidence are tied.
- ``abs``: sum of |attribution| over channels - how much a pixel matters, either sign (the
  sanity checks' reduction).

CAM methods give [H, W] maps already. VAR maps get the same reduction. Ties - the zeros VAR
leaves, the non-positive pixels - are broken in one seeded random order per image, the same for
base and VAR, so a map that ranks nothing degrades to the random ranking rather than to
raster order.

Curves: in ``steps`` steps the top round(i * H * W / steps) pixels (all channels) are replaced
by the baseline (deletion, starting from the image) or copied from the image into the baseline
(insertion, starting from the baseline). The baseline is 0 after normalisation - the dataset's
mean colour - or a Gaussian blur of the image (``blur``; RISE inserts into a blurred image).
Each point is the softmax probability of the explained class from the plain model (the original
ONNX model in ONNX Runtime, not the explanation graph), all steps of one curve in one batch.
AUC is the trapezoid rule over the fraction of pixels perturbed. Lower deletion AUC and higher
insertion AUC are better. A random ranking of the same pixels is reported as the reference.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime
from varrt.bench import metrics
from varrt.bench.explainers import fed_ids_explainer
from varrt.core import layout as image_layout
from varrt.core.classes import parse_classes, select_classes
from varrt.core.defaults import TAU, TEMPERATURE
from varrt.core.errors import UsageError, VarrtError
from varrt.explainer import Explainer

METHODS = ("gradient", "guided_backprop", "gradcam")
RANKINGS = ("positive", "abs")
BASELINES = ("zero", "blur")
CURVES = ("deletion", "insertion")
KINDS = ("base", "var")
K = 5

Progress = Callable[[int, int, str], None]


def _no_progress(done: int, total: int, label: str) -> None:
    del done, total, label


# --- curves and their area -----------------------------------------------------------------------
def trapezoid_auc(curve: Sequence[float] | np.ndarray, fractions: Sequence[float] | np.ndarray) -> float:
    """Area under ``curve`` sampled at ``fractions`` (0..1, increasing), by the trapezoid rule."""
    y = np.asarray(curve, dtype=np.float64).ravel()
    x = np.asarray(fractions, dtype=np.float64).ravel()
    if y.size < 2 or y.size != x.size:
        raise ValueError(f"need at least two points and one fraction per point, got {y.size} and {x.size}")
    return float(((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0).sum())


def step_counts(pixels: int, steps: int) -> np.ndarray:
    """Pixels perturbed after each of ``steps`` steps, from 0 to all: round(i * pixels / steps)."""
    if steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    return np.rint(np.arange(steps + 1) * (pixels / steps)).astype(np.int64)


def saliency_map(attribution: np.ndarray, ranking: str = "positive") -> np.ndarray:
    """The 2-D map pixels are ranked by, from [C, H, W] (input space) or [H, W] (CAM)."""
    attribution = np.asarray(attribution, dtype=np.float64)
    if ranking == "positive":
        return np.clip(metrics.channel_sum(attribution[None], has_channels=attribution.ndim == 3)[0], 0.0, None)
    if ranking == "abs":
        return metrics.channel_abs_sum(attribution[None], has_channels=attribution.ndim == 3)[0]
    raise UsageError(f"unknown ranking {ranking!r}: use {' or '.join(RANKINGS)}")


def pixel_order(saliency: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first; equal values in the order of ``tiebreak``."""
    return np.lexsort((np.asarray(tiebreak).ravel(), -np.asarray(saliency, dtype=np.float64).ravel()))


def perturbed_inputs(
    image: np.ndarray, baseline: np.ndarray, order: np.ndarray, counts: np.ndarray
) -> dict[str, np.ndarray]:
    """Deletion and insertion inputs [S + 1, C, H, W] for one image and one pixel order."""
    _, height, width = image.shape
    position = np.empty(height * width, dtype=np.int64)
    position[order] = np.arange(order.size)
    # taken[i] marks the pixels among the first counts[i] of the order: [S + 1, 1, H, W].
    taken = (position.reshape(1, height, width) < counts[:, None, None])[:, None]
    return {
        "deletion": np.where(taken, baseline[None], image[None]).astype(np.float32),
        "insertion": np.where(taken, image[None], baseline[None]).astype(np.float32),
    }


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [C, H, W] over H and W (reflected borders)."""
    if sigma <= 0:
        return np.array(image, dtype=np.float32)
    radius = max(1, int(math.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    blurred = np.asarray(image, dtype=np.float64)
    for axis in (1, 2):
        size = blurred.shape[axis]
        padding = [(0, 0)] * 3
        padding[axis] = (radius, radius)
        padded = np.pad(blurred, padding, mode="reflect")
        blurred = sum(
            weight * np.take(padded, np.arange(start, start + size), axis=axis) for start, weight in enumerate(kernel)
        )
    return blurred.astype(np.float32)


def make_baseline(image: np.ndarray, kind: str = "zero", blur_sigma: float = 5.0) -> np.ndarray:
    """The image everything is deleted to / inserted into: zeros (the mean colour) or a blur."""
    if kind == "zero":
        return np.zeros_like(image, dtype=np.float32)
    if kind == "blur":
        return gaussian_blur(image, blur_sigma)
    raise UsageError(f"unknown baseline {kind!r}: use {' or '.join(BASELINES)}")


# --- the plain model ------------------------------------------------------------------------------
class Classifier:
    """The original model in ONNX Runtime: class probabilities of float32 batches.

    Whether the first output already is a distribution is decided once, on the clean images
    (``calibrate``), so a perturbed batch cannot switch a logits model to "probabilities".
    """

    def __init__(self, model: str | os.PathLike[str], batch_size: int = 64, backend: str = "auto"):
        if batch_size < 1:
            raise UsageError(f"--perturb-batch must be at least 1, got {batch_size}")
        providers = ["CPUExecutionProvider"]
        if backend != "onnxruntime-cpu" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(os.fspath(model), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        # The curves perturb [N, C, H, W] images; a channels-last model is fed them transposed.
        dims = self.session.get_inputs()[0].shape
        self.layout = image_layout.detect([d if isinstance(d, int) else None for d in dims])
        self.output_name = self.session.get_outputs()[0].name
        self.batch_size = batch_size
        self.outputs_probabilities: bool | None = None
        self.forwards = 0

    def scores(self, inputs: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = np.ascontiguousarray(image_layout.from_channels_first(inputs[start : start + self.batch_size],
                                                                          self.layout), dtype=np.float32)
            (out,) = self.session.run([self.output_name], {self.input_name: chunk})
            parts.append(np.asarray(out, dtype=np.float64).reshape(len(chunk), -1))
            self.forwards += len(chunk)
        return np.concatenate(parts)

    def calibrate(self, inputs: np.ndarray) -> np.ndarray:
        scores = self.scores(inputs)
        self.outputs_probabilities = bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))
        return self._probabilities(scores)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        if self.outputs_probabilities is None:
            return self.calibrate(inputs)
        return self._probabilities(self.scores(inputs))

    def _probabilities(self, scores: np.ndarray) -> np.ndarray:
        if self.outputs_probabilities:
            return scores
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


def explained_classes(probabilities: np.ndarray, k: int = K) -> np.ndarray:
    """class_ids [N, k']: the top k - 1 classes, most likely first, then the least likely one.

    With fewer than ``k`` classes, all of them, most likely first (VAR needs at least 2).
    """
    probabilities = np.asarray(probabilities)
    classes = probabilities.shape[1]
    if classes < 2:
        raise VarrtError("insertion/deletion with VAR needs a model with at least 2 classes")
    rule = f"top{classes}" if classes <= k else f"top{k - 1}+min"
    return select_classes(probabilities, parse_classes(rule))


def curves_for(
    classifier: Classifier,
    image: np.ndarray,
    baseline: np.ndarray,
    order: np.ndarray,
    counts: np.ndarray,
    class_id: int,
) -> dict[str, np.ndarray]:
    """Probability of ``class_id`` along the deletion and insertion curves, [S + 1] each."""
    inputs = perturbed_inputs(image, baseline, order, counts)
    probabilities = classifier.probabilities(np.concatenate([inputs[c] for c in CURVES]))[:, class_id]
    return dict(zip(CURVES, np.split(probabilities, len(CURVES)), strict=True))


# --- results --------------------------------------------------------------------------------------
@dataclass
class MethodCurves:
    """Curves [N, S + 1] and AUCs [N] of one method, per kind (base / VAR) and curve."""

    method: str
    curves: dict[str, dict[str, np.ndarray]]
    aucs: dict[str, dict[str, np.ndarray]]
    empty_maps: dict[str, int]
    seconds: float = 0.0


@dataclass
class InsertionDeletionResult:
    model: str
    paths: list[str]
    class_ids: np.ndarray
    probabilities: np.ndarray  # of the explained (top-1) class on the clean image
    fractions: np.ndarray
    reference: dict[str, np.ndarray]  # random ranking: curve -> [N, S + 1]
    methods: list[MethodCurves] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def reference_aucs(self) -> dict[str, np.ndarray]:
        return {c: np.array([trapezoid_auc(row, self.fractions) for row in self.reference[c]]) for c in CURVES}

    def to_json(self, seed: int = 0) -> dict[str, Any]:
        def interval(values: np.ndarray) -> dict[str, float | int]:
            return metrics.bootstrap_mean_interval(values, seed=seed).as_dict()

        reference = self.reference_aucs()
        methods: dict[str, Any] = {}
        for m in self.methods:
            entry: dict[str, Any] = {"seconds": m.seconds, "empty_maps": m.empty_maps}
            for curve in CURVES:
                entry[curve] = {
                    "base": interval(m.aucs["base"][curve]),
                    "var": interval(m.aucs["var"][curve]),
                    "var_minus_base": interval(m.aucs["var"][curve] - m.aucs["base"][curve]),
                    "auc_base": m.aucs["base"][curve].tolist(),
                    "auc_var": m.aucs["var"][curve].tolist(),
                    "mean_curve_base": m.curves["base"][curve].mean(axis=0).tolist(),
                    "mean_curve_var": m.curves["var"][curve].mean(axis=0).tolist(),
                    "curves_base": m.curves["base"][curve].tolist(),
                    "curves_var": m.curves["var"][curve].tolist(),
                }
            methods[m.method] = entry
        return {
            "benchmark": "insertion_deletion",
            "model": self.model,
            "settings": self.settings,
            "images": [
                {"path": path, "class_ids": ids.tolist(), "probability": float(p)}
                for path, ids, p in zip(self.paths, self.class_ids, self.probabilities, strict=True)
            ],
            "fractions": self.fractions.tolist(),
            "reference": {
                "ranking": "random",
                **{
                    curve: {
                        "auc": interval(reference[curve]),
                        "aucs": reference[curve].tolist(),
                        "mean_curve": self.reference[curve].mean(axis=0).tolist(),
                    }
                    for curve in CURVES
                },
            },
            "methods": methods,
        }

    def table_rows(self, seed: int = 0) -> list[list[str]]:
        report = self.to_json(seed)
        rows = [["random ranking", "-", *(_format_interval(report["reference"][c]["auc"]) for c in CURVES), "-"]]
        for method, entry in report["methods"].items():
            for kind, label in (("base", "base"), ("var", "VAR"), ("var_minus_base", "VAR - base")):
                seconds = f"{entry['seconds']:.1f}" if kind == "base" else ""
                rows.append([method, label, *(_format_interval(entry[c][kind]) for c in CURVES), seconds])
        return rows


TABLE_HEADERS = [
    "method",
    "map",
    "deletion AUC (lower better) [95% CI]",
    "insertion AUC (higher better) [95% CI]",
    "seconds",
]


def _format_interval(interval: Mapping[str, float]) -> str:
    return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


# --- the benchmark --------------------------------------------------------------------------------
@dataclass
class _Run:
    """What every curve of one run shares: the plain model, the images and how they are perturbed."""

    classifier: Classifier
    inputs: np.ndarray
    clean: np.ndarray  # class probabilities of the clean images
    class_ids: np.ndarray
    baselines: np.ndarray
    tiebreaks: np.ndarray  # one tie-break order per image, shared by every map and the reference
    counts: np.ndarray
    fractions: np.ndarray

    @property
    def top(self) -> np.ndarray:
        return self.class_ids[:, 0]

    def curves(self, n: int, order: np.ndarray) -> dict[str, np.ndarray]:
        return curves_for(self.classifier, self.inputs[n], self.baselines[n], order, self.counts, self.top[n])


def run_insertion_deletion(
    model: str | os.PathLike[str],
    inputs: np.ndarray,
    methods: Sequence[str] = METHODS,
    *,
    paths: Sequence[str | os.PathLike[str]] | None = None,
    steps: int = 32,
    ranking: str = "positive",
    baseline: str = "zero",
    blur_sigma: float = 5.0,
    seed: int = 0,
    temperature: float = TEMPERATURE,
    tau: float = TAU,
    batch_size: int = 8,
    perturb_batch: int = 66,
    backend: str = "auto",
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    explainer_factory: Callable[..., Any] | None = None,
    progress: Progress = _no_progress,
) -> InsertionDeletionResult:
    """Insertion and deletion curves of every method's top-1 map, base and VAR, on ``inputs``.

    ``inputs`` are preprocessed float32 [N, C, H, W] ([N, H, W, C] for a channels-last model, as
    ``varrt.images`` preprocesses for it); ``method_options`` maps a method to extra
    ``Explainer`` options (``steps`` for integrated gradients, ``layer`` for Grad-CAM...).
    """
    inputs = _checked_inputs(inputs, ranking)
    run = _prepare(model, inputs, steps, baseline, blur_sigma, seed, perturb_batch, backend)
    reference = _reference_curves(run)
    settings = _settings(run, steps, ranking, baseline, blur_sigma, seed, temperature, tau, backend, method_options)
    result = _result(model, paths, run, reference, settings)
    factory = explainer_factory or Explainer
    total = len(methods) * len(inputs)
    for index, method in enumerate(methods):
        explainer = fed_ids_explainer(factory, model, method, run.class_ids.shape[1], backend, temperature, tau,
                                      batch_size, method_options)
        done = functools.partial(_report_image, progress, index * len(inputs), total, method)
        result.methods.append(_method_curves(explainer, method, run, ranking, batch_size, done))
    return result


def _checked_inputs(inputs: np.ndarray, ranking: str) -> np.ndarray:
    """The images as float32 [N, C, H, W], after checking them and the ranking."""
    if ranking not in RANKINGS:
        raise UsageError(f"unknown ranking {ranking!r}: use {' or '.join(RANKINGS)}")
    inputs = np.asarray(inputs, dtype=np.float32)
    if inputs.ndim != 4 or len(inputs) == 0:
        raise UsageError(f"expected a non-empty batch [N, C, H, W], got shape {inputs.shape}")
    return inputs


def _prepare(
    model: str | os.PathLike[str],
    inputs: np.ndarray,
    steps: int,
    baseline: str,
    blur_sigma: float,
    seed: int,
    perturb_batch: int,
    backend: str,
) -> _Run:
    """The plain model, the explained classes, baselines, tie-breaks and pixel counts of one run."""
    classifier = Classifier(model, perturb_batch, backend)
    inputs = np.ascontiguousarray(image_layout.to_channels_first(inputs, classifier.layout))
    count, _, height, width = inputs.shape
    counts = step_counts(height * width, steps)
    clean = classifier.calibrate(inputs)
    class_ids = explained_classes(clean)
    baselines = np.stack([make_baseline(image, baseline, blur_sigma) for image in inputs])
    rng = np.random.default_rng(seed)
    tiebreaks = np.stack([rng.permutation(height * width) for _ in range(count)])
    fractions = counts / float(height * width)
    return _Run(classifier, inputs, clean, class_ids, baselines, tiebreaks, counts, fractions)


def _reference_curves(run: _Run) -> dict[str, np.ndarray]:
    """Curves [N, S + 1] of the random ranking (the tie-break order alone), per curve."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in CURVES}
    for n in range(len(run.inputs)):
        random_order = np.argsort(run.tiebreaks[n], kind="stable")
        for curve, values in run.curves(n, random_order).items():
            parts[curve].append(values)
    return {c: np.stack(v) for c, v in parts.items()}


def _settings(
    run: _Run,
    steps: int,
    ranking: str,
    baseline: str,
    blur_sigma: float,
    seed: int,
    temperature: float,
    tau: float,
    backend: str,
    method_options: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """The report's record of how the run was made."""
    k = int(run.class_ids.shape[1])
    return {
        "steps": steps,
        "ranking": ranking,
        "baseline": baseline,
        "blur_sigma": blur_sigma if baseline == "blur" else None,
        "seed": seed,
        "temperature": temperature,
        "tau": tau,
        "backend": backend,
        "k": k,
        "classes": "top4+min" if k == K and run.clean.shape[1] > K else "all, most likely first",
        "explained_class": "top-1 (first of class_ids)",
        "score": "softmax probability of the explained class",
        "auc": "trapezoid rule over the fraction of pixels perturbed",
        "method_options": {m: dict(o) for m, o in (method_options or {}).items()},
    }


def _result(
    model: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]] | None,
    run: _Run,
    reference: dict[str, np.ndarray],
    settings: dict[str, Any],
) -> InsertionDeletionResult:
    """The result before any method: images, explained classes, fractions and the reference."""
    count = len(run.inputs)
    return InsertionDeletionResult(
        model=os.fspath(model),
        paths=[os.fspath(p) for p in paths] if paths is not None else [f"image {n}" for n in range(count)],
        class_ids=run.class_ids,
        probabilities=run.clean[np.arange(count), run.top],
        fractions=run.fractions,
        reference=reference,
        settings=settings,
    )



def _channels_first_maps(maps: np.ndarray, layout: str) -> np.ndarray:
    """Input-space maps [N, H, W, C] of a channels-last model as [N, C, H, W]; CAMs [N, H, W] as they are."""
    return image_layout.to_channels_first(maps, layout) if maps.ndim == 4 else maps


def _report_image(progress: Progress, done_before: int, total: int, method: str, n: int) -> None:
    """Progress after image ``n`` (0-based) of ``method``, counting the methods before it."""
    progress(done_before + n + 1, total, method)


def _method_curves(
    explainer: Any, method: str, run: _Run, ranking: str, batch_size: int, image_done: Callable[[int], None]
) -> MethodCurves:
    """One method's base and VAR curves, their AUCs, its empty maps and the seconds it took."""
    started = time.perf_counter()
    curves, empty = _ranked_curves(explainer, run, ranking, batch_size, image_done)
    stacked = {kind: {c: np.stack(curves[kind][c]) for c in CURVES} for kind in KINDS}
    return MethodCurves(
        method=method,
        curves=stacked,
        aucs={
            kind: {c: np.array([trapezoid_auc(row, run.fractions) for row in stacked[kind][c]]) for c in CURVES}
            for kind in KINDS
        },
        empty_maps=empty,
        seconds=time.perf_counter() - started,
    )


def _ranked_curves(
    explainer: Any, run: _Run, ranking: str, batch_size: int, image_done: Callable[[int], None]
) -> tuple[dict[str, dict[str, list[np.ndarray]]], dict[str, int]]:
    """Per kind and curve, each image's curve along its map's ranking; per kind, the empty maps."""
    curves: dict[str, dict[str, list[np.ndarray]]] = {kind: {c: [] for c in CURVES} for kind in KINDS}
    empty = dict.fromkeys(KINDS, 0)
    count = len(run.inputs)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        layout = run.classifier.layout
        images = np.ascontiguousarray(image_layout.from_channels_first(run.inputs[start:stop], layout))
        explanation = explainer(images, class_ids=run.class_ids[start:stop])
        maps = {  # top-1 maps, [N, C, H, W] or [N, H, W]
            kind: _channels_first_maps(metrics.to_host(array)[:, 0], layout)
            for kind, array in (("base", explanation.attributions), ("var", explanation.var))
        }
        for offset, n in enumerate(range(start, stop)):
            for kind in KINDS:
                saliency = saliency_map(maps[kind][offset], ranking)
                empty[kind] += int(not np.any(saliency > 0))
                order = pixel_order(saliency, run.tiebreaks[n])
                along = run.curves(n, order)
                for curve in CURVES:
                    curves[kind][curve].append(along[curve])
            image_done(n)
    return curves, empty
