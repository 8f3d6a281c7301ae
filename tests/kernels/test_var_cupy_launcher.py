"""The CuPy launcher's plumbing, checked without a GPU against a stand-in `cupy` module.

The stand-in records each launch and emulates the kernel with the NumPy path, so these tests
check what the real GPU tests cannot check here: the entry point chosen for each dtype, K,
plane size and alignment, the argument types and values, and the grid size.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from varrt.core.errors import UsageError
from varrt.kernels import var_cupy, var_maps
from varrt.kernels.var_numpy import var_maps_numpy


class FakeArray:
    """Just enough of cupy.ndarray: a NumPy array behind it."""

    __module__ = "cupy"

    def __init__(self, a: np.ndarray):
        self.a = a
        self.shape, self.dtype, self.size = a.shape, a.dtype, a.size
        self.data = types.SimpleNamespace(ptr=a.__array_interface__["data"][0])
        self.flags = types.SimpleNamespace(c_contiguous=a.flags.c_contiguous)


class FakeDriverError(Exception):
    pass


def make_fake_cupy(launches: list, modules: list) -> types.ModuleType:
    def kernel_for(name):
        def launch(grid, block, args):
            x, y, groups, k, plane, temperature, tau = args
            launches.append((name, grid, block, args))
            assert [type(v) for v in args[2:]] == [np.int64, np.int32, np.int64, np.float32, np.float32]
            vec = 4 if name.endswith("_v4") else 1
            assert int(groups) * vec == x.shape[0] * int(plane) and int(k) == x.shape[1]
            y.a[...] = var_maps_numpy(x.a, float(temperature), float(tau))
        return launch

    class RawModule:
        def __init__(self, path=None, code=None, options=()):
            modules.append("fatbin" if path else "nvrtc")
            if path and path.endswith("bad.fatbin"):
                raise FakeDriverError("CUDA_ERROR_NO_BINARY_FOR_GPU")
            assert code is None or "varrt_var_f32_loop" in code

        def get_function(self, name):
            return kernel_for(name)

    cp = types.ModuleType("cupy")
    cp.RawModule = RawModule
    cp.float32, cp.float16 = np.float32, np.float16
    cp.ascontiguousarray = lambda x: x if x.flags.c_contiguous else FakeArray(np.ascontiguousarray(x.a))
    cp.empty_like = lambda x: FakeArray(np.full_like(x.a, np.nan))
    cp.cuda = types.SimpleNamespace(
        Device=lambda: types.SimpleNamespace(id=0),
        driver=types.SimpleNamespace(CUDADriverError=FakeDriverError),
        runtime=types.SimpleNamespace(cudaDevAttrMultiProcessorCount=16,
                                      deviceGetAttribute=lambda attr, dev: 132))
    return cp


@pytest.fixture
def fake(monkeypatch, tmp_path):
    launches: list = []
    modules: list = []
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy(launches, modules))
    monkeypatch.setattr(var_cupy, "_modules", {})
    monkeypatch.setattr(var_cupy, "_kernels", {})
    monkeypatch.setattr(var_cupy, "FATBIN", tmp_path / "absent.fatbin")
    monkeypatch.delenv(var_cupy.FATBIN_ENV, raising=False)
    return types.SimpleNamespace(launches=launches, modules=modules, tmp=tmp_path)


@pytest.mark.parametrize("shape, dtype, name", [
    ((2, 5, 3, 8, 8), np.float32, "varrt_var_f32_k8_v4"),
    ((2, 5, 3, 7, 7), np.float32, "varrt_var_f32_k8_v1"),
    ((2, 16, 4, 4), np.float16, "varrt_var_f16_k16_v4"),
    ((2, 17, 4, 4), np.float32, "varrt_var_f32_k32_v1"),
    ((2, 64, 5), np.float16, "varrt_var_f16_k64_v1"),
    ((2, 65, 8), np.float32, "varrt_var_f32_loop"),
    ((3, 4), np.float32, "varrt_var_f32_k8_v1"),
])
def test_launch(fake, shape, dtype, name):
    a = (np.random.default_rng(0).standard_normal(shape) * 0.2).astype(dtype)
    y = var_maps(FakeArray(a))   # dispatched to the CuPy path by the array's type
    assert isinstance(y, FakeArray) and y.dtype == dtype
    np.testing.assert_array_equal(y.a, var_maps_numpy(a))
    (got_name, grid, block, args), = fake.launches
    assert got_name == name and block == (var_cupy.THREADS,)
    groups = int(args[2])
    assert grid[0] == max(1, min(-(-groups // var_cupy.THREADS), 132 * var_cupy.BLOCKS_PER_SM))
    assert fake.modules == ["nvrtc"]


def test_misaligned_output_takes_the_scalar_path(fake):
    a = np.ones((2, 5, 4, 4), np.float32)
    buffer = np.full(a.size + 1, np.nan, np.float32)
    out = FakeArray(buffer[1:].reshape(a.shape))
    var_cupy.var_maps_cupy(FakeArray(a), out=out)
    assert fake.launches[0][0] == "varrt_var_f32_k8_v1"
    assert not np.isnan(buffer[1:]).any()


def test_module_is_loaded_once_per_device(fake):
    for _ in range(3):
        var_maps(FakeArray(np.ones((1, 3, 4), np.float32)))
    assert fake.modules == ["nvrtc"] and len(fake.launches) == 3


def test_bad_packaged_fatbin_falls_back_to_nvrtc(fake, monkeypatch):
    bad = fake.tmp / "bad.fatbin"
    bad.write_bytes(b"junk")
    monkeypatch.setattr(var_cupy, "FATBIN", bad)
    with pytest.warns(RuntimeWarning, match="NVRTC"):
        var_maps(FakeArray(np.ones((1, 3, 4), np.float32)))
    assert fake.modules == ["fatbin", "nvrtc"] and var_cupy.module_origin() == "nvrtc"


def test_explicit_fatbin(fake, monkeypatch):
    good = fake.tmp / "var.fatbin"
    good.write_bytes(b"stand-in")
    monkeypatch.setenv(var_cupy.FATBIN_ENV, str(good))
    assert var_cupy.module_origin() == f"fatbin:{good}"
    monkeypatch.setattr(var_cupy, "_modules", {})
    monkeypatch.setenv(var_cupy.FATBIN_ENV, str(fake.tmp / "bad.fatbin"))
    (fake.tmp / "bad.fatbin").write_bytes(b"junk")
    with pytest.raises(UsageError, match="cannot load"):
        var_cupy.module_origin()
    monkeypatch.setattr(var_cupy, "_modules", {})
    monkeypatch.setenv(var_cupy.FATBIN_ENV, str(fake.tmp / "missing.fatbin"))
    with pytest.raises(UsageError, match="does not name a file"):
        var_cupy.module_origin()


def test_errors(fake):
    with pytest.raises(UsageError, match="float32 or float16"):
        var_maps(FakeArray(np.ones((1, 3, 4), np.float64)))
    with pytest.raises(UsageError, match="K >= 2"):
        var_maps(FakeArray(np.ones((1, 1, 4), np.float32)))
    with pytest.raises(UsageError, match="out must be"):
        var_cupy.var_maps_cupy(FakeArray(np.ones((1, 3, 4), np.float32)),
                               out=FakeArray(np.ones((1, 3, 5), np.float32)))
    assert var_maps(FakeArray(np.ones((0, 3, 4), np.float32))).shape == (0, 3, 4)
    assert fake.launches == []
