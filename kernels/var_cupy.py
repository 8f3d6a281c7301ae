"""VAR on the GPU: launches kernels/var.cu through CuPy on the caller's current stream.

The module is loaded once per process and device: from ``$VARRT_FATBIN`` when set, else from
the ``var.fatbin`` that CMake builds next to this file, else by compiling ``var.cu`` with NVRTC
(CuPy caches that compilation on disk). A packaged fatbin the driver cannot load (a driver older
than the nvcc that built it) falls back to NVRTC with a warning; an explicit ``$VARRT_FATBIN``
that fails to load is an error, since the user asked for that file.

CuPy is optional (the ``cuda`` extra): the functions that launch import it, so this module imports
on any machine.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from varrt.core.defaults import TAU, TEMPERATURE
from varrt.core.errors import UsageError
from varrt.kernels.checks import KERNEL_DTYPES, check_var_args

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "var.cu"
FATBIN = HERE / "var.fatbin"
FATBIN_ENV = "VARRT_FATBIN"

#: Register-path capacities compiled into var.cu; K above the largest uses the re-reading loop.
K_CAPACITIES = (8, 16, 32, 64)
#: The 4-wide kernels exist for these capacities only (4*K values per thread must fit registers).
VECTOR_K_CAPACITIES = (8, 16)
THREADS = 256
# Enough resident blocks to saturate the memory system; the grid-stride loop does the rest.
BLOCKS_PER_SM = 8

# Per device: (RawModule, where it came from, number of SMs). Looking these up costs driver calls,
# too many to repeat on every launch.
_modules: dict[int, tuple[Any, str, int]] = {}
_kernels: dict[tuple[int, str], Any] = {}


def kernel_name(dtype: np.dtype, k: int, vector: bool) -> str:
    """The extern "C" entry point of var.cu for this dtype, class count and vector width."""
    prefix = "varrt_var_f32" if dtype == np.float32 else "varrt_var_f16"
    for cap in K_CAPACITIES:
        if k <= cap:
            vec = 4 if vector and cap in VECTOR_K_CAPACITIES else 1
            return f"{prefix}_k{cap}_v{vec}"
    return f"{prefix}_loop"


def all_kernel_names() -> list[str]:
    """Every entry point var.cu defines (checked by the tests against the source)."""
    names = []
    for prefix in ("varrt_var_f32", "varrt_var_f16"):
        names += [f"{prefix}_k{cap}_v1" for cap in K_CAPACITIES]
        names += [f"{prefix}_k{cap}_v4" for cap in VECTOR_K_CAPACITIES]
        names.append(f"{prefix}_loop")
    return names


def _load_module(cp: Any) -> tuple[Any, str, int]:
    """The current device's RawModule, where it came from ('fatbin:PATH' or 'nvrtc'), its SMs."""
    device = cp.cuda.Device().id
    if device in _modules:
        return _modules[device]
    explicit = os.environ.get(FATBIN_ENV)
    path = Path(explicit) if explicit else FATBIN
    module: Any = None
    origin = "nvrtc"
    if explicit and not path.is_file():
        raise UsageError(f"{FATBIN_ENV}={explicit} does not name a file")
    if path.is_file():
        try:
            module = cp.RawModule(path=str(path))
            # RawModule loads lazily: touch one function so a bad fatbin fails here, not mid-run.
            module.get_function(all_kernel_names()[0])
            origin = f"fatbin:{path}"
        except cp.cuda.driver.CUDADriverError as error:
            if explicit:
                raise UsageError(f"cannot load {FATBIN_ENV}={explicit}: {error}") from error
            warnings.warn(f"{path} does not load on this driver ({error}); compiling var.cu with NVRTC",
                          RuntimeWarning, stacklevel=3)
            module = None
    if module is None:
        module = cp.RawModule(code=SOURCE.read_text(), options=("--std=c++11",))
        module.get_function(all_kernel_names()[0])
    sms = int(cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrMultiProcessorCount, device))
    _modules[device] = (module, origin, sms)
    return _modules[device]


def _kernel(cp: Any, name: str) -> tuple[Any, int]:
    """The entry point ``name`` on the current device, and that device's SM count."""
    device = cp.cuda.Device().id
    _, _, sms = _load_module(cp)
    if (device, name) not in _kernels:
        _kernels[device, name] = _modules[device][0].get_function(name)
    return _kernels[device, name], sms


def module_origin() -> str:
    """Where the kernel module for the current device came from: 'fatbin:PATH' or 'nvrtc'."""
    import cupy as cp

    return _load_module(cp)[1]


def var_maps_cupy(attributions: Any, temperature: float = TEMPERATURE, tau: float = TAU, *,
                  out: Any = None) -> Any:
    """VAR on a CuPy array [N, K, ...] (float32 or float16); the result stays on the device.

    Launched on the current CuPy stream, so it orders after whatever produced the attributions
    there. Non-contiguous inputs are copied to C order first. ``out``, when given, is a
    C-contiguous CuPy array of the same shape and dtype to write into (e.g. a buffer bound to
    an ONNX Runtime output); it must not overlap the input.

    >>> import cupy as cp                                           # doctest: +SKIP
    >>> var_maps_cupy(cp.ones((2, 5, 3, 8, 8), cp.float32)).shape   # doctest: +SKIP
    (2, 5, 3, 8, 8)
    """
    import cupy as cp

    check_var_args(attributions.shape, attributions.dtype, temperature, tau)
    if attributions.dtype not in KERNEL_DTYPES:
        raise UsageError(f"the CUDA VAR kernel takes float32 or float16; got {attributions.dtype}")
    x = cp.ascontiguousarray(attributions)
    if out is None:
        y = cp.empty_like(x)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise UsageError(f"out must be a C-contiguous {x.dtype} array of shape {x.shape}; "
                         f"got {out.dtype} {out.shape}")
    else:
        y = out
    n, k = x.shape[0], x.shape[1]
    plane = int(np.prod(x.shape[2:], dtype=np.int64))
    if x.size == 0:
        return y
    align = 16 if x.dtype == np.float32 else 8
    vector = plane % 4 == 0 and x.data.ptr % align == 0 and y.data.ptr % align == 0
    name = kernel_name(x.dtype, k, vector)
    vec = 4 if name.endswith("_v4") else 1
    groups = n * plane // vec
    kernel, sms = _kernel(cp, name)
    blocks = max(1, min((groups + THREADS - 1) // THREADS, sms * BLOCKS_PER_SM))
    kernel((blocks,), (THREADS,),
           (x, y, np.int64(groups), np.int32(k), np.int64(plane), np.float32(temperature), np.float32(tau)))
    return y
