"""var_maps on NumPy arrays against the float64 formula, extremes and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
from var_reference import assert_var_close
from varrt.core.errors import UsageError
from varrt.kernels import var_maps

SHAPES = [  # (N, K, trailing...)
    (2, 5, 3, 8, 8),    # input-space maps [C, H, W]
    (3, 4, 7, 9),       # CAMs [H, W], odd plane
    (1, 2, 13),         # K = 2, one trailing dim
    (4, 10, 2, 3, 5),
    (2, 3),             # no trailing dims: one position per sample
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scale", [1e-3, 1e-1, 1.0, 1e1, 1e3])
def test_matches_float64_reference(shape, scale):
    rng = np.random.default_rng(hash((shape, scale)) % 2**32)
    a = (rng.standard_normal(shape) * scale).astype(np.float32)
    got = var_maps(a)
    assert got.dtype == np.float32
    assert_var_close(got, a)


@pytest.mark.parametrize("k", range(2, 11))
def test_every_k_from_2_to_10(k):
    rng = np.random.default_rng(k)
    # scale 0.2 with T=10 puts M across the whole range, so both mask outcomes occur.
    a = (rng.standard_normal((3, k, 6, 5)) * 0.2).astype(np.float32)
    got = var_maps(a)
    assert_var_close(got, a)
    assert (got == 0).any() and (got != 0).any(), "test input should exercise both mask outcomes"


@pytest.mark.parametrize("temperature, tau", [(1.0, 0.0), (10.0, 0.1), (50.0, 0.01), (10.0, -0.05)])
def test_other_temperatures_and_taus(temperature, tau):
    a = (np.random.default_rng(7).standard_normal((2, 5, 4, 4)) * 0.3).astype(np.float32)
    assert_var_close(var_maps(a, temperature=temperature, tau=tau), a, temperature, tau)


@pytest.mark.parametrize("scale", [1e-2, 1.0, 1e2])
def test_float16_in_float16_out(scale):
    a = (np.random.default_rng(3).standard_normal((2, 6, 3, 5, 5)) * scale).astype(np.float16)
    got = var_maps(a)
    assert got.dtype == np.float16
    # the reference sees the same float16 inputs; the output rounding adds 2^-11 relative.
    assert_var_close(got, a, rtol=1e-3)


def test_float64_is_computed_in_float64():
    a = np.random.default_rng(4).standard_normal((2, 3, 10)) * 0.3
    got = var_maps(a)
    assert got.dtype == np.float64
    want = var_maps(a.astype(np.float32)).astype(np.float64)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-7)


def test_all_zero_maps_give_zeros():
    a = np.zeros((2, 5, 3, 4, 4), np.float32)
    got = var_maps(a)
    assert np.isfinite(got).all() and (got == 0).all()


def test_ties_keep_nothing():
    # equal |A| over all classes: M = 1/K everywhere, so no class is relevant (tau > 0).
    a = np.full((2, 4, 5, 5), 0.7, np.float32)
    a[:, 1] *= -1
    got = var_maps(a)
    assert np.isfinite(got).all() and (got == 0).all()


def test_two_way_tie_above_the_rest():
    a = np.zeros((1, 4, 1), np.float32)
    a[0, 0] = a[0, 2] = 1.0
    got = var_maps(a)[0, :, 0]
    half = np.exp(10.0) / (2 * np.exp(10.0) + 2)  # the two zero classes keep a sliver of mass
    assert got[0] == got[2] == pytest.approx(half, rel=1e-6) and got[1] == got[3] == 0


@pytest.mark.parametrize("dtype, big", [(np.float32, 1e6), (np.float32, 3e37), (np.float16, 6e4)])
def test_huge_values_stay_finite(dtype, big):
    a = np.zeros((2, 5, 8), dtype)
    a[:, 2] = big
    a[:, 3, ::2] = -big
    a[:, 0, 1] = big / 2
    got = var_maps(a)
    assert np.isfinite(got).all()
    if big < 1e7:
        assert_var_close(got, a, rtol=1e-3)


def test_result_does_not_alias_or_modify_input():
    a = (np.random.default_rng(5).standard_normal((2, 3, 4)) * 0.2).astype(np.float32)
    before = a.copy()
    got = var_maps(a)
    assert not np.shares_memory(got, a) and (a == before).all()


def test_empty_batch():
    assert var_maps(np.zeros((0, 5, 4, 4), np.float32)).shape == (0, 5, 4, 4)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 1, 4, 4), np.float32), "K >= 2"),
    (np.zeros((5,), np.float32), "rank 1"),
    (np.float32(3.0), "rank 0"),
    (np.zeros((2, 3, 4), np.int32), "floating-point"),
    (np.zeros((2, 3, 4), bool), "floating-point"),
    (np.zeros((2, 3, 4), np.complex64), "floating-point"),
])
def test_bad_inputs_are_usage_errors(bad, match):
    with pytest.raises(UsageError, match=match) as info:
        var_maps(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0},
                                    {"temperature": float("nan")}, {"tau": float("inf")}])
def test_bad_parameters_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        var_maps(np.zeros((1, 2, 3), np.float32), **kwargs)
