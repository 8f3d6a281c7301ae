"""ONNX Runtime backends: CPU (the embedded default) and the CUDA execution provider.

The CPU backend feeds and returns NumPy arrays. The CUDA backend keeps everything on the GPU:
inputs and outputs are CuPy arrays bound with IOBinding, and ONNX Runtime runs on a CuPy stream
(provider option ``user_compute_stream``) so whatever the caller launches next on that stream (the
VAR kernel) is ordered after the graph without a host synchronization.

onnxruntime and cupy are imported where a session or buffer is made, never at import time: ``import
varrt`` loads no backend runtime (tests/runtime/test_backends.py checks it).

>>> backend = OnnxRuntimeCPUBackend(graph, threads=2)              # doctest: +SKIP
>>> backend.run({"input": images, "class_ids": ids})["attributions"].shape   # doctest: +SKIP
(8, 5, 3, 224, 224)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from varrt.backends.base import (
    Backend,
    CudaStreamBackend,
    TensorSpec,
    cuda_device_unavailable_reason,
    resolve_output_shapes,
)
from varrt.core.errors import ModelError, UsageError, VarrtError

logger = logging.getLogger(__name__)


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share one core's FP units).

    Reads Linux's topology files for the CPUs in our affinity mask; elsewhere, os.cpu_count().
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                (
                    topology.joinpath("physical_package_id").read_text().strip(),
                    topology.joinpath("core_id").read_text().strip(),
                )
            )
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def cpu_session_options(threads: int | None = None) -> Any:
    """SessionOptions for the CPU backend: one intra-op thread per physical core, sequential
    execution (the graph is one long chain; parallel node execution only adds contention) and
    every graph optimization."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT would also log its errors to stderr; varrt raises them as one-line errors instead.
    options.log_severity_level = 4
    return options


