"""TensorRT backend: an engine built from the explanation graph, cached on disk, run on CuPy buffers.

The engine gets one optimization profile over the batch N and the class count K, so any batch up
to ``batch_size`` and any K in the class range runs without a rebuild. Engines are cached under
``<cache_dir>/engines/`` keyed by the graph's sha256, the TensorRT version, the GPU (name and
compute capability) and the build options; each file carries a header with its key and the
payload's checksum, so a truncated or foreign file is rebuilt (and reported once).

Everything that needs neither TensorRT nor a GPU (profile shapes, cache keys and file format,
the I/O plan, parser error text) is a plain function here, tested on CPU-only machines.

>>> profile_shapes([TensorSpec("x", np.dtype(np.float32), ("N", 3, 8, 8)),
...                 TensorSpec("class_ids", np.dtype(np.int64), ("N", "K"))], batch_size=4)["class_ids"]
((1, 2), (4, 5), (4, 16))
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from varrt.backends.base import CudaStreamBackend, TensorSpec, cuda_device_unavailable_reason
from varrt.cache import default_cache_dir
from varrt.core.contract import CLASS_IDS
from varrt.core.errors import ModelError, UsageError, VarrtError
from varrt.files import atomic_write_bytes

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]


# --- build options and the optimization profile ---------------------------------------------------


@dataclass(frozen=True)
class EngineOptions:
    """What an engine is built for; part of its cache key.

    ``batch`` and ``classes`` are (min, opt, max) ranges for N and K. ``fp16`` asks for FP16
    kernels: a builder flag on TensorRT 10, on TensorRT 11 (always strongly typed) FP16 must come
    from the graph's own types.
    """

    batch: tuple[int, int, int] = (1, 16, 16)
    classes: tuple[int, int, int] = (2, 5, 16)
    fp16: bool = False
    workspace_bytes: int | None = None

    def __post_init__(self) -> None:
        for label, (low, opt, high) in (("batch", self.batch), ("classes", self.classes)):
            if not 1 <= low <= opt <= high:
                raise UsageError(
                    f"TensorRT {label} range must satisfy 1 <= min <= opt <= max, got {(low, opt, high)}"
                )


def engine_options(
    batch_size: int = 16,
    classes: tuple[int, int, int] = (2, 5, 16),
    fp16: bool = False,
    workspace_bytes: int | None = None,
) -> EngineOptions:
    """Options for batches of up to ``batch_size`` (opt = max = batch_size, min = 1).

    The K range is clipped so opt never exceeds max.
    """
    low, opt, high = classes
    return EngineOptions(
        batch=(1, batch_size, batch_size),
        classes=(low, min(opt, high), high),
        fp16=fp16,
        workspace_bytes=workspace_bytes,
    )


def profile_shapes(
    inputs: Iterable[TensorSpec], batch_size: int = 16, classes: tuple[int, int, int] = (2, 5, 16)
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shapes per input for one optimization profile.

    Axis 0 of every input is the batch N; axis 1 of ``class_ids`` is K. Any other dynamic axis
    (e.g. a model exported with dynamic H and W) cannot be guessed and is an error.
    """
    options = engine_options(batch_size, classes)
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    for spec in inputs:
        low: list[int] = []
        opt: list[int] = []
        high: list[int] = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and dim > 0:
                ranges = (dim, dim, dim)
            elif axis == 0:
                ranges = options.batch
            elif axis == 1 and spec.name == CLASS_IDS:
                ranges = options.classes
            else:
                raise UsageError(
                    f"TensorRT needs fixed sizes: input {spec.name!r} axis {axis} is dynamic "
                    f"({dim or '?'}); export the model with a fixed input shape"
                )
            low.append(ranges[0])
            opt.append(ranges[1])
            high.append(ranges[2])
        shapes[spec.name] = (tuple(low), tuple(opt), tuple(high))
    return shapes


def check_within_profile(
    feed_shapes: dict[str, Shape], profile: dict[str, tuple[Shape, Shape, Shape]]
) -> None:
    """UsageError when a feed's shape lies outside the engine's profile (names the axis and range)."""
    for name, shape in feed_shapes.items():
        low, _, high = profile[name]
        for axis, (size, a, b) in enumerate(zip(shape, low, high, strict=True)):
            if not a <= size <= b:
                what = "K" if name == CLASS_IDS and axis == 1 else "N" if axis == 0 else f"axis {axis}"
                raise UsageError(
                    f"TensorRT engine was built for {what} in [{a}, {b}], "
                    f"input {name!r} has {size}; rebuild with a larger range"
                )


# --- the engine cache ------------------------------------------------------------------------------

_MAGIC = b"VARRTTRT"
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sII")  # magic, format version, header length


