"""``varrt.Explainer``: one object that turns images into class attributions and VAR maps.

It builds the explanation graph once (cached on disk), picks a backend, and on each call runs
the graph in batches, then applies VAR on the backend's own arrays (NumPy on the CPU, CuPy on the
GPU on the backend's stream).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from varrt.backends.base import Backend, tensor_specs
from varrt.backends.select import choose_backend, create_backend, parse_device
from varrt.cache import GraphCache, graph_cache_key
from varrt.core import defaults
from varrt.core import layout as image_layout
from varrt.core.classes import ClassesArg, ClassSpec, check_class_ids, check_spec_fits
from varrt.core.contract import ATTRIBUTIONS, CLASS_IDS, LOGITS, VAR_ATTRIBUTIONS
from varrt.core.errors import ModelError, UsageError
from varrt.core.options import ExplainOptions
from varrt.core.version import __version__
from varrt.export import METHODS, explain_graph
from varrt.export.methods import METHOD_TABLE
from varrt.export.model_loading import read_model
from varrt.images import image_input_shape
from varrt.kernels import var_maps
from varrt.step_chunks import step_chunk_feeds

logger = logging.getLogger(__name__)

# Graph variants: classes chosen inside the graph by a rule (the rule names the variant), or fed
# through the `class_ids` input.
_FED = CLASS_IDS


@dataclass
class Explanation:
    """What an Explainer returns for a batch of N images and K classes each.

    Arrays are NumPy on the CPU backend and CuPy on GPU backends.

    - ``class_ids``: int64 [N, K], the explained classes (rule order: most likely first).
    - ``logits``: float [N, num_classes], pre-softmax; ``probabilities``: their softmax.
    - ``attributions``: float [N, K, C, H, W] (or [N, K, H, W] for Grad-CAM); [N, K, H, W, C] for
      a channels-last model.
    - ``var``: the VAR maps, same shape as ``attributions``; None when ``var=False``.
    - ``layout``: the model input's layout, which input-space maps follow: "nchw" or "nhwc".
    """

    class_ids: Any
    logits: Any
    probabilities: Any
    attributions: Any
    var: Any | None
    method: str = ""
    backend: str = ""
    layout: str = image_layout.NCHW


class Explainer:
    """Explains an ONNX image classifier: attributions for K classes per image, and their VAR maps.

    >>> import numpy as np, varrt
    >>> explainer = varrt.Explainer("model.onnx", classes="top4+min")      # doctest: +SKIP
    >>> explanation = explainer(np.zeros((2, 3, 224, 224), np.float32))    # doctest: +SKIP
    >>> explanation.class_ids.shape, explanation.var.shape                  # doctest: +SKIP
    ((2, 5), (2, 5, 3, 224, 224))

    Arguments:
        model: path to an ONNX classifier, or its ``onnx.ModelProto`` (read once, by
            ``varrt.export.model_loading.read_model``).
        method: one of ``varrt.export.METHODS`` (gradient, guided_backprop, gradcam...).
        classes: ``"top4+min"`` (4 most likely + least likely), ``"topK"``, an int K, or a list of
            class ids explained for every image. Rules run inside the graph on its own logits, so
            choosing classes costs no second forward pass.
        backend: ``"auto"``, ``"onnxruntime"``, ``"onnxruntime-cpu"``, ``"onnxruntime-cuda"``
            or ``"tensorrt"``; ``backend_name`` says which one runs.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        var: also compute VAR maps (``temperature`` T and threshold ``tau`` as in the paper).
        var_scale: ``"none"`` (the paper's formula, default) or ``"max"``: divide |A| by each
            image's largest |A| before the temperature, so VAR does not depend on the
            attribution's units (see ``varrt.kernels.var_maps``).
        batch_size: larger inputs are split into batches of this size (same result). The CPU
            backend runs one image at a time instead, through a graph whose batch axis is fixed
            to 1 (for methods that do not batch steps or samples): ONNX Runtime is faster per image
            that way on CPUs, and there the guided-backprop masks stay in its blocked layout
            (``export/passes/bias_masks.py``). The CPU backend's graphs get the passes tuned
            for it (``target="onnxruntime-cpu"``); the GPU backends get the portable graph.
        cache_dir: where explanation graphs (and TensorRT engines) are cached; default
            ``$VARRT_CACHE_DIR`` or ``~/.cache/varrt``.
        var_in_graph: compute VAR inside the graph (the exporter's ``var=True`` output) instead
            of with ``varrt.kernels.var_maps`` after it; some backends (TensorRT) fuse it better.
        backend_options: passed to the backend (``threads`` for onnxruntime-cpu; ``classes``
            (K min, opt, max), ``fp16``, ``workspace_bytes`` for TensorRT).
        name: what error messages call the model (default: its path, or the graph's name).
        method_options: passed to ``varrt.export.explain_graph`` (``layer``, ``steps``,
            ``baseline``, ``samples``, ``noise``; occlusion's and rise's ``window``, ``stride``,
            ``mask_size``, ``keep``, ``chunk``, ``seed``; ``lrp_rule``, ``epsilon``, ``gamma`` for
            ``lrp``; ``step_batch``). With ``step_batch`` the steps (integrated_gradients) or
            samples (smoothgrad, gradient_shap) run ``step_batch`` at a time and their
            attributions are added (``varrt.step_chunks``), as Captum's
            ``internal_batch_size``: memory grows with batch_size * (step_batch + 1) images.

    Images come in the model's own layout: [N, C, H, W], or [N, H, W, C] for a channels-last model
    (Keras/TensorFlow via tf2onnx, TFLite), detected by ``varrt.core.layout`` and kept in ``layout``;
    ``layout="nchw"|"nhwc"`` overrides the detection. Input-space maps follow it.

    The settings are kept as one ``varrt.core.options.ExplainOptions`` (``options``), the record
    ``varrt explain`` fills from its arguments; ``Explainer.from_options`` takes one directly.

    Invalid input is refused with a one-line ``varrt.core.errors.UsageError`` before anything runs: a
    batch that is not 4-D float or not in the model's layout, an empty batch, sizes the graph does not take, class ids
    out of range, and images containing NaN or Inf (they would turn whole maps into NaN; clean
    them first, e.g. with ``numpy.nan_to_num``).

    A model whose image height and width (or channels) are dynamic gets one graph per image shape,
    specialised by ``explain_graph(input_shape=...)`` and cached on disk per shape; those graphs are
    built on the first call at each shape, so such a model's errors surface there.

    Thread safety: an Explainer may be called from several threads at once. Graphs and backends
    are built once under a lock; ONNX Runtime's ``InferenceSession.run`` is thread-safe, the CUDA
    backend makes one IOBinding per call, and the TensorRT backend serializes use of its single
    execution context. ``Explanation`` objects are plain data and belong to the caller.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | onnx.ModelProto,
        method: str = defaults.METHOD,
        classes: ClassesArg = defaults.CLASSES,
        backend: str = "auto",
        device: str | int = "auto",
        var: bool = True,
        temperature: float = defaults.TEMPERATURE,
        tau: float = defaults.TAU,
        batch_size: int = 16,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        var_in_graph: bool = False,
        var_scale: str = defaults.VAR_SCALE,
        backend_options: dict[str, Any] | None = None,
        name: str | None = None,
        **method_options: Any,
    ):
        options = ExplainOptions(method=method, classes=classes, var=var, temperature=float(temperature),
                                 tau=float(tau), var_scale=var_scale, backend=backend, device=device,
                                 batch_size=batch_size, method_options=method_options)
        if method not in METHODS:
            raise UsageError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
        _check_method_options(method_options)
        self.options = options
        self.var_in_graph = var and var_in_graph
        self._step_chunks = step_chunk_feeds(method, method_options)
        # Where the graph chooses the classes, its first run takes one step only: the later runs go
        # through the class_ids graph, so only that session's memory grows with step_batch.
        self._step_chunks_chosen = step_chunk_feeds(method, method_options, first=1)
        if self._step_chunks and self.var_in_graph:
            raise UsageError("step_batch adds the attributions of several runs, so VAR cannot be computed "
                             "inside the graph: leave var_in_graph off")
        self.backend_options = dict(backend_options or {})
        self._model, self._model_bytes, self.name = _read_model(model, name)
        self._input_dims = image_input_shape(self._model)
        self.layout = image_layout.resolve(self._input_dims, method_options.get("layout"))
        self._cache = GraphCache(cache_dir)
        _, self._device_id = parse_device(device)
        self.backend_name = choose_backend(backend, device)
        # (--mask-batch B runs N x B masked copies per forward: scorecam needs the batch axis free for it)
        self._one_image = (self.backend_name == "onnxruntime-cpu" and _takes_fixed_batch(method, self._model)
                           and method_options.get("mask_batch", 1) == 1)
        # A model whose image sizes are dynamic gets one graph per image shape, built on first use;
        # an explicit input_shape method option fixes them once, like a static model.
        self._dynamic_dims = (None if "input_shape" in method_options
                              else _dynamic_image_dims(self._model, self.layout))
        logger.info("varrt: Explainer runs %s on backend %s", method, self.backend_name)
        self._lock = threading.Lock()
        self._backends: dict[str, Backend] = {}
        self.graph_paths: dict[str, Path] = {}
        self._stream: Any = None
        self.num_classes: int | None = None
        if self._dynamic_dims is not None:
            # No image size yet: graphs are built per image shape on each first call at that shape.
            self.input_name = self._dynamic_dims[0]
            return
        # Build the graph this spec needs now, so errors (bad model, too many classes) surface here.
        main = self._variant_backend(self.spec.rule or _FED)
        self.input_name = next(spec.name for spec in main.inputs if spec.name != CLASS_IDS)

    @classmethod
    def from_options(
        cls,
        model: str | os.PathLike[str] | onnx.ModelProto,
        options: ExplainOptions,
        cache_dir: str | os.PathLike[str] | None = None,
        **settings: Any,
    ) -> Explainer:
        """An Explainer for ``options``; ``settings`` are the other keyword arguments
        (``var_in_graph``, ``backend_options``, ``name``)."""
        return cls(model, options.method, options.classes, options.backend, options.device, options.var,
                   options.temperature, options.tau, options.batch_size, cache_dir, var_scale=options.var_scale,
                   **settings, **options.method_options)

    @property
    def method(self) -> str:
        return self.options.method

    @property
    def spec(self) -> ClassSpec:
        """The parsed class spec."""
        return self.options.spec

    # --- public -----------------------------------------------------------------------------------
    def __call__(self, images: Any, class_ids: Any = None) -> Explanation:
        """Explain a float32 batch [N, C, H, W] ([N, H, W, C] for a channels-last model);
        ``class_ids`` [N, K] overrides the class spec."""
        if class_ids is not None:
            ids: np.ndarray | None = check_class_ids(_to_numpy(class_ids), self.num_classes, var=self.options.var)
            variant = _FED
        elif self.spec.ids is not None:
            ids = None  # tiled per batch below, once N is known
            variant = _FED
        else:
            ids = None
            assert self.spec.rule is not None
            variant = self.spec.rule
        shape = None
        if self._dynamic_dims is not None:
            images, shape = self._image_shape(images)
        backend = self._variant_backend(variant, shape)
        images = self._check_images(images, backend)
        count = images.shape[0]
        if ids is not None and ids.shape[0] != count:
            raise UsageError(f"class_ids has {ids.shape[0]} rows but there are {count} images")
        if ids is None and self.spec.ids is not None:
            ids = np.tile(np.asarray(self.spec.ids, dtype=np.int64), (count, 1))

        parts: dict[str, list[Any]] = {LOGITS: [], ATTRIBUTIONS: [], CLASS_IDS: [], "var": []}
        step = self._run_size(backend)
        for start in range(0, count, step):
            stop = min(start + step, count)
            feeds = {self.input_name: images[start:stop]}
            if ids is not None:
                feeds[CLASS_IDS] = ids[start:stop]
            outputs = self._run(backend, feeds, shape)
            parts[LOGITS].append(outputs[LOGITS])
            parts[ATTRIBUTIONS].append(outputs[ATTRIBUTIONS])
            parts[CLASS_IDS].append(outputs[CLASS_IDS] if ids is None else feeds[CLASS_IDS])
            if self.var_in_graph:
                parts["var"].append(outputs[VAR_ATTRIBUTIONS])
            elif self.options.var:
                parts["var"].append(self._var_maps(backend, outputs[ATTRIBUTIONS]))
        xp = backend.array_module
        with backend.stream_context():
            joined = {name: _concatenate(xp, arrays) for name, arrays in parts.items() if arrays}
            logits = joined[LOGITS]
            return Explanation(
                class_ids=xp.asarray(joined[CLASS_IDS], dtype=np.int64),
                logits=logits,
                probabilities=_softmax(xp, logits),
                attributions=joined[ATTRIBUTIONS],
                var=joined.get("var"),
                method=self.method,
                backend=self.backend_name,
                layout=self.layout,
            )

    def _run(self, backend: Backend, feeds: dict[str, Any], shape: tuple[int, int, int] | None) -> dict[str, Any]:
        """One backend run, or with ``step_batch`` one run per chunk of steps, their attributions added;
        the chunks after the first explain the classes the first chose (through the class_ids graph)."""
        chunks = self._step_chunks if CLASS_IDS in feeds else self._step_chunks_chosen
        if not chunks:
            return backend.run(feeds)
        first = backend.run({**feeds, **chunks[0]})
        if len(chunks) == 1:
            return first
        fed = backend if CLASS_IDS in feeds else self._variant_backend(_FED, shape)
        rest = {self.input_name: feeds[self.input_name], CLASS_IDS: feeds.get(CLASS_IDS, first.get(CLASS_IDS))}
        total = first[ATTRIBUTIONS]
        for chunk in chunks[1:]:
            total = total + fed.run({**rest, **chunk})[ATTRIBUTIONS]
        return {**first, ATTRIBUTIONS: total}

    @property
    def timings(self) -> list[float]:
        """Seconds per backend run (one per batch), over all graph variants."""
        return [t for backend in list(self._backends.values()) for t in backend.timings]

    def close(self) -> None:
        """Release sessions and engines."""
        with self._lock:
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        classes = self.spec.rule or list(self.spec.ids or ())
        return (
            f"Explainer(method={self.method!r}, classes={classes!r}, backend={self.backend_name!r}, "
            f"var={self.options.var})"
        )

    # --- graphs and backends ----------------------------------------------------------------------
    def graph_options(self, variant: str, image_shape: tuple[int, int, int] | None = None) -> dict[str, Any]:
        """The ``explain_graph`` options of a graph variant (a class rule, or "class_ids"); for a model
        whose image sizes are dynamic, also of the image shape (C, H, W), or (H, W, C), it is built for."""
        options = dict(self.options.method_options)
        options["classes"] = None if variant == _FED else variant
        options["var"] = self.var_in_graph
        if self._one_image:
            options.setdefault("batch", 1)
        if self.backend_name == "onnxruntime-cpu":  # GPU backends run the portable graph
            options.setdefault("target", "onnxruntime-cpu")
        if self.var_in_graph:
            options.update(temperature=self.options.temperature, tau=self.options.tau,
                           var_scale=self.options.var_scale)
        if image_shape is not None:
            assert self._dynamic_dims is not None
            batch = options.get("batch", self._dynamic_dims[1])
            options["input_shape"] = (batch, *image_shape)
        return options

    def _variant_backend(self, variant: str, image_shape: tuple[int, int, int] | None = None) -> Backend:
        key = _graph_key(variant, image_shape)
        backend = self._backends.get(key)
        if backend is not None:
            return backend
        with self._lock:
            backend = self._backends.get(key)
            if backend is None:
                graph = self._graph(variant, image_shape)
                if self.num_classes is None:
                    self.num_classes = _num_classes(graph)
                # Before the backend loads: ids beyond the model's classes, fed at run time, fail
                # inside the runtime with a far less readable message (the exporter checks rules).
                check_spec_fits(self.spec, self.num_classes)
                backend = create_backend(
                    self.backend_name,
                    graph,
                    device_id=self._device_id,
                    batch_size=self.options.batch_size,
                    cache_dir=self._cache.directory,
                    stream=self._shared_stream(),
                    **self._backend_options(variant),
                )
                backend.load()
                self._backends[key] = backend
        return backend

    def _graph(self, variant: str, image_shape: tuple[int, int, int] | None = None) -> onnx.ModelProto:
        options = self.graph_options(variant, image_shape)
        key = graph_cache_key(self._model_bytes, self.method, options, __version__)
        path = self.graph_paths[_graph_key(variant, image_shape)] = self._cache.path(key)
        graph = self._cache.load(key)
        if graph is not None:
            logger.info("varrt: using cached explanation graph %s", path)
            return graph
        graph = explain_graph(self._model, self.method, name=self.name, **options)
        self._cache.store(key, graph)
        logger.info("varrt: built explanation graph %s", path)
        return graph

    def _backend_options(self, variant: str) -> dict[str, Any]:
        options = dict(self.backend_options)
        if self.backend_name == "tensorrt" and variant == _FED and self.spec.ids is not None:
            # An explicit id list fixes K; make sure the profile's K range covers it.
            low, opt, high = options.get("classes", (2, 5, 16))
            k = self.spec.k
            options["classes"] = (min(low, k), k, max(high, k))
        return options

    def _shared_stream(self) -> Any:
        # Every variant of one Explainer runs on one stream, so their outputs and VAR kernels
        # are ordered with each other too.
        if self.backend_name == "onnxruntime-cpu":
            return None
        if self._stream is None:
            import cupy  # optional: only GPU backends get here

            with cupy.cuda.Device(self._device_id):
                self._stream = cupy.cuda.Stream(non_blocking=True)
        return self._stream

    # --- helpers ----------------------------------------------------------------------------------
    def _run_size(self, backend: Backend) -> int:
        """Images per backend run: the graph's fixed batch, else ``batch_size``."""
        spec = next(spec for spec in backend.inputs if spec.name == self.input_name)
        fixed = spec.shape[0] if spec.shape else None
        return fixed if isinstance(fixed, int) and fixed > 0 else self.options.batch_size

    def _image_shape(self, images: Any) -> tuple[Any, tuple[int, int, int]]:
        """For a model with dynamic image sizes: the images (as an array) and the shape of one image,
        (C, H, W) or (H, W, C), their graph is built for; the channel count must be the model's where it
        fixes one."""
        if type(images).__module__.split(".")[0] != "cupy":
            images = np.asarray(images)
        self._check_batch_shape(images)
        return images, (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))

    def _check_batch_shape(self, images: Any) -> None:
        if images.ndim != 4:
            what = image_layout.describe(self.layout).split(" ", 1)[1]
            raise UsageError(f"images must be a batch {what}, got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise UsageError("images is an empty batch")
        image_layout.check_batch(tuple(images.shape), self._input_dims, self.layout, self.input_name, self.name)

    def _check_images(self, images: Any, backend: Backend) -> Any:
        on_gpu = type(images).__module__.split(".")[0] == "cupy"
        if on_gpu and not backend.on_device:
            raise UsageError(f"images are a CuPy array, but backend {self.backend_name} takes NumPy arrays")
        if not on_gpu:
            images = np.asarray(images)
        self._check_batch_shape(images)
        if not np.issubdtype(images.dtype, np.floating):
            raise UsageError(f"images must be float32 (preprocessed), got dtype {images.dtype}")
        if images.dtype != np.float32:
            images = images.astype(np.float32)
        # NaN/Inf would flow through the backward pass into every map of the batch (and VAR's
        # softmax turns one NaN into a whole NaN map), so they are refused, not propagated.
        xp = backend.array_module if on_gpu else np
        finite = xp.isfinite(images)
        if not bool(finite.all()):
            bad = int(images.size - int(finite.sum()))
            first = int(xp.argwhere(~finite.reshape(images.shape[0], -1).all(axis=1))[0, 0])
            raise UsageError(f"images contain {bad} NaN or Inf values (first in image {first}); varrt "
                             "refuses non-finite inputs: clean them first (e.g. numpy.nan_to_num)")
        return images

    def _var_maps(self, backend: Backend, attributions: Any) -> Any:
        with backend.stream_context():
            return var_maps(attributions, self.options.temperature, self.options.tau, scale=self.options.var_scale)


def _check_method_options(options: dict[str, Any]) -> None:
    """Unknown keyword arguments would reach explain_graph as a TypeError; name them instead."""
    parameters = inspect.signature(explain_graph).parameters
    # The Explainer sets these itself from its own arguments.
    known = set(parameters) - {"model", "method", "var", "temperature", "tau", "classes", "var_scale", "name"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown method option(s) {', '.join(unknown)}: use {', '.join(sorted(known))}")


def _takes_fixed_batch(method: str, proto: onnx.ModelProto) -> bool:
    """Whether the graph for ``method`` can fix the model's batch axis to 1: the method does not
    batch steps or samples, and the model's batch axis is dynamic or 1 already."""
    spec = METHOD_TABLE.get(method)
    if spec is None or spec.batching:
        return False
    weights = {init.name for init in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in weights]
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    return len(dims) > 0 and (not dims[0].HasField("dim_value") or dims[0].dim_value == 1)


def _dynamic_image_dims(proto: onnx.ModelProto, layout: str) -> tuple[str, int | str, int | None] | None:
    """For a model whose image input (one 4-D float input, in ``layout``) has a dynamic channel count,
    height or width: its name, its batch dimension (a size, or a name that keeps it dynamic) and its
    channel count where fixed; None otherwise (the graph is built as the model is)."""
    weights = {init.name for init in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in weights]
    if len(inputs) != 1 or not inputs[0].type.tensor_type.HasField("shape"):
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or all(dim.HasField("dim_value") and dim.dim_value > 0 for dim in dims[1:]):
        return None
    first = dims[0]
    batch: int | str = first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else (
        first.dim_param or "N")
    channel = dims[image_layout.channel_axis(layout, 4)]
    channels = channel.dim_value if channel.HasField("dim_value") and channel.dim_value > 0 else None
    return inputs[0].name, batch, channels


def _graph_key(variant: str, image_shape: tuple[int, int, int] | None) -> str:
    """Where a graph is kept in ``_backends`` and ``graph_paths``: its variant, and for a model with
    dynamic image sizes the image shape too (``"top4+min@3x224x224"``)."""
    return variant if image_shape is None else f"{variant}@{'x'.join(map(str, image_shape))}"


def _read_model(model: Any, name: str | None) -> tuple[onnx.ModelProto, bytes, str]:
    """The model, parsed once; the bytes that identify it in the cache key; its name in messages."""
    if isinstance(model, onnx.ModelProto):
        proto = model
        name = name or model.graph.name or "model"
    elif isinstance(model, (str, os.PathLike)):
        proto = read_model(model)
        name = name or os.fspath(model)
    else:
        raise UsageError(f"model must be an ONNX file path or an onnx.ModelProto, not {type(model).__name__}")
    return proto, proto.SerializeToString(deterministic=True), name


def _num_classes(graph: onnx.ModelProto) -> int | None:
    logits = next((spec for spec in tensor_specs(graph.graph.output) if spec.name == LOGITS), None)
    if logits is None:
        raise ModelError(f"the explanation graph has no '{LOGITS}' output")
    last = logits.shape[-1] if logits.shape else None
    return last if isinstance(last, int) and last > 0 else None


def _to_numpy(array: Any) -> Any:
    return array.get() if type(array).__module__.split(".")[0] == "cupy" else array


def _concatenate(xp: Any, arrays: list[Any]) -> Any:
    return arrays[0] if len(arrays) == 1 else xp.concatenate(arrays, axis=0)


def _softmax(xp: Any, logits: Any) -> Any:
    shifted = xp.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
