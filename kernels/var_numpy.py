"""VAR in NumPy: the CPU path and the reference every other implementation is tested against."""

from __future__ import annotations

import numpy as np
from varrt.core.defaults import TAU, TEMPERATURE
from varrt.kernels.checks import check_var_args


def var_maps_numpy(attributions: np.ndarray, temperature: float = TEMPERATURE, tau: float = TAU) -> np.ndarray:
    """VAR of every class against the other K-1 classes, on the CPU.

    ``attributions`` is [N, K, ...]; the result has its shape and dtype. float16 is computed in
    float32 (like the CUDA kernel), float64 in float64.

    >>> import numpy as np
    >>> a = np.array([[[1.0], [0.0]]], dtype=np.float32)   # N=1, K=2, one position
    >>> var_maps_numpy(a).round(4).ravel().tolist()
    [1.0, 0.0]
    """
    a = np.asarray(attributions)
    check_var_args(a.shape, a.dtype, temperature, tau)
    work = np.float64 if a.dtype == np.float64 else np.float32
    x = a.astype(work, copy=False)
    k = x.shape[1]
    # Temporaries are reused in place: the inputs are often hundreds of MB (N*K*3*224*224).
    z = np.abs(x)
    z *= work(temperature)
    # max subtraction keeps exp() finite: the largest class gets exp(0) = 1, so the sum is >= 1.
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    keep = (z - work(1.0 / k)) > work(tau)
    z *= x
    z *= keep
    return z.astype(a.dtype, copy=False)
