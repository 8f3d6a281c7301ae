"""Which backend runs an explanation: parse the user's (backend, device) choice and build it.

``"auto"`` prefers TensorRT (importable and a GPU present), then ONNX Runtime's CUDA EP
(``CUDAExecutionProvider`` available and CuPy sees a device), then ONNX Runtime on the CPU.
Asking explicitly for a backend that cannot run here is a one-line UsageError naming what is
missing.

>>> choose_backend("onnxruntime", "cpu")
'onnxruntime-cpu'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from varrt.backends.base import Backend
from varrt.backends.onnxruntime import OnnxRuntimeCPUBackend, OnnxRuntimeCUDABackend, cuda_unavailable_reason
from varrt.backends.tensorrt import TensorRTBackend, tensorrt_unavailable_reason
from varrt.core.errors import UsageError

#: Backend names an Explainer reports in ``backend_name``.
BACKENDS = ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")

_ALIASES = {
    "trt": "tensorrt",
    "tensorrt": "tensorrt",
    "cuda": "onnxruntime-cuda",
    "ort-cuda": "onnxruntime-cuda",
    "onnxruntime-cuda": "onnxruntime-cuda",
    "cpu": "onnxruntime-cpu",
    "ort": "onnxruntime",
    "ort-cpu": "onnxruntime-cpu",
    "onnxruntime-cpu": "onnxruntime-cpu",
    "onnxruntime": "onnxruntime",
    "auto": "auto",
}


def parse_device(device: str | int) -> tuple[str, int]:
    """("cpu" | "cuda" | "auto", device id) from "auto", "cpu", "cuda", "cuda:1" or an int id."""
    if isinstance(device, int) and not isinstance(device, bool):
        return "cuda", device
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if kind in ("auto", "cpu") and not index:
        return kind, 0
    if kind in ("cuda", "gpu") and (not index or index.isdigit()):
        return "cuda", int(index or 0)
    raise UsageError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run on this machine, or None when it can."""
    if name == "onnxruntime-cpu":
        return None
    if name == "onnxruntime-cuda":
        return cuda_unavailable_reason()
    return tensorrt_unavailable_reason()


def choose_backend(backend: str = "auto", device: str | int = "auto") -> str:
    """The concrete backend for a (backend, device) request, one of BACKENDS."""
    wanted = _ALIASES.get(str(backend).strip().lower())
    if wanted is None:
        raise UsageError(
            f"unknown backend {backend!r}: use 'auto', 'onnxruntime', 'onnxruntime-cpu', "
            f"'onnxruntime-cuda' or 'tensorrt'"
        )
    kind, _ = parse_device(device)
    if wanted in ("tensorrt", "onnxruntime-cuda") and kind == "cpu":
        raise UsageError(f"backend {wanted} runs on a GPU, but device 'cpu' was asked for")
    if wanted == "onnxruntime-cpu" and kind == "cuda":
        raise UsageError("backend onnxruntime-cpu cannot run on device 'cuda'")
    if wanted in ("auto", "onnxruntime"):
        if kind == "cpu":
            return "onnxruntime-cpu"
        candidates = ["tensorrt", "onnxruntime-cuda"] if wanted == "auto" else ["onnxruntime-cuda"]
        reasons = {name: unavailable_reason(name) for name in candidates}
        for name in candidates:
            if reasons[name] is None:
                return name
        if kind == "cuda":
            missing = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
            raise UsageError(f"device 'cuda' asked for, but no GPU backend can run ({missing})")
        return "onnxruntime-cpu"
    reason = unavailable_reason(wanted)
    if reason is not None:
        raise UsageError(f"backend {wanted} is not available: {reason}")
    return wanted


def create_backend(
    name: str,
    graph: onnx.ModelProto | bytes,
    *,
    device_id: int = 0,
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    stream: Any = None,
    **options: Any,
) -> Backend:
    """Build backend ``name`` (from BACKENDS) for ``graph``; ``options`` go to its constructor
    (``threads`` for the CPU; ``classes``, ``fp16``, ``workspace_bytes`` for TensorRT)."""
    if name == "onnxruntime-cpu":
        return OnnxRuntimeCPUBackend(graph, **options)
    if name == "onnxruntime-cuda":
        return OnnxRuntimeCUDABackend(graph, device_id=device_id, stream=stream, **options)
    if name == "tensorrt":
        return TensorRTBackend(
            graph, batch_size=batch_size, cache_dir=cache_dir, device_id=device_id, stream=stream, **options
        )
    raise UsageError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
