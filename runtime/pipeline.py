"""One image's way through ``varrt explain``: decode, preprocess, explain, and its results row.

Shared by the single-process command and its Ray actors (``varrt.ray``), so both produce the same
rows from the same code. A failure that belongs to one image (a file Pillow cannot decode, an
image the model's graph refuses) becomes that image's ``Failed`` outcome, an error row in
``results.parquet``, and the other images go on: an audit of a million photos does not die on one
bad file. Batches keep their speed: images are decoded one by one, the good ones explained as a
batch, and only when the Explainer refuses a batch is it retried image by image to find the one
to blame.

>>> import varrt.data
>>> explainer = varrt.Explainer(varrt.data.demo_model_path(), method="gradient")   # doctest: +SKIP
>>> prep = preprocessing_for(varrt.data.demo_model_path())                         # doctest: +SKIP
>>> [o.stem for o in explain_files(varrt.data.demo_images(), ["a", "b", "c", "d"], explainer, prep)]  # doctest: +SKIP
['a', 'b', 'c', 'd']
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from varrt import audit, data
from varrt.core import layout as image_layout
from varrt.core.errors import VarrtError
from varrt.core.options import ExplainOptions
from varrt.explainer import Explainer, Explanation
from varrt.images import Preprocessing, load_pixels, normalize


@dataclass
class Explained:
    """One image's explanation, on the host: what its row, .npz and .png are made of."""

    source: str
    stem: str
    pixels: np.ndarray  # the resized, cropped uint8 photo the maps are drawn on
    class_ids: np.ndarray
    names: list[str]
    probabilities: np.ndarray  # over all classes
    logits: np.ndarray  # over all classes
    top_name: str  # of the most likely class, explained or not
    attributions: np.ndarray
    var: np.ndarray | None
    layout: str = image_layout.NCHW  # the model input's, which input-space maps follow


@dataclass
class Failed:
    """An image that could not be explained, and why (one line)."""

    source: str
    stem: str
    error: str


Outcome = Explained | Failed


def model_labels(model: onnx.ModelProto) -> list[str] | None:
    """ImageNet's class names when the model's metadata says ``varrt.labels=imagenet``, else None."""
    metadata = {p.key: p.value for p in model.metadata_props}
    return list(data.imagenet_labels()) if metadata.get("varrt.labels") == "imagenet" else None


def class_namer(labels: Sequence[str] | None) -> Any:
    """``id -> name``: the label of a class id, ``class N`` past the labels or without them."""

    def name_of(class_id: int) -> str:
        return labels[class_id] if labels is not None and class_id < len(labels) else f"class {class_id}"

    return name_of


def decode(source: str, prep: Preprocessing) -> np.ndarray | Failed:
    """The file's display pixels (uint8, resized and cropped), or why it cannot be read."""
    try:
        return load_pixels(source, prep)
    except VarrtError as error:
        return Failed(source, "", str(error))


def explain_pixels(
    sources: Sequence[str], stems: Sequence[str], pixels: Sequence[np.ndarray | Failed], explainer: Explainer,
    prep: Preprocessing, labels: Sequence[str] | None = None,
) -> list[Outcome]:
    """Outcomes of one batch whose files are already decoded (``pixels``, or their ``Failed``)."""
    outcomes: list[Outcome | None] = [
        Failed(source, stem, p.error) if isinstance(p, Failed) else None
        for source, stem, p in zip(sources, stems, pixels)
    ]
    good = [i for i, outcome in enumerate(outcomes) if outcome is None]
    for i, explained in zip(good, _explain_good(
            [sources[i] for i in good], [stems[i] for i in good], [pixels[i] for i in good],  # type: ignore[misc]
            explainer, prep, class_namer(labels))):
        outcomes[i] = explained
    return [outcome for outcome in outcomes if outcome is not None]


def explain_files(
    sources: Sequence[str | os.PathLike[str]], stems: Sequence[str], explainer: Explainer, prep: Preprocessing,
    labels: Sequence[str] | None = None, batch_size: int | None = None,
) -> Iterator[Outcome]:
    """Each file's outcome, in order, explained in batches of ``batch_size`` (the Explainer's)."""
    size = batch_size or explainer.options.batch_size
    for start in range(0, len(sources), size):
        chunk = [os.fspath(s) for s in sources[start : start + size]]
        pixels = [decode(source, prep) for source in chunk]
        yield from explain_pixels(chunk, stems[start : start + size], pixels, explainer, prep, labels)


def _explain_good(
    sources: list[str], stems: list[str], pixels: list[np.ndarray], explainer: Explainer, prep: Preprocessing,
    name_of: Any,
) -> list[Outcome]:
    if not sources:
        return []
    inputs = np.stack([normalize(p, prep.mean, prep.std, prep.layout) for p in pixels])
    try:
        explanation = explainer(inputs)
    except VarrtError as error:
        if len(sources) == 1:
            return [Failed(sources[0], stems[0], str(error))]
        # The graph refused the batch: find the image(s) to blame, one at a time.
        return [outcome for i in range(len(sources)) for outcome in
                _explain_good(sources[i:i + 1], stems[i:i + 1], pixels[i:i + 1], explainer, prep, name_of)]
    return _unpack(explanation, sources, stems, pixels, name_of)


def _unpack(explanation: Explanation, sources: list[str], stems: list[str], pixels: list[np.ndarray],
            name_of: Any) -> list[Outcome]:
    class_ids = _numpy(explanation.class_ids).astype(np.int64)
    logits = _numpy(explanation.logits)
    probabilities = _numpy(explanation.probabilities)
    attributions = _numpy(explanation.attributions)
    var = _numpy(explanation.var)
    outcomes: list[Outcome] = []
    for i, source in enumerate(sources):
        image = Explained(
            source=source, stem=stems[i], pixels=pixels[i], class_ids=class_ids[i],
            names=[name_of(int(c)) for c in class_ids[i]], probabilities=probabilities[i], logits=logits[i],
            top_name=name_of(int(np.argmax(probabilities[i]))), attributions=attributions[i],
            var=None if var is None else var[i], layout=explanation.layout,
        )
        outcomes.append(image)
    return outcomes


def _numpy(array: Any) -> Any:
    """Host copy of a backend array (CuPy arrays have ``get``); None stays None."""
    if array is None:
        return None
    getter = getattr(array, "get", None)
    return np.asarray(getter() if callable(getter) else array)


def result_row(outcome: Outcome, options: ExplainOptions) -> dict[str, Any]:
    """One row of results.parquet (columns: ``varrt.results.SCHEMA``); an error row for ``Failed``."""
    if isinstance(outcome, Failed):
        return {"path": outcome.source, "stem": outcome.stem, "error": outcome.error}
    predicted = int(np.argmax(outcome.probabilities))
    figures = audit.image_figures(outcome.attributions, outcome.var, options.temperature, options.var_scale,
                                  outcome.layout)
    return {
        "path": outcome.source,
        "stem": outcome.stem,
        "class_ids": outcome.class_ids.tolist(),
        "class_names": outcome.names,
        "probabilities": outcome.probabilities[outcome.class_ids].tolist(),
        "logits": outcome.logits[outcome.class_ids].tolist(),
        "predicted_id": predicted,
        "predicted_name": outcome.top_name,
        "predicted_probability": float(outcome.probabilities[predicted]),
        **figures,
        "error": None,
    }
