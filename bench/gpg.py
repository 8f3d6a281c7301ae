"""The grid pointing game (Böhle et al., used by the VAR paper): does a map point at its class?

Four images of four distinct classes are shrunk to half the model's input size and tiled into a
2x2 grid. Each cell's class is explained against the grid's four classes at once (explicit
``class_ids`` [G, 4] in cell order), so VAR's distribution runs over exactly those four classes.

Score of one map: the attribution is summed over channels (a pixel's net push on the logit),
its positive part kept, and the score is the share of that positive mass that falls inside the
class's own cell. A uniform map scores 0.25; a map with no positive mass scores 0. CAM methods
give [H, W] maps already and skip the channel sum. Base and VAR maps of the same run are scored
alike, and their difference is bootstrapped per cell (paired).

Images: by default the photos bundled with varrt, labelled by the model's own prediction and
kept when it is confident (``threshold``); or any folder of photos the same way; or an ImageNet
validation folder with true labels, keeping images the model classifies correctly (the paper's
protocol, checked per image at full input size).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime
from varrt import images as varrt_images
from varrt.bench import grids, metrics
from varrt.bench.explainers import fed_ids_explainer
from varrt.core.defaults import TAU, TEMPERATURE, VAR_SCALE
from varrt.core.errors import ModelError, UsageError, VarrtError
from varrt.explainer import Explainer
from varrt.export.methods import METHODS as EXPORT_METHODS

METHODS = EXPORT_METHODS  # every method varrt exports; --methods all
DEFAULT_METHODS = (  # the cheap ones a bare `varrt bench gpg` runs
    "gradient",
    "input_x_gradient",
    "guided_backprop",
    "integrated_gradients",
    "gradcam",
    "guided_gradcam",
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

Progress = Callable[[int, int, str], None]


def _no_progress(done: int, total: int, label: str) -> None:
    del done, total, label


@dataclass
class CellImage:
    """One photo ready to be a grid cell: cell-sized pixels and the class it stands for."""

    path: str
    pixels: np.ndarray  # uint8 [h, w, C] at cell size
    label: int
    confidence: float


@dataclass
class MethodScores:
    """Per-cell pointing scores of one method, base and VAR, in grid-major cell order."""

    method: str
    base: np.ndarray
    var: np.ndarray
    seconds: float = 0.0
    refused: str | None = None  # why the method could not explain this model (then no scores)

    def summary(self, seed: int = 0) -> dict[str, Any]:
        if self.refused is not None:
            return {"refused": self.refused, "seconds": self.seconds}
        return {
            "base": metrics.bootstrap_mean_interval(self.base, seed=seed).as_dict(),
            "var": metrics.bootstrap_mean_interval(self.var, seed=seed).as_dict(),
            "var_minus_base": metrics.bootstrap_mean_interval(self.var - self.base, seed=seed).as_dict(),
            "seconds": self.seconds,
        }


@dataclass
class GpgResult:
    model: str
    images: list[CellImage]
    arrangements: list[tuple[int, int, int, int]]
    scores: list[MethodScores] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    example_maps: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    example_grid: np.ndarray | None = None

    def to_json(self, seed: int = 0) -> dict[str, Any]:
        return {
            "benchmark": "grid_pointing_game",
            "model": self.model,
            "settings": self.settings,
            "grids": len(self.arrangements),
            "cells": 4 * len(self.arrangements),
            "images": [{"path": im.path, "label": im.label, "confidence": im.confidence} for im in self.images],
            "arrangements": [list(a) for a in self.arrangements],
            "methods": {
                s.method: {**s.summary(seed), "scores_base": s.base.tolist(), "scores_var": s.var.tolist()}
                for s in self.scores
            },
        }

    def table_rows(self, seed: int = 0) -> list[list[str]]:
        rows = []
        for s in self.scores:
            summary = s.summary(seed)
            if s.refused is not None:
                rows.append([s.method, f"refused: {s.refused}", "", "", f"{s.seconds:.1f}"])
                continue
            rows.append(
                [s.method]
                + [_format_interval(summary[key]) for key in ("base", "var", "var_minus_base")]
                + [f"{s.seconds:.1f}"]
            )
        return rows


TABLE_HEADERS = ["method", "base GPG [95% CI]", "VAR GPG [95% CI]", "VAR - base [95% CI]", "seconds"]


def _format_interval(interval: dict[str, float]) -> str:
    return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def image_files(folder: str | os.PathLike[str]) -> list[pathlib.Path]:
    """The photos directly inside ``folder``, sorted by name (a UsageError if there are none)."""
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise UsageError(f"--images {root}: not a directory")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"--images {root}: no .jpg/.png files")
    return files


def _preprocessing(model: str | os.PathLike[str]) -> varrt_images.Preprocessing:
    return varrt_images.preprocessing_for(model)


def _cell_prep(prep: varrt_images.Preprocessing) -> varrt_images.Preprocessing:
    return dataclasses.replace(prep, size=grids.cell_size(prep.size))


def predict_probabilities(model: str | os.PathLike[str], inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Softmax probabilities of the plain model (no attribution graph needed to classify).

    A model whose first output already is a distribution (non-negative rows summing to 1) is
    taken as is; anything else is treated as logits.
    """
    session = onnxruntime.InferenceSession(os.fspath(model), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = []
    for start in range(0, len(inputs), batch_size):
        (scores,) = session.run([session.get_outputs()[0].name], {input_name: inputs[start : start + batch_size]})
        outputs.append(np.asarray(scores, dtype=np.float64).reshape(len(inputs[start : start + batch_size]), -1))
    scores = np.concatenate(outputs)
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def load_cells(
    model: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    labels: Sequence[int] | None = None,
    threshold: float = 0.5,
    batch_size: int = 16,
    progress: Progress = _no_progress,
) -> list[CellImage]:
    """Classify each photo at full input size and keep the ones fit to be a cell.

    Without ``labels`` the model's top-1 class is the label and the photo is kept when its
    probability reaches ``threshold``; with true ``labels`` the top-1 class must match (and
    reach ``threshold``). Only the most confident photo of each class is kept when labels come
    from the model, so a folder of near-duplicates cannot fill a grid with one class.
    """
    prep = _preprocessing(model)
    cell_prep = _cell_prep(prep)
    kept: list[CellImage] = []
    for start in range(0, len(paths), batch_size):
        chunk = [os.fspath(p) for p in paths[start : start + batch_size]]
        inputs = np.stack([varrt_images.load_image(p, prep) for p in chunk])
        probabilities = predict_probabilities(model, inputs, batch_size)
        for offset, (path, row) in enumerate(zip(chunk, probabilities, strict=True)):
            top = int(np.argmax(row))
            wanted = top if labels is None else int(labels[start + offset])
            if top == wanted and row[top] >= threshold:
                pixels = varrt_images.load_pixels(path, cell_prep)
                kept.append(CellImage(path=path, pixels=pixels, label=top, confidence=float(row[top])))
        progress(min(start + batch_size, len(paths)), len(paths), "classifying")
    if labels is None:
        best: dict[int, CellImage] = {}
        for cell in kept:
            if cell.label not in best or cell.confidence > best[cell.label].confidence:
                best[cell.label] = cell
        kept = [cell for cell in kept if best[cell.label] is cell]
    return kept


def build_grids(
    cells: Sequence[CellImage], arrangements: Sequence[tuple[int, ...]], prep: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs [G, C, H, W] ([G, H, W, C] for a channels-last ``prep``), class_ids [G, 4] int64 and
    display pixels [G, H, W, C]."""
    pixels = np.stack([grids.assemble_grid([cells[i].pixels for i in a], prep.size) for a in arrangements])
    inputs = np.stack([varrt_images.normalize(p, prep.mean, prep.std, prep.layout) for p in pixels])
    class_ids = np.array([[cells[i].label for i in a] for a in arrangements], dtype=np.int64)
    return inputs, class_ids, pixels


def pointing_scores(attributions: np.ndarray, input_hw: tuple[int, int], has_channels: bool,
                    layout: str = "nchw") -> np.ndarray:
    """Scores [G, 4]: explanation k of grid g scored against cell k of that grid."""
    saliency = metrics.channel_sum(attributions, has_channels=has_channels, layout=layout)  # [G, 4, H, W]
    masks = grids.cell_masks(input_hw)
    return np.stack([metrics.positive_mass_share(saliency[:, k], masks[k]) for k in range(grids.CELLS)], axis=1)


def run_method(
    explainer: Any, inputs: np.ndarray, class_ids: np.ndarray, batch_size: int, progress: Progress, label: str
) -> tuple[np.ndarray, np.ndarray]:
    """Base and VAR attributions for every grid, in batches (one explainer call per batch)."""
    base_parts, var_parts = [], []
    for start in range(0, len(inputs), batch_size):
        explanation = explainer(inputs[start : start + batch_size], class_ids=class_ids[start : start + batch_size])
        base_parts.append(metrics.to_host(explanation.attributions))
        var_parts.append(metrics.to_host(explanation.var))
        progress(min(start + batch_size, len(inputs)), len(inputs), label)
    return np.concatenate(base_parts), np.concatenate(var_parts)


def imagenet_val_listing(folder: str | os.PathLike[str]) -> tuple[list[pathlib.Path], list[int]]:
    """Image paths and true class indices of an ImageNet validation folder (Kaggle layout).

    Needs ``LOC_val_solution.csv`` (ImageId, PredictionString starting with the synset) and
    ``LOC_synset_mapping.txt`` (one synset per line; line number = class index) anywhere under
    ``folder``, and the ``ImageId.JPEG`` files anywhere under it.
    """
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise UsageError(f"--imagenet-val {root}: not a directory")

    def find(name: str) -> pathlib.Path:
        direct = root / name
        if direct.is_file():
            return direct
        found = next(iter(root.rglob(name)), None)
        if found is None:
            raise UsageError(f"--imagenet-val {root}: no {name} under it")
        return found

    synsets = [line.split()[0] for line in find("LOC_synset_mapping.txt").read_text().splitlines() if line.strip()]
    index_of = {synset: i for i, synset in enumerate(synsets)}
    files = {p.stem: p for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")}
    paths, labels = [], []
    with find("LOC_val_solution.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            image_id, synset = row["ImageId"], row["PredictionString"].split()[0]
            if image_id in files and synset in index_of:
                paths.append(files[image_id])
                labels.append(index_of[synset])
    if not paths:
        raise UsageError(f"--imagenet-val {root}: none of the listed validation images were found")
    order = np.argsort([p.name for p in paths], kind="stable")
    return [paths[i] for i in order], [labels[i] for i in order]


def run_gpg(
    model: str | os.PathLike[str],
    cells: Sequence[CellImage],
    arrangements: Sequence[tuple[int, int, int, int]],
    methods: Sequence[str] = METHODS,
    *,
    temperature: float = TEMPERATURE,
    tau: float = TAU,
    var_scale: str = VAR_SCALE,
    batch_size: int = 8,
    backend: str = "auto",
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    explainer_factory: Callable[..., Any] | None = None,
    progress: Progress = _no_progress,
) -> GpgResult:
    """Score every method, base and VAR, on the grids ``arrangements`` make of ``cells``.

    ``method_options`` maps a method to extra ``Explainer`` options (``steps`` for integrated
    gradients, ``layer`` for Grad-CAM...).
    """
    _check_arrangements(cells, arrangements)
    factory = explainer_factory or Explainer
    prep = _preprocessing(model)
    inputs, class_ids, pixels = build_grids(cells, arrangements, prep)
    result = _result(model, cells, arrangements, pixels, temperature, tau, backend, method_options)
    result.settings["var_scale"] = var_scale
    for method in methods:
        started = time.perf_counter()
        try:
            explainer = fed_ids_explainer(factory, model, method, grids.CELLS, backend, temperature, tau, batch_size,
                                          method_options, var_scale)
            base, var = run_method(explainer, inputs, class_ids, batch_size, progress, method)
        except ModelError as error:
            # A method that cannot explain this model (no LRP rule for an op...) is a row, not a crash;
            # a usage error (a bad option, a class rule the model cannot meet) still ends the run.
            empty = np.zeros(0)
            result.scores.append(MethodScores(method, empty, empty, time.perf_counter() - started, str(error)))
            continue
        seconds = time.perf_counter() - started
        result.scores.append(_method_scores(method, base, var, prep.size, seconds, prep.layout))
        result.example_maps[method] = _example_maps(base, var, prep.layout)
    return result


def _check_arrangements(cells: Sequence[CellImage], arrangements: Sequence[tuple[int, int, int, int]]) -> None:
    """Refuse a run with no grid: fewer than 4 distinct classes passed the selection."""
    if not arrangements:
        raise VarrtError(
            "the grid pointing game needs images of at least 4 distinct classes; "
            f"only {len({c.label for c in cells})} passed the selection (add photos with --images, "
            "or lower --threshold)"
        )


def _result(
    model: str | os.PathLike[str],
    cells: Sequence[CellImage],
    arrangements: Sequence[tuple[int, int, int, int]],
    pixels: np.ndarray,
    temperature: float,
    tau: float,
    backend: str,
    method_options: Mapping[str, Mapping[str, Any]] | None,
) -> GpgResult:
    """The result before any method: cells, arrangements, settings and the first grid's pixels."""
    return GpgResult(
        model=os.fspath(model),
        images=list(cells),
        arrangements=[(a, b, c, d) for a, b, c, d in arrangements],
        settings={
            "temperature": temperature,
            "tau": tau,
            "backend": backend,
            "k": 4,
            "method_options": {m: dict(o) for m, o in (method_options or {}).items()},
            "score": "positive part of the channel sum, share inside the class's cell",
        },
        example_grid=pixels[0],
    )



def _method_scores(
    method: str, base: np.ndarray, var: np.ndarray, input_hw: tuple[int, int], seconds: float, layout: str
) -> MethodScores:
    """Per-cell pointing scores of one method's base and VAR attributions, grid-major."""
    has_channels = base.ndim == 5
    return MethodScores(
        method=method,
        base=pointing_scores(base, input_hw, has_channels, layout).ravel(),
        var=pointing_scores(var, input_hw, has_channels, layout).ravel(),
        seconds=seconds,
    )


def _example_maps(base: np.ndarray, var: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """The first grid's channel-summed base and VAR maps, to draw."""
    has_channels = base.ndim == 5
    return (
        metrics.channel_sum(base[0], spatial_ndim=2, has_channels=has_channels, layout=layout),
        metrics.channel_sum(var[0], spatial_ndim=2, has_channels=has_channels, layout=layout),
    )
