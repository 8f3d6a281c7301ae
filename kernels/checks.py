"""Argument checks shared by every VAR implementation, so they all fail the same way."""

from __future__ import annotations

import math

import numpy as np
from varrt.core.errors import UsageError

#: The dtypes the kernels take; maths is done in float32 for both (float64 only on the CPU).
KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def check_var_args(shape: tuple[int, ...], dtype: np.dtype, temperature: float, tau: float) -> None:
    """Raise UsageError unless ``shape``/``dtype`` describe attributions [N, K, ...] with K >= 2."""
    if len(shape) < 2:
        raise UsageError(f"VAR needs attributions shaped [N, K, ...]; got rank {len(shape)} shape {shape}")
    if shape[1] < 2:
        raise UsageError(
            f"VAR compares each class with the others and needs K >= 2 classes on axis 1; got K={shape[1]}"
        )
    if dtype.kind != "f":
        raise UsageError(f"VAR needs floating-point attributions (float32 or float16); got {dtype}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise UsageError(f"VAR temperature must be a finite number > 0; got {temperature}")
    if not math.isfinite(tau):
        raise UsageError(f"VAR tau must be a finite number; got {tau}")