class OnnxRuntimeCPUBackend(Backend):
    """ONNX Runtime on the CPU: NumPy in, NumPy out. ``InferenceSession.run`` is thread-safe."""

    name = "onnxruntime-cpu"

    def __init__(self, model: onnx.ModelProto | bytes, *, threads: int | None = None):
        super().__init__(model)
        self.threads = threads
        self._session: Any = None

    def _load_impl(self) -> None:
        import onnxruntime as ort

        try:
            self._session = ort.InferenceSession(
                self._model_bytes,
                sess_options=cpu_session_options(self.threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as error:
            raise VarrtError(
                f"onnxruntime cannot load the explanation graph: {_first_line(error)}"
            ) from error

    def _run_impl(self, feeds: dict[str, Any]) -> dict[str, Any]:
        for name, array in feeds.items():
            if not isinstance(array, np.ndarray):
                raise UsageError(
                    f"{self.name}: input {name!r} must be a NumPy array, got {type(array).__name__}"
                )
        names = [spec.name for spec in self.outputs]
        try:
            values = self._session.run(names, feeds)
        except Exception as error:  # ORT's Fail / InvalidArgument... name the failing node
            raise ModelError(f"onnxruntime failed running the explanation graph: {_first_line(error)}") from error
        return dict(zip(names, values, strict=True))

    def _close_impl(self) -> None:
        self._session = None


# --- CUDA -----------------------------------------------------------------------------------------


def cuda_unavailable_reason() -> str | None:
    """None when the ORT CUDA EP can run here, else a one-line reason naming what is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return cuda_device_unavailable_reason()


@dataclass(frozen=True)
class Binding:
    """One IOBinding call: an input, an output with a known shape (pre-allocated), or an output
    whose shape is only known after the run (bound to the device, ORT allocates it)."""

    name: str
    role: str  # "input", "output", "device_output"
    dtype: np.dtype[Any]
    shape: tuple[int, ...] | None


def binding_plan(
    inputs: list[TensorSpec], outputs: list[TensorSpec], feed_shapes: dict[str, tuple[int, ...]]
) -> list[Binding]:
    """The IOBinding calls for one run, decided from declared specs and feed shapes alone.

    >>> f32 = np.dtype(np.float32)
    >>> x, y = TensorSpec("x", f32, ("N", 3)), TensorSpec("y", f32, ("N", "M"))
    >>> plan = binding_plan([x], [y], {"x": (4, 3)})
    >>> [(b.name, b.role, b.shape) for b in plan]
    [('x', 'input', (4, 3)), ('y', 'device_output', None)]
    """
    plan = [Binding(spec.name, "input", spec.dtype, tuple(feed_shapes[spec.name])) for spec in inputs]
    shapes = resolve_output_shapes(inputs, feed_shapes, outputs)
    for spec in outputs:
        shape = shapes[spec.name]
        plan.append(Binding(spec.name, "output" if shape is not None else "device_output", spec.dtype, shape))
    return plan


def cuda_provider_options(device_id: int, stream_ptr: int) -> dict[str, str]:
    """CUDA EP options that make ORT run on the caller's (CuPy's) stream.

    A non-default stream is required: on the legacy null stream every launch synchronizes.
    """
    if stream_ptr == 0:
        raise UsageError("the CUDA backend needs a non-default CuPy stream (stream.ptr == 0)")
    return {"device_id": str(device_id), "user_compute_stream": str(stream_ptr)}


class OnnxRuntimeCUDABackend(CudaStreamBackend):
    """ONNX Runtime's CUDA EP with IOBinding on CuPy arrays, on one non-default CuPy stream.

    ``run`` accepts CuPy (or NumPy, uploaded on the stream) arrays and returns CuPy arrays that
    are ready in stream order; call ``.get()`` or synchronize the stream before reading on the
    host. Each call makes its own IOBinding, so ``run`` is thread-safe like ORT's own.
    """

    name = "onnxruntime-cuda"
    on_device = True

    def __init__(self, model: onnx.ModelProto | bytes, *, device_id: int = 0, stream: Any = None):
        super().__init__(model)
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise UsageError(f"backend onnxruntime-cuda is not available: {reason}")
        self._use_stream(device_id, stream)
        self._session: Any = None

    def _load_impl(self) -> None:
        import onnxruntime as ort

        providers = [
            ("CUDAExecutionProvider", cuda_provider_options(self.device_id, self.stream.ptr)),
            "CPUExecutionProvider",
        ]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(self._model_bytes, sess_options=options, providers=providers)
        except Exception as error:
            raise VarrtError(
                f"onnxruntime (CUDA) cannot load the explanation graph: {_first_line(error)}"
            ) from error

    def _run_impl(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import cupy

        with cupy.cuda.Device(self.device_id), self.stream:
            # Uploads and copies happen on our stream, so they are ordered before the graph.
            device_feeds = {
                name: cupy.ascontiguousarray(cupy.asarray(array)) for name, array in feeds.items()
            }
            plan = binding_plan(
                self.inputs, self.outputs, {k: tuple(v.shape) for k, v in device_feeds.items()}
            )
            io = self._session.io_binding()
            results: dict[str, Any] = {}
            for binding in plan:
                if binding.role == "input":
                    array = device_feeds[binding.name]
                    io.bind_input(
                        binding.name, "cuda", self.device_id, binding.dtype, list(array.shape), array.data.ptr
                    )
                elif binding.role == "output":
                    assert binding.shape is not None
                    out = cupy.empty(binding.shape, dtype=binding.dtype)
                    results[binding.name] = out
                    io.bind_output(
                        binding.name, "cuda", self.device_id, binding.dtype, list(out.shape), out.data.ptr
                    )
                else:
                    io.bind_output(binding.name, "cuda", self.device_id)
            try:
                self._session.run_with_iobinding(io)
            except Exception as error:
                raise ModelError(
                    f"onnxruntime (CUDA) failed running the explanation graph: {_first_line(error)}"
                ) from error
            device_outputs = [b for b in plan if b.role == "device_output"]
            if device_outputs:
                by_name = dict(zip(self._session_output_names(), io.get_outputs(), strict=True))
                for binding in device_outputs:
                    results[binding.name] = wrap_ort_value(by_name[binding.name], binding.dtype)
        return {spec.name: results[spec.name] for spec in self.outputs}

    def _session_output_names(self) -> list[str]:
        return [output.name for output in self._session.get_outputs()]

    def _close_impl(self) -> None:
        self._session = None


def wrap_ort_value(value: Any, dtype: np.dtype[Any]) -> Any:
    """A CuPy view of an OrtValue on the GPU, without a copy; the view keeps the OrtValue alive."""
    import cupy

    shape = tuple(value.shape())
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    memory = cupy.cuda.UnownedMemory(value.data_ptr(), nbytes, owner=value)
    return cupy.ndarray(shape, dtype=dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
