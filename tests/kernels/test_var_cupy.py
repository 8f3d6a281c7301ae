"""The CUDA kernel through CuPy, and the fatbin build.

Tests that need a GPU skip with a visible reason when none is present; they are written to run
in full on a GPU machine: every output buffer is poisoned with NaN first, so an element the
kernel fails to write shows up, and results are compared with the float64 formula.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from var_reference import assert_var_close
from varrt.core.errors import UsageError
from varrt.kernels import var_cupy, var_maps
from varrt.kernels.var_cupy import K_CAPACITIES, all_kernel_names, kernel_name

SOURCE = var_cupy.SOURCE
FATBIN = var_cupy.FATBIN


def _cuda_device_reason() -> str | None:
    """None when CuPy sees a CUDA device, else why not."""
    try:
        import cupy
    except ImportError as error:
        return f"cupy not importable ({error})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError without a driver; its type moves across versions
        return f"{type(error).__name__}: {error}"
    return None if count > 0 else "cupy reports 0 devices"


NO_GPU = _cuda_device_reason()


@pytest.fixture
def cp():
    if NO_GPU:
        pytest.skip(f"no CUDA device: {NO_GPU}")
    import cupy

    return cupy


def run_poisoned(cp, a: np.ndarray, **kwargs) -> np.ndarray:
    """var_maps_cupy on ``a`` into a NaN-filled output; returns the host copy."""
    x = cp.asarray(a)
    out = cp.full(x.shape, np.nan, dtype=x.dtype)
    y = var_cupy.var_maps_cupy(x, out=out, **kwargs)
    assert y is out
    return cp.asnumpy(y)


# -- no GPU needed ---------------------------------------------------------------------------


def test_every_entry_point_is_defined_in_the_source():
    text = SOURCE.read_text()
    defined = set(re.findall(r"^VARRT_REGISTER_ENTRY\((\w+),", text, flags=re.M))
    defined |= set(re.findall(r"^(varrt_var_\w+)\(", text, flags=re.M))
    assert set(all_kernel_names()) == defined


@pytest.mark.parametrize("dtype, k, vector, name", [
    (np.float32, 2, True, "varrt_var_f32_k8_v4"),
    (np.float32, 5, False, "varrt_var_f32_k8_v1"),
    (np.float32, 16, True, "varrt_var_f32_k16_v4"),
    (np.float32, 17, True, "varrt_var_f32_k32_v1"),   # no 4-wide kernel above K=16
    (np.float16, 64, False, "varrt_var_f16_k64_v1"),
    (np.float16, 65, True, "varrt_var_f16_loop"),
])
def test_kernel_choice(dtype, k, vector, name):
    assert kernel_name(np.dtype(dtype), k, vector) == name


def test_import_does_not_need_cupy():
    code = ("import sys, builtins; real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name.split('.')[0] == 'cupy': raise ImportError('cupy blocked')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import numpy as np, varrt.kernels as K\n"
            "print(K.var_maps(np.ones((1, 2, 3), np.float32)).shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 2, 3)"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: compile check skipped")
def test_source_compiles_with_nvcc(tmp_path):
    ptx = tmp_path / "var.ptx"
    subprocess.run(["nvcc", "--ptx", "-arch=compute_75", "-o", str(ptx), str(SOURCE)], check=True)
    text = ptx.read_text()
    assert all(f".entry {name}(" in text for name in all_kernel_names())


def _find_nvrtc() -> str | None:
    """libnvrtc from the system or an nvidia-cuda-nvrtc wheel, if either is installed."""
    import ctypes.util
    import glob
    import sys

    found = ctypes.util.find_library("nvrtc")
    if found:
        return found
    for root in sys.path:
        hits = sorted(glob.glob(f"{root}/nvidia/*/lib/libnvrtc.so*") + glob.glob(f"{root}/nvidia/*/*/lib/libnvrtc.so*"))
        if hits:
            return hits[0]
    return None


def test_source_compiles_with_nvrtc_and_no_headers():
    """The NVRTC fallback compiles var.cu with no include path; check that without a GPU."""
    import ctypes

    path = _find_nvrtc()
    if path is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc to run this check without a GPU)")
    lib = ctypes.CDLL(path)
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), SOURCE.read_bytes(), b"var.cu", 0, None, None) == 0
    options = [b"--std=c++11", b"-arch=compute_75"]
    rc = lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    assert rc == 0, log.value.decode()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert all(f".entry {name}(" in ptx.value.decode() for name in all_kernel_names())


def test_built_fatbin_is_a_fatbin():
    if not FATBIN.is_file():
        pytest.skip("kernels/var.fatbin not built: cmake -S . -B build/cuda && cmake --build build/cuda")
    assert FATBIN.read_bytes()[:4] == bytes.fromhex("50ed55ba")  # fatbin magic 0xBA55ED50, little-endian


# -- GPU ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [
    (2, 5, 3, 16, 16),     # plane % 4 == 0: vector path
    (3, 4, 7, 9),          # odd plane: scalar path
    (64, 5, 3, 32, 32),
    (1, 2, 1),
    (2, 3),                # no trailing dims
], ids=str)
def test_matches_float64_reference(cp, shape, dtype):
    rng = np.random.default_rng(len(shape))
    for scale in (1e-3, 0.2, 1e3):
        a = (rng.standard_normal(shape) * scale).astype(dtype)
        got = run_poisoned(cp, a)
        assert got.dtype == dtype
        assert_var_close(got, a, rtol=1e-3 if dtype == np.float16 else 1e-5)


@pytest.mark.parametrize("k", [*range(2, 11), 15, 16, 17, 32, 33, 64, 65, 100])
@pytest.mark.parametrize("plane", [(4, 4), (3, 5)], ids=["vec", "scalar"])
def test_every_k_capacity_and_the_loop(cp, k, plane):
    a = (np.random.default_rng(k).standard_normal((3, k, *plane)) * 0.2).astype(np.float32)
    assert_var_close(run_poisoned(cp, a), a)


def test_misaligned_pointer_takes_the_scalar_path(cp):
    a = (np.random.default_rng(0).standard_normal((2, 5, 4, 4)) * 0.2).astype(np.float32)
    flat = cp.empty(a.size + 1, dtype=cp.float32)
    x = flat[1:].reshape(a.shape)  # 4 bytes off a 16-byte boundary
    x[...] = cp.asarray(a)
    assert x.data.ptr % 16 != 0
    out = cp.full(a.shape, np.nan, cp.float32)
    assert_var_close(cp.asnumpy(var_cupy.var_maps_cupy(x, out=out)), a)


def test_non_contiguous_input(cp):
    a = (np.random.default_rng(1).standard_normal((4, 3, 6, 6)) * 0.2).astype(np.float32)
    x = cp.asarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)  # same values, strided
    assert not x.flags.c_contiguous
    assert_var_close(cp.asnumpy(var_maps(x)), a)


def test_extremes(cp):
    zeros = np.zeros((2, 5, 8), np.float32)
    assert (run_poisoned(cp, zeros) == 0).all()
    ties = np.full((2, 4, 8), 0.5, np.float32)
    assert (run_poisoned(cp, ties) == 0).all()
    for dtype, big in ((np.float32, 1e6), (np.float16, 6e4)):
        a = np.zeros((2, 5, 8), dtype)
        a[:, 2] = big
        a[:, 3, ::2] = -big
        got = run_poisoned(cp, a)
        assert np.isfinite(got).all()
        assert_var_close(got, a, rtol=1e-3)


def test_agrees_with_numpy_path(cp):
    a = (np.random.default_rng(2).standard_normal((8, 5, 3, 20, 20)) * 0.3).astype(np.float32)
    got, want = cp.asnumpy(var_maps(cp.asarray(a))), var_maps(a)
    differ = ~np.isclose(got, want, rtol=1e-5, atol=1e-7)
    # only elements on the mask threshold may flip between FMA-contracted GPU and NumPy maths
    assert differ.mean() < 1e-4 and ((got == 0) | (want == 0))[differ].all()


def test_runs_on_the_current_stream(cp):
    a = (np.random.default_rng(3).standard_normal((16, 5, 3, 32, 32)) * 0.2).astype(np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        x = cp.asarray(a)
        y = var_maps(x)
        done = stream.record()
    done.synchronize()
    assert_var_close(cp.asnumpy(y), a)


def test_empty_and_errors(cp):
    assert var_maps(cp.zeros((0, 5, 4), cp.float32)).shape == (0, 5, 4)
    with pytest.raises(UsageError, match="K >= 2"):
        var_maps(cp.zeros((2, 1, 4), cp.float32))
    with pytest.raises(UsageError, match="float32 or float16"):
        var_maps(cp.zeros((2, 3, 4), cp.float64))
    with pytest.raises(UsageError, match="floating-point"):
        var_maps(cp.zeros((2, 3, 4), cp.int32))
    with pytest.raises(UsageError, match="out must be"):
        var_cupy.var_maps_cupy(cp.zeros((2, 3, 4), cp.float32), out=cp.zeros((2, 3, 5), cp.float32))


def test_fatbin_loads_when_built(cp, monkeypatch):
    if not FATBIN.is_file():
        pytest.skip("kernels/var.fatbin not built: cmake -S . -B build/cuda && cmake --build build/cuda")
    monkeypatch.setenv(var_cupy.FATBIN_ENV, str(FATBIN))
    monkeypatch.setattr(var_cupy, "_modules", {})
    monkeypatch.setattr(var_cupy, "_kernels", {})
    assert var_cupy.module_origin() == f"fatbin:{FATBIN}"
    module = var_cupy._modules[cp.cuda.Device().id][0]
    for name in all_kernel_names():
        module.get_function(name)
    a = (np.random.default_rng(4).standard_normal((2, 5, 4, 4)) * 0.2).astype(np.float32)
    assert_var_close(run_poisoned(cp, a), a)


def test_nvrtc_fallback_compiles_the_source(cp, monkeypatch, tmp_path):
    monkeypatch.delenv(var_cupy.FATBIN_ENV, raising=False)
    monkeypatch.setattr(var_cupy, "FATBIN", tmp_path / "absent.fatbin")
    monkeypatch.setattr(var_cupy, "_modules", {})
    monkeypatch.setattr(var_cupy, "_kernels", {})
    assert var_cupy.module_origin() == "nvrtc"
    a = (np.random.default_rng(5).standard_normal((2, 70, 3, 3)) * 0.2).astype(np.float16)
    assert_var_close(run_poisoned(cp, a), a, rtol=1e-3)


def test_capacities_cover_the_documented_register_range():
    assert max(K_CAPACITIES) == 64 and Path(SOURCE).is_file()
