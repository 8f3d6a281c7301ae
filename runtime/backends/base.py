"""The one interface every backend implements, and the checks they all share.

A backend runs one ONNX graph. The base class checks feeds against the graph's declared inputs
(names, dtypes, ranks, fixed sizes) and records how long each run took; subclasses only implement
``_load_impl`` (build the session or engine, called once, lazily) and ``_run_impl``. Heavy modules
(onnxruntime, cupy, tensorrt) are imported inside subclasses, never at import time.

>>> import numpy as np
>>> from varrt.backends.onnxruntime import OnnxRuntimeCPUBackend
>>> with OnnxRuntimeCPUBackend(graph_bytes) as backend:            # doctest: +SKIP
...     outputs = backend.run({"input": np.zeros((1, 3, 8, 8), np.float32)})
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from varrt.core.errors import UsageError

# ONNX element type -> NumPy dtype, for the types an explanation graph carries.
_ONNX_TO_NUMPY: dict[int, np.dtype[Any]] = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
    onnx.TensorProto.INT64: np.dtype(np.int64),
    onnx.TensorProto.INT32: np.dtype(np.int32),
    onnx.TensorProto.INT8: np.dtype(np.int8),
    onnx.TensorProto.UINT8: np.dtype(np.uint8),
    onnx.TensorProto.BOOL: np.dtype(np.bool_),
}

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as declared in the ONNX file."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[Dim, ...]


def tensor_specs(values: Any) -> list[TensorSpec]:
    """TensorSpecs of ``graph.input`` or ``graph.output`` entries (ValueInfoProto)."""
    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        dtype = _ONNX_TO_NUMPY.get(tensor_type.elem_type)
        if dtype is None:
            raise UsageError(
                f"graph tensor {value.name!r} has unsupported element type {tensor_type.elem_type}"
            )
        shape: tuple[Dim, ...] = tuple(
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
            for dim in tensor_type.shape.dim
        )
        specs.append(TensorSpec(value.name, dtype, shape))
    return specs


def resolve_output_shapes(
    inputs: list[TensorSpec], feed_shapes: dict[str, tuple[int, ...]], outputs: list[TensorSpec]
) -> dict[str, tuple[int, ...] | None]:
    """Output shapes implied by the feeds, or None for an output with a size the inputs don't fix.

    Symbolic dims are matched by name: an output dim ``N`` takes the size the feeds give input
    dim ``N``. This is what lets GPU backends allocate outputs before running.

    >>> f32 = np.dtype(np.float32)
    >>> ins = [TensorSpec("x", f32, ("N", 3)), TensorSpec("class_ids", np.dtype(np.int64), ("N", "K"))]
    >>> outs = [TensorSpec("attributions", f32, ("N", "K", 3)), TensorSpec("y", f32, ("M",))]
    >>> resolve_output_shapes(ins, {"x": (2, 3), "class_ids": (2, 5)}, outs)
    {'attributions': (2, 5, 3), 'y': None}
    """
    sizes: dict[str, int] = {}
    for spec in inputs:
        for dim, size in zip(spec.shape, feed_shapes[spec.name], strict=True):
            if isinstance(dim, str):
                sizes.setdefault(dim, size)
    resolved: dict[str, tuple[int, ...] | None] = {}
    for spec in outputs:
        dims = [_known_size(dim, sizes) for dim in spec.shape]
        known = [d for d in dims if d is not None]
        resolved[spec.name] = tuple(known) if spec.shape and len(known) == len(dims) else None
    return resolved


def _known_size(dim: Dim, sizes: dict[str, int]) -> int | None:
    if isinstance(dim, int):
        return dim if dim > 0 else None
    return sizes.get(dim) if dim else None


class Backend:
    """Runs one ONNX graph; subclasses implement ``_load_impl`` and ``_run_impl``.

    ``run`` is safe to call from several threads: loading happens once under a lock, and
    subclasses whose engine is not re-entrant serialize ``_run_impl`` themselves.
    """

    #: Short name reported to users, e.g. "onnxruntime-cpu".
    name = "backend"
    #: True when outputs are device (CuPy) arrays.
    on_device = False

    def __init__(self, model: onnx.ModelProto | bytes):
        self._model_bytes = model if isinstance(model, bytes) else model.SerializeToString()
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
        initializers = {init.name for init in proto.graph.initializer}
        # Old exporters list weights as inputs too; they are not feeds.
        self.inputs = tensor_specs(v for v in proto.graph.input if v.name not in initializers)
        self.outputs = tensor_specs(proto.graph.output)
        self.timings: list[float] = []
        self._load_lock = threading.Lock()
        self._loaded = False
        self._closed = False

    # --- life cycle -------------------------------------------------------------------------------
    def load(self) -> Backend:
        """Build the session or engine now (otherwise the first ``run`` does)."""
        if self._closed:
            raise UsageError(f"{self.name} backend is closed")
        if not self._loaded:
            with self._load_lock:
                if not self._loaded:
                    self._load_impl()
                    self._loaded = True
        return self

    def close(self) -> None:
        """Release the session or engine; the backend cannot run afterwards."""
        with self._load_lock:
            if self._loaded:
                self._close_impl()
            self._loaded = False
            self._closed = True

    def __enter__(self) -> Backend:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running ----------------------------------------------------------------------------------
    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run the graph on ``feeds`` (name -> array) and return every output by name."""
        self.check_feeds(feeds)
        self.load()
        start = time.perf_counter()
        outputs = self._run_impl(feeds)
        self.timings.append(time.perf_counter() - start)
        return outputs

    def check_feeds(self, feeds: dict[str, Any]) -> None:
        """Raise UsageError unless ``feeds`` matches the graph's inputs exactly."""
        expected = {spec.name for spec in self.inputs}
        if set(feeds) != expected:
            missing, extra = sorted(expected - set(feeds)), sorted(set(feeds) - expected)
            raise UsageError(
                f"{self.name}: feeds do not match the graph inputs (missing {missing}, unexpected {extra})"
            )
        for spec in self.inputs:
            array = feeds[spec.name]
            if not hasattr(array, "dtype") or not hasattr(array, "shape"):
                raise UsageError(
                    f"{self.name}: input {spec.name!r} must be an array, got {type(array).__name__}"
                )
            if array.dtype != spec.dtype:
                raise UsageError(f"{self.name}: input {spec.name!r} must be {spec.dtype}, got {array.dtype}")
            if len(array.shape) != len(spec.shape):
                raise UsageError(
                    f"{self.name}: input {spec.name!r} must have {len(spec.shape)} dimensions, "
                    f"got shape {tuple(array.shape)}"
                )
            for axis, (dim, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
                if isinstance(dim, int) and dim > 0 and dim != size:
                    raise UsageError(
                        f"{self.name}: input {spec.name!r} has size {size} on axis {axis}, "
                        f"the graph wants {dim} (shape {_shape_text(spec.shape)})"
                    )

    def stream_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which follow-up kernels run in order after ``run`` (a CUDA stream on GPUs)."""
        return contextlib.nullcontext()

    @property
    def array_module(self) -> Any:
        """``numpy`` or ``cupy``: the module that owns this backend's outputs."""
        return np

    def _load_impl(self) -> None:
        raise NotImplementedError

    def _run_impl(self, feeds: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _close_impl(self) -> None:
        pass


def _shape_text(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) if d not in (None, 0) else "?" for d in shape) + "]"


def cuda_device_unavailable_reason() -> str | None:
    """None when CuPy sees a CUDA device, else a one-line reason (shared by the GPU backends)."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install cupy-cuda12x)"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device is visible"
    except Exception as error:  # CUDARuntimeError when no driver is loaded
        cause = str(error).strip().splitlines()
        return f"no CUDA device is usable ({cause[0] if cause else type(error).__name__})"
    return None


class CudaStreamBackend(Backend):
    """A GPU backend: CuPy arrays on one device, all work ordered on one non-default CuPy stream
    (the VAR kernel is launched on the same stream, so nothing synchronises with the host)."""

    def _use_stream(self, device_id: int, stream: Any) -> None:
        import cupy

        self.device_id = device_id
        with cupy.cuda.Device(device_id):
            self.stream = stream if stream is not None else cupy.cuda.Stream(non_blocking=True)

    @property
    def array_module(self) -> Any:
        import cupy

        return cupy

    def stream_context(self) -> contextlib.AbstractContextManager[Any]:
        return self.stream
