"""varrt.kernels: the VAR step (NumPy reference, CUDA kernel through CuPy, in-graph ONNX)."""
