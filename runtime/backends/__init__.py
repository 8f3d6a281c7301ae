"""Runtime backends: ONNX Runtime (CPU, CUDA) and TensorRT.

Importing this package loads none of them; each backend imports its runtime (onnxruntime,
cupy, tensorrt) when it is built.
"""

from varrt.backends.base import Backend, TensorSpec
from varrt.backends.select import BACKENDS, choose_backend, create_backend

__all__ = ["BACKENDS", "Backend", "TensorSpec", "choose_backend", "create_backend"]
