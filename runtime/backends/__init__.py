"""Runtime backends: ONNX Runtime (CPU, CUDA) and TensorRT."""
