"""``var_maps``: VAR on NumPy (CPU) or CuPy (GPU) arrays, dispatched on the array's type."""

from __future__ import annotations

from typing import Any

from varrt.core.defaults import TAU, TEMPERATURE, VAR_SCALE, VAR_SCALES
from varrt.core.errors import UsageError
from varrt.kernels.var_cupy import var_maps_cupy
from varrt.kernels.var_numpy import var_maps_numpy


def is_cupy_array(array: Any) -> bool:
    """True for a cupy.ndarray, decided without importing cupy (it may not be installed)."""
    return type(array).__module__.split(".")[0] == "cupy"



def var_maps(attributions: Any, temperature: float = TEMPERATURE, tau: float = TAU, scale: str = VAR_SCALE) -> Any:
    """VAR map of every class against the other K-1 classes.

    ``attributions`` is [N, K, ...] (class axis 1; trailing dims any, e.g. [C, H, W] maps or
    [H, W] CAMs), float32 or float16 (float64 too on the CPU):

        M = softmax(temperature * |A|, over axis 1)
        VAR_k = A_k * M_k * [M_k - 1/K > tau]

    NumPy arrays run on the CPU; CuPy arrays run the fused CUDA kernel on the current CuPy
    stream and the result stays on the device. The result has the input's shape and dtype;
    float16 is accumulated in float32. Raises ``varrt.core.errors.UsageError`` for K < 2, a rank
    below 2, a non-float dtype, or temperature <= 0.

    ``scale`` picks what the temperature multiplies. "none" (the paper's formula, the default)
    uses the raw |A|, so the result depends on the attribution's units: raw gradients are often
    so small that T * |A| is near 0, M is near uniform and VAR keeps nothing. "max" divides |A| by
    its largest value in each image (over classes and positions) before the softmax; the output
    is still A_k * M_k * mask, in the attribution's own units.

    >>> import numpy as np
    >>> a = np.array([[[3.0, 0.0], [0.0, 0.0]]], dtype=np.float32)   # N=1, K=2, 2 positions
    >>> var_maps(a).tolist()   # position 0: class 0 wins; position 1: a tie keeps nothing
    [[[3.0, 0.0], [0.0, 0.0]]]
    """
    if scale not in VAR_SCALES:
        raise UsageError(f"unknown VAR scale '{scale}' (choose from {', '.join(VAR_SCALES)})")
    if scale == "max" and getattr(attributions, "ndim", 0) >= 2:
        # M depends on A / peak only; A_k * M_k * mask is then linear in A: VAR(A/p) * p.
        peak = abs(attributions).max(axis=tuple(range(1, attributions.ndim)), keepdims=True)
        peak = peak + (peak == 0)  # an all-zero image stays all zero
        return var_maps(attributions / peak, temperature, tau) * peak
    if is_cupy_array(attributions):
        return var_maps_cupy(attributions, temperature, tau)
    return var_maps_numpy(attributions, temperature, tau)
