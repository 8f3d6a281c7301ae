"""The VAR formula in float64 and a comparison that knows where float32 may legitimately differ.

VAR's mask [M - 1/K > tau] is a step: where the float64 M sits within rounding error of the
threshold, a float32 implementation may fall on either side. Such positions may hold either 0
or the unmasked value; everywhere else the result must match the float64 value closely.
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def var_float64(a: np.ndarray, temperature: float = 10.0, tau: float = 0.01) -> tuple[np.ndarray, ...]:
    """(VAR, softmax M, unmasked A*M, error bound on M) in float64 for attributions ``a``."""
    x = np.asarray(a, dtype=np.float64)
    k = x.shape[1]
    z = temperature * np.abs(x)
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    m = e / e.sum(axis=1, keepdims=True)
    full = x * m
    var = np.where(m - 1.0 / k > tau, full, 0.0)
    # float32 rounds T*|a| - max to ~eps * max; exp turns that absolute error into a relative
    # error of M, plus a few ulps from the sum and division over K terms.
    m_err = 8 * EPS32 * (1.0 + zmax + k) * np.ones_like(m)
    return var, m, full, m_err


def assert_var_close(got: np.ndarray, a: np.ndarray, temperature: float = 10.0, tau: float = 0.01,
                     rtol: float = 1e-5) -> None:
    """Check ``got`` (any float dtype) against the float64 formula applied to ``a``."""
    assert got.shape == a.shape
    assert np.isfinite(got).all(), "VAR produced NaN or Inf"
    var, m, full, m_err = var_float64(a, temperature, tau)
    k = a.shape[1]
    out = got.astype(np.float64)
    near = np.abs(m - 1.0 / k - tau) <= m_err
    tiny = float(np.finfo(got.dtype).tiny) if got.dtype != np.float64 else 0.0
    tol = rtol * np.abs(full) + m_err * np.abs(np.asarray(a, np.float64)) + tiny
    far_ok = np.abs(out - var) <= tol
    near_ok = (np.abs(out) <= tiny) | (np.abs(out - full) <= tol)
    ok = np.where(near, near_ok, far_ok)
    if not ok.all():
        bad = np.argwhere(~ok)[:5]
        detail = [(tuple(i), float(out[tuple(i)]), float(var[tuple(i)]), float(m[tuple(i)])) for i in bad]
        raise AssertionError(f"{(~ok).sum()} of {ok.size} elements differ (index, got, want, M): {detail}")