def engine_cache_key(
    graph_sha256: str, trt_version: str, gpu_name: str, compute_capability: str, options: EngineOptions
) -> str:
    """sha256 naming an engine: a change in any part needs a different engine."""
    fields = {
        "graph": graph_sha256,
        "tensorrt": trt_version,
        "gpu": gpu_name,
        "compute_capability": compute_capability,
        "options": asdict(options),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def encode_engine_file(key: str, engine: bytes, info: dict[str, Any] | None = None) -> bytes:
    """Bytes of a cache file: fixed header, JSON header (key, size, sha256, info), engine."""
    header = json.dumps(
        {"key": key, "size": len(engine), "sha256": hashlib.sha256(engine).hexdigest(), **(info or {})},
        sort_keys=True,
    ).encode()
    return _HEADER.pack(_MAGIC, _FORMAT_VERSION, len(header)) + header + engine


class EngineCacheError(Exception):
    """A cache file that must not be used (the message says why)."""


def decode_engine_file(data: bytes, key: str) -> bytes:
    """The engine stored in ``data`` for ``key``; EngineCacheError if corrupt or for another key."""
    if len(data) < _HEADER.size:
        raise EngineCacheError("file is truncated")
    magic, version, header_size = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise EngineCacheError("not a varrt engine file")
    if version != _FORMAT_VERSION:
        raise EngineCacheError(f"file format {version}, expected {_FORMAT_VERSION}")
    try:
        header = json.loads(data[_HEADER.size : _HEADER.size + header_size])
    except ValueError as error:
        raise EngineCacheError("header is corrupt") from error
    if header.get("key") != key:
        raise EngineCacheError("stored key differs (built for another graph, GPU or TensorRT)")
    engine = data[_HEADER.size + header_size :]
    if len(engine) != header.get("size") or hashlib.sha256(engine).hexdigest() != header.get("sha256"):
        raise EngineCacheError("engine checksum mismatch")
    return engine


_reported: set[str] = set()
_reported_lock = threading.Lock()


def _report_once(path: Path, reason: str) -> None:
    with _reported_lock:
        if str(path) in _reported:
            return
        _reported.add(str(path))
    message = f"varrt: TensorRT engine cache {path} is unusable ({reason}); rebuilding it"
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def load_cached_engine(path: Path, key: str) -> bytes | None:
    """The cached engine, or None when missing; an unusable file is reported once, then None."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        _report_once(path, str(error))
        return None
    try:
        return decode_engine_file(data, key)
    except EngineCacheError as error:
        _report_once(path, str(error))
        return None


# --- parser errors and the I/O plan ---------------------------------------------------------------


@dataclass(frozen=True)
class ParserError:
    """One ONNX parser error, as read from ``parser.get_error(i)``."""

    description: str
    node: int = -1
    node_name: str = ""
    node_op: str = ""


def format_parser_errors(errors: list[ParserError]) -> str:
    """One line per parser error, naming the node where known."""
    lines = [f"TensorRT cannot parse the explanation graph ({len(errors)} error(s)):"]
    for error in errors:
        where = ""
        if error.node >= 0 or error.node_name:
            where = (
                f"node {error.node_name or error.node}"
                + (f" ({error.node_op})" if error.node_op else "")
                + ": "
            )
        lines.append(
            f"  {where}{error.description.strip().splitlines()[0] if error.description.strip() else '?'}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class IOTensor:
    """An engine I/O tensor: name, whether it is an input, and its NumPy dtype."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]


def io_plan(
    engine_tensors: list[IOTensor], feed_names: Iterable[str], wanted_outputs: Iterable[str]
) -> tuple[list[IOTensor], list[IOTensor]]:
    """(inputs, outputs) to bind by name; errors when the engine and the graph disagree."""
    inputs = [t for t in engine_tensors if t.is_input]
    outputs = [t for t in engine_tensors if not t.is_input]
    feeds = set(feed_names)
    if {t.name for t in inputs} != feeds:
        raise VarrtError(
            f"TensorRT engine inputs {sorted(t.name for t in inputs)} differ from the graph's {sorted(feeds)}"
        )
    missing = set(wanted_outputs) - {t.name for t in outputs}
    if missing:
        raise VarrtError(f"TensorRT engine lacks outputs {sorted(missing)}")
    return inputs, outputs


# --- the backend ------------------------------------------------------------------------------------


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can run here, else a one-line reason naming what is missing."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT not installed"
    return cuda_device_unavailable_reason()


class TensorRTBackend(CudaStreamBackend):
    """TensorRT engine over CuPy buffers and a non-default CuPy stream.

    One execution context serves all calls; it is not re-entrant, so ``run`` holds a lock while
    it sets shapes and addresses and enqueues (the GPU work itself overlaps freely with the host).
    Outputs are CuPy arrays, ready in stream order.
    """

    name = "tensorrt"
    on_device = True

    def __init__(
        self,
        model: onnx.ModelProto | bytes,
        *,
        batch_size: int = 16,
        classes: tuple[int, int, int] = (2, 5, 16),
        fp16: bool = False,
        workspace_bytes: int | None = None,
        cache_dir: str | Path | None = None,
        device_id: int = 0,
        stream: Any = None,
    ):
        super().__init__(model)
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise UsageError(f"backend tensorrt is not available: {reason}")

        self.options = engine_options(batch_size, classes, fp16, workspace_bytes)
        self.profile = profile_shapes(self.inputs, batch_size, self.options.classes)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._use_stream(device_id, stream)
        self._run_lock = threading.Lock()
        self._engine: Any = None
        self._context: Any = None
        self._outputs: list[IOTensor] = []
        self.engine_path: Path | None = None

    def _load_impl(self) -> None:
        import cupy
        import tensorrt as trt

        trt_logger = trt.Logger(trt.Logger.WARNING)
        with cupy.cuda.Device(self.device_id):
            props = cupy.cuda.runtime.getDeviceProperties(self.device_id)
            gpu_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            capability = cupy.cuda.Device(self.device_id).compute_capability
            key = engine_cache_key(
                hashlib.sha256(self._model_bytes).hexdigest(),
                trt.__version__,
                gpu_name,
                capability,
                self.options,
            )
            self.engine_path = self.cache_dir / "engines" / f"{key}.engine"
            serialized = load_cached_engine(self.engine_path, key)
            if serialized is None:
                serialized = self._build(trt, trt_logger)
                atomic_write_bytes(
                    self.engine_path,
                    encode_engine_file(
                        key,
                        serialized,
                        {"tensorrt": trt.__version__, "gpu": gpu_name, "compute_capability": capability},
                    ),
                )
                logger.info("varrt: built TensorRT engine %s", self.engine_path)
            runtime = trt.Runtime(trt_logger)
            self._engine = runtime.deserialize_cuda_engine(serialized)
            if self._engine is None:
                raise VarrtError(f"TensorRT could not deserialize engine {self.engine_path}")
            self._context = self._engine.create_execution_context()
        tensors = []
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            tensors.append(
                IOTensor(
                    name,
                    self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))),
                )
            )
        _, self._outputs = io_plan(tensors, [s.name for s in self.inputs], [s.name for s in self.outputs])
        self._input_dtypes = {t.name: t.dtype for t in tensors if t.is_input}

    def _build(self, trt: Any, trt_logger: Any) -> bytes:
        builder = trt.Builder(trt_logger)
        network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse(self._model_bytes):
            errors = []
            for index in range(parser.num_errors):
                error = parser.get_error(index)
                errors.append(
                    ParserError(
                        error.desc(),
                        error.node(),
                        _call_or(error, "node_name"),
                        _call_or(error, "node_operator"),
                    )
                )
            raise ModelError(format_parser_errors(errors))
        config = builder.create_builder_config()
        if self.options.workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.options.workspace_bytes)
        if self.options.fp16:
            if hasattr(trt.BuilderFlag, "FP16"):
                config.set_flag(trt.BuilderFlag.FP16)
            else:
                logger.info(
                    "varrt: TensorRT %s is strongly typed; FP16 comes from the graph's own types",
                    trt.__version__,
                )
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in self.profile.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelError(
                "TensorRT failed to build an engine from the explanation graph (see its log above)"
            )
        return bytes(serialized)

    def _run_impl(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import cupy

        feed_shapes = {name: tuple(int(s) for s in array.shape) for name, array in feeds.items()}
        check_within_profile(feed_shapes, self.profile)
        with cupy.cuda.Device(self.device_id), self.stream, self._run_lock:
            device_feeds = {
                name: cupy.ascontiguousarray(cupy.asarray(array, dtype=self._input_dtypes[name]))
                for name, array in feeds.items()
            }
            for name, array in device_feeds.items():
                self._context.set_input_shape(name, array.shape)
                self._context.set_tensor_address(name, array.data.ptr)
            results: dict[str, Any] = {}
            for tensor in self._outputs:
                shape = tuple(self._context.get_tensor_shape(tensor.name))
                out = cupy.empty(shape, dtype=tensor.dtype)
                self._context.set_tensor_address(tensor.name, out.data.ptr)
                results[tensor.name] = out
            if not self._context.execute_async_v3(self.stream.ptr):
                raise VarrtError("TensorRT execute_async_v3 failed (see TensorRT's log)")
        return {spec.name: results[spec.name] for spec in self.outputs}

    def _close_impl(self) -> None:
        self._context = None
        self._engine = None


def _call_or(obj: Any, method: str, default: str = "") -> str:
    """Call an accessor that only newer TensorRT versions have."""
    accessor = getattr(obj, method, None)
    try:
        return str(accessor()) if accessor is not None else default
    except Exception:
        return default
