"""``varrt.ray``: explain a Ray Data dataset of images on a cluster (the ``ray`` extra).

``explain_dataset`` adds one ``map_batches`` stage to a dataset: a pool of actors
(``ray.data.ActorPoolStrategy``), each owning one ``varrt.Explainer`` built once, decodes,
preprocesses and explains its batches with the very code of ``varrt explain``
(``varrt.pipeline``), and yields the rows of ``results.parquet`` (``varrt.results.SCHEMA``: an
image that cannot be read or explained is an error row, not a dead job). Each actor asks Ray for
``cpus_per_actor`` CPUs and runs ONNX Runtime on exactly that many threads, so actors sharing a
machine do not oversubscribe its cores; ``gpus_per_actor`` reserves GPUs for the GPU backends.

The input is a dataset of file paths (a ``path`` column, e.g. ``ray.data.from_items``; an optional
``stem`` column names each image's files) or of decoded images (``ray.data.read_images(...,
include_paths=True)``: ``image`` and ``path``; Ray decodes those files itself, so an undecodable
file fails Ray's read stage rather than becoming an error row: use paths for that).

>>> import ray, varrt.data, varrt.ray
>>> paths = ray.data.from_items([{"path": str(p)} for p in varrt.data.demo_images()])  # doctest: +SKIP
>>> rows = varrt.ray.explain_dataset(paths, varrt.data.demo_model_path(), actors=2, method="gradient")  # doctest: +SKIP
>>> rows.write_parquet("audit/")                                                          # doctest: +SKIP

``import ray`` happens on first use, so plain ``import varrt`` (and ``varrt explain`` without
``--ray``) never loads it. Absolute imports keep this module's ``ray`` the Ray package.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import pyarrow as pa
from PIL import Image
from varrt import pipeline
from varrt.backends.select import choose_backend
from varrt.core.errors import UsageError, VarrtError
from varrt.core.options import ExplainOptions
from varrt.explainer import Explainer
from varrt.export import METHODS
from varrt.export.model_loading import read_model
from varrt.images import Preprocessing, fit, preprocessing_for
from varrt.results import SCHEMA

if TYPE_CHECKING:
    import ray.data

__all__ = ["MAP_COLUMNS", "RaySettings", "explain_dataset"]

#: The tensor columns ``maps=True`` adds: the maps, and what ``varrt explain`` draws and saves
#: with them. Error rows hold empty (size 0) arrays there.
MAP_COLUMNS = ("attributions", "var", "all_logits", "all_probabilities", "pixels")


def _ray() -> Any:
    """The ``ray`` package, or a one-line UsageError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise UsageError(f"Ray is not installed ({error}): pip install 'varrt[ray]'") from None
    return ray


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide ``varrt explain --ray`` runs.

    ``address``: None starts a local Ray in this process; "auto" joins the cluster this machine
    belongs to (``ray start``); "ray://HOST:PORT" or "HOST:PORT" a remote one. ``cpus_per_actor``
    None: the cluster's CPUs shared out among the actors (at most one machine's).
    """

    address: str | None = None
    actors: int = 1
    cpus_per_actor: int | None = None
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        if self.address is not None and not _is_address(self.address):
            raise UsageError(f"--ray ADDRESS must be auto, ray://HOST:PORT or HOST:PORT, got {self.address!r} "
                             "(give --ray after the images, or --ray= for a local Ray)")
        if self.actors < 1:
            raise UsageError(f"--actors must be at least 1, got {self.actors}")
        if self.cpus_per_actor is not None and self.cpus_per_actor < 1:
            raise UsageError(f"--cpus-per-actor must be at least 1, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise UsageError(f"--gpus-per-actor must not be negative, got {self.gpus_per_actor:g}")


def _is_address(text: str) -> bool:
    host, _, port = text.removeprefix("ray://").rpartition(":")
    return text == "auto" or (bool(host) and port.isdigit())


def explain_dataset(
    dataset: ray.data.Dataset,
    model: str | os.PathLike[str] | onnx.ModelProto,
    *,
    actors: int = 1,
    cpus_per_actor: int = 1,
    gpus_per_actor: float = 0.0,
    maps: bool = False,
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    **explainer_options: Any,
) -> ray.data.Dataset:
    """``dataset`` (paths or decoded images) explained by ``actors`` actors: one row per image.

    ``explainer_options`` are ``varrt.Explainer``'s (method, classes, var, temperature, tau,
    var_scale, backend, device, batch_size, method options). The rows have the columns of
    ``results.parquet`` (``varrt.results.SCHEMA``, its types); ``maps=True`` adds the tensor
    columns ``MAP_COLUMNS``. ``labels`` name the classes (default: ImageNet's when the model's
    metadata says so); ``preprocessing`` defaults to ``varrt.images.preprocessing_for(model)``.
    Rows come in the dataset's order when Ray's ``preserve_order`` is set, else as actors finish.
    """
    ray = _ray()
    RaySettings(actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor)  # checks them
    proto = read_model(model)
    options = _options(explainer_options)
    if options.method not in METHODS:  # here, not as a failed actor's traceback
        raise UsageError(f"unknown method {options.method!r}: use one of {', '.join(METHODS)}")
    prep = preprocessing if preprocessing is not None else preprocessing_for(
        proto, layout=options.method_options.get("layout"))
    chosen = pipeline.model_labels(proto) if labels is None else list(labels)
    name = str(model) if not isinstance(model, onnx.ModelProto) else None
    return dataset.map_batches(
        _ExplainActor,
        fn_constructor_kwargs={"model": proto, "name": name, "options": options, "prep": prep, "labels": chosen,
                               "threads": cpus_per_actor, "maps": maps},
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )


def _options(explainer_options: Mapping[str, Any]) -> ExplainOptions:
    """ExplainOptions from Explainer-style keywords (method options go to ``method_options``)."""
    own = {"method", "classes", "var", "temperature", "tau", "var_scale", "backend", "device", "batch_size"}
    return ExplainOptions(**{k: v for k, v in explainer_options.items() if k in own},
                          method_options={k: v for k, v in explainer_options.items() if k not in own})


class _ExplainActor:
    """One actor of the pool: one Explainer, built once, explaining batch after batch."""

    def __init__(self, model: onnx.ModelProto, name: str | None, options: ExplainOptions, prep: Preprocessing,
                 labels: list[str] | None, threads: int, maps: bool):
        # ONNX Runtime would start a thread per core of the machine; the actor owns `threads` of them.
        cpu = choose_backend(options.backend, options.device) == "onnxruntime-cpu"
        self.explainer = Explainer.from_options(model, options, name=name,
                                                backend_options={"threads": threads} if cpu else None)
        self.options, self.prep, self.labels, self.maps = options, prep, labels, maps
        self._ranks: dict[str, int] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        sources = [str(path) for path in batch["path"]]
        stems = [str(s) for s in batch["stem"]] if "stem" in batch else [Path(s).stem for s in sources]
        pixels: list[np.ndarray | pipeline.Failed]
        if "image" in batch:  # decoded by ray.data.read_images
            pixels = [self._fit(image) for image in batch["image"]]
        else:
            pixels = [pipeline.decode(source, self.prep) for source in sources]
        outcomes = pipeline.explain_pixels(sources, stems, pixels, self.explainer, self.prep, self.labels)
        table = pa.Table.from_pylist([pipeline.result_row(o, self.options) for o in outcomes], schema=SCHEMA)
        if not self.maps:
            return table
        for name in MAP_COLUMNS:
            table = table.append_column(name, self._map_column(name, outcomes))
        return table

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """A decoded image resized and cropped like a file (``varrt.images.load_pixels``)."""
        mode = "RGB" if self.prep.channels == 3 else "L"
        return np.asarray(fit(Image.fromarray(np.asarray(image)).convert(mode), self.prep.size, self.prep.resize))

    def _map_column(self, name: str, outcomes: Sequence[pipeline.Outcome]) -> Any:
        """A Ray tensor column: one map per image, an empty array of the same rank on error rows
        (Ray's tensor columns hold no nulls its NumPy batches can read)."""
        from ray.data.extensions import ArrowTensorArray  # a ray module: this code runs in Ray actors

        arrays = [_map(name, o) if isinstance(o, pipeline.Explained) else None for o in outcomes]
        if all(a is not None for a in arrays):
            return ArrowTensorArray.from_numpy(np.stack(arrays))  # type: ignore[arg-type]
        empty = np.zeros((0,) * self._rank(name, outcomes), np.float32)
        holder = np.empty(len(arrays), dtype=object)
        holder[:] = [a if a is not None else empty for a in arrays]
        return ArrowTensorArray.from_numpy(holder)

    def _rank(self, name: str, outcomes: Sequence[pipeline.Outcome]) -> int:
        """The rank of column ``name``'s maps: from an explained image of this batch, or of a black
        image explained once when a batch has none (every image in it failed)."""
        if name not in self._ranks:
            explained = [o for o in outcomes if isinstance(o, pipeline.Explained)]
            if not explained:
                black = np.zeros((*self.prep.size, 3) if self.prep.channels == 3 else self.prep.size, np.uint8)
                explained = [o for o in pipeline.explain_pixels(["black"], ["black"], [black], self.explainer,
                                                                self.prep, self.labels)
                             if isinstance(o, pipeline.Explained)]
            self._ranks.update({column: _map(column, explained[0]).ndim for column in MAP_COLUMNS} if explained
                               else dict.fromkeys(MAP_COLUMNS, 1))
        return self._ranks[name]


def _map(name: str, image: pipeline.Explained) -> np.ndarray:
    """Column ``name`` of ``MAP_COLUMNS`` for an explained image (``var`` empty without VAR)."""
    if name == "attributions":
        return image.attributions.astype(np.float32)
    if name == "var":
        return (image.var if image.var is not None else np.zeros((0,) * image.attributions.ndim)).astype(np.float32)
    if name == "all_logits":
        return image.logits.astype(np.float32)
    return image.probabilities if name == "all_probabilities" else image.pixels


# --- varrt explain --ray --------------------------------------------------------------------------
def explain_paths(
    model: Path, sources: Sequence[str], stems: Sequence[str], options: ExplainOptions, prep: Preprocessing,
    labels: list[str] | None, settings: RaySettings, maps: bool,
) -> tuple[str, Iterator[tuple[dict[str, Any], pipeline.Outcome | None]]]:
    """``varrt explain --ray``: (what runs, then (results row, the image's maps when ``maps``) per
    image, in the order given). Connects to (or starts) Ray first, so its errors come before any
    output; a Ray this call started is shut down when the rows are consumed."""
    ray = _ray()
    started = _connect(ray, settings.address)
    try:
        cpus = settings.cpus_per_actor or _cpus_per_actor(ray, settings.actors)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows in the order of the images
        context.enable_progress_bars = False  # varrt's own bar counts the rows
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and progress lines: the bar says it
        items = [{"path": source, "stem": stem} for source, stem in zip(sources, stems)]
        dataset = explain_dataset(
            ray.data.from_items(items), model, actors=settings.actors, cpus_per_actor=cpus,
            gpus_per_actor=settings.gpus_per_actor, maps=maps, labels=labels, preprocessing=prep,
            method=options.method, classes=options.classes, var=options.var, temperature=options.temperature,
            tau=options.tau, var_scale=options.var_scale, backend=options.backend, device=options.device,
            batch_size=options.batch_size, **options.method_options)
    except BaseException:
        if started:
            ray.shutdown()
        raise
    where = f"Ray at {settings.address}" if settings.address else "a local Ray"
    running = f"{options.backend} on {where}, {settings.actors} actor{'s' if settings.actors > 1 else ''} x {cpus} CPU"
    return running, _rows(ray, dataset, maps, started, prep.layout)


def _rows(ray: Any, dataset: Any, maps: bool, started: bool, layout: str
          ) -> Iterator[tuple[dict[str, Any], Any]]:
    names = SCHEMA.names
    try:
        for row in dataset.iter_rows():
            plain = {name: _plain(row[name]) for name in names}
            yield plain, _explained(row, plain, layout) if maps and plain["error"] is None else None
    except Exception as error:
        if isinstance(error, VarrtError):
            raise
        # Ray wraps an actor's failure (its traceback included); its first line says what broke.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VarrtError(f"the Ray job failed: {first}") from error
    finally:
        if started:
            ray.shutdown()


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _explained(row: Mapping[str, Any], plain: Mapping[str, Any], layout: str) -> pipeline.Explained:
    """An image's explanation rebuilt from its row's map columns (for its .npz and .png); ``layout``:
    the model input's, the preprocessing's as the actors' Explainers resolve it."""
    var = np.asarray(row["var"])
    return pipeline.Explained(
        source=plain["path"], stem=plain["stem"], pixels=np.asarray(row["pixels"]),
        class_ids=np.asarray(plain["class_ids"], np.int64), names=list(plain["class_names"]),
        probabilities=np.asarray(row["all_probabilities"]), logits=np.asarray(row["all_logits"]),
        top_name=plain["predicted_name"], attributions=np.asarray(row["attributions"]),
        var=var if var.size else None, layout=layout,
    )


def _connect(ray: Any, address: str | None) -> bool:
    """Join ``address`` (or start a local Ray) unless this process is connected; True if it started one."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise VarrtError(f"cannot connect to Ray at {address or 'a new local cluster'}: "
                         f"{str(error).strip().splitlines()[0] if str(error).strip() else error}") from None
    return True


def _cpus_per_actor(ray: Any, actors: int) -> int:
    """The cluster's CPUs shared out among ``actors``, but no more than its largest machine has."""
    total = int(ray.cluster_resources().get("CPU", 1))
    largest = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")), default=total)
    return max(1, min(largest, total // actors))
