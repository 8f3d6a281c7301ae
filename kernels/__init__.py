"""varrt.kernels: the VAR step (NumPy reference, CUDA kernel through CuPy, in-graph ONNX)."""

from varrt.kernels.maps import var_maps
from varrt.kernels.var_graph import append_var

__all__ = ["append_var", "var_maps"]
