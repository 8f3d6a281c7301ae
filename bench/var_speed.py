"""Speed of the VAR step: NumPy vs in-graph (ONNX Runtime CPU); on a GPU, the CUDA kernel's bandwidth.

    python -m varrt.bench.var_speed [--out var_speed.json] [--repeat 7] [--quick] [--no-gpu]

CPU: median wall time of ``var_maps`` on a NumPy array and of an ONNX Runtime CPU session that
holds only ``append_var`` (the in-graph variant), and their ratio, for several N, K and sizes.
GPU (when CuPy finds a device): the fused kernel timed with CUDA events after warm-up, its
effective bandwidth (bytes read + written / time) next to a device-to-device copy of the same
bytes (the bandwidth ceiling for a one-pass kernel), and the same formula written with CuPy
elementwise ops and, when torch has CUDA, PyTorch ops. JSON goes to stdout or --out; a readable
table goes to stderr. Without a GPU the GPU part is recorded as skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx_ir.tape import Tape
from varrt.bench.timing import timed
from varrt.core.contract import ATTRIBUTIONS, VAR_ATTRIBUTIONS
from varrt.core.defaults import TAU, TEMPERATURE
from varrt.kernels import append_var, var_maps
from varrt.kernels.var_cupy import module_origin, var_maps_cupy

CPU_CASES = [  # (N, K, trailing shape)
    (1, 5, (3, 224, 224)),
    (8, 5, (3, 224, 224)),
    (64, 5, (3, 224, 224)),
    (8, 4, (224, 224)),       # CAMs at input resolution, grid pointing game K
    (32, 10, (3, 64, 64)),
    (256, 5, (7, 7)),         # small planes: per-call overheads dominate
]
GPU_CASES = [  # (N, K, trailing shape, dtype)
    (64, 5, (3, 224, 224), "float32"),
    (64, 5, (3, 224, 224), "float16"),
    (8, 5, (3, 224, 224), "float32"),
    (64, 4, (224, 224), "float32"),
    (16, 16, (3, 224, 224), "float32"),
    (16, 32, (3, 112, 112), "float32"),
    (8, 100, (3, 64, 64), "float32"),   # K > 64: the re-reading loop kernel
    (64, 5, (3, 223, 223), "float32"),  # odd plane: scalar (non-vector) path
]


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    return statistics.median(timed(fn, repeat, warmup))


def ort_session(trailing: tuple[int, ...], opset: int = 17) -> Any:
    """An ONNX Runtime CPU session running only the in-graph VAR on [N, K, *trailing]."""
    x = ir.Value(name=ATTRIBUTIONS, type=ir.TensorType(ir.DataType.FLOAT),
                 shape=ir.Shape(["N", "K", *trailing]))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": opset}, name="var")
    y = append_var(Tape(graph), x, temperature=TEMPERATURE, tau=TAU, opset=opset)
    y.name = VAR_ATTRIBUTIONS
    graph.outputs.append(y)
    proto = ir.to_proto(ir.Model(graph, ir_version=8))
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def bench_cpu(repeat: int, quick: bool) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    for n, k, trailing in CPU_CASES[:3] if quick else CPU_CASES:
        a = (rng.standard_normal((n, k, *trailing)) * 0.1).astype(np.float32)
        session = ort_session(trailing)
        numpy_s = median_seconds(partial(var_maps, a, TEMPERATURE, TAU), repeat)
        ort_s = median_seconds(partial(session.run, None, {ATTRIBUTIONS: a}), repeat)
        agree = float(np.abs(session.run(None, {ATTRIBUTIONS: a})[0] - var_maps(a)).max())
        rows.append({"N": n, "K": k, "shape": list(trailing), "dtype": "float32", "MB": a.nbytes / 1e6,
                     "numpy_ms": numpy_s * 1e3, "ort_ms": ort_s * 1e3, "ort_over_numpy": ort_s / numpy_s,
                     "max_abs_diff": agree})
    return rows


def gpu_reason() -> str | None:
    """None when CuPy can use a CUDA device, else why not."""
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() < 1:
            return "cupy reports 0 CUDA devices"
    except Exception as error:  # ImportError, or CUDARuntimeError without a driver
        return f"{type(error).__name__}: {error}"
    return None


def cuda_median_ms(cp: Any, fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    """Median over ``repeat`` launches, each bracketed by CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def cupy_formula(cp: Any, x: Any) -> Any:
    """The VAR formula with CuPy elementwise ops and reductions (several kernels, temporaries)."""
    z = cp.abs(x).astype(cp.float32) * TEMPERATURE
    e = cp.exp(z - z.max(axis=1, keepdims=True))
    m = e / e.sum(axis=1, keepdims=True)
    return cp.where(m - 1.0 / x.shape[1] > TAU, x * m, 0).astype(x.dtype)


def torch_part(cp: Any, x: Any, repeat: int) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"skipped": "torch not installed"}
    if not torch.cuda.is_available():
        return {"skipped": "torch has no CUDA"}
    t = torch.from_dlpack(x)

    def formula() -> Any:
        z = t.abs().float() * TEMPERATURE
        m = torch.softmax(z, dim=1)
        return torch.where(m - 1.0 / t.shape[1] > TAU, t * m, 0).to(t.dtype)

    for _ in range(3):
        formula()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        formula()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    agree = float(cp.abs(cp.from_dlpack(formula()).astype(cp.float32) - var_maps(x).astype(cp.float32)).max())
    return {"ms": statistics.median(times), "max_abs_diff": agree}


def bench_gpu(repeat: int, quick: bool) -> dict[str, Any]:
    reason = gpu_reason()
    if reason:
        return {"skipped": f"no CUDA device: {reason}"}
    import cupy as cp  # optional: only with a GPU

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    rows = []
    rng = np.random.default_rng(0)
    for n, k, trailing, dtype in GPU_CASES[:2] if quick else GPU_CASES:
        x = cp.asarray((rng.standard_normal((n, k, *trailing)) * 0.1).astype(dtype))
        out = cp.empty_like(x)
        copy_dst = cp.empty_like(x)
        moved = 2 * x.nbytes  # one read and one write of the tensor
        # into a preallocated output, so only the kernel is timed, not the pool allocation
        kernel_ms = cuda_median_ms(cp, partial(var_maps_cupy, x, TEMPERATURE, TAU, out=out), repeat)
        copy_ms = cuda_median_ms(cp, partial(copy_dst.data.copy_from_device, x.data, x.nbytes),
                                 repeat)
        cupy_ms = cuda_median_ms(cp, partial(cupy_formula, cp, x), repeat)
        diff = float(cp.abs(cupy_formula(cp, x).astype(cp.float32) - var_maps(x).astype(cp.float32)).max())
        row = {"N": n, "K": k, "shape": list(trailing), "dtype": dtype, "MB": x.nbytes / 1e6,
               "kernel_ms": kernel_ms, "kernel_GBps": moved / kernel_ms / 1e6,
               "copy_ms": copy_ms, "copy_GBps": moved / copy_ms / 1e6,
               "kernel_over_copy": kernel_ms / copy_ms,
               "cupy_ops_ms": cupy_ms, "cupy_ops_over_kernel": cupy_ms / kernel_ms,
               "cupy_ops_max_abs_diff": diff}
        torch_row = torch_part(cp, x, repeat)
        if "ms" in torch_row:
            row.update(torch_ms=torch_row["ms"], torch_over_kernel=torch_row["ms"] / kernel_ms,
                       torch_max_abs_diff=torch_row["max_abs_diff"])
        else:
            row["torch"] = torch_row["skipped"]
        rows.append(row)
        del x, out, copy_dst
        cp.get_default_memory_pool().free_all_blocks()
    name = props["name"]
    return {"device": name.decode() if isinstance(name, bytes) else str(name),
            "module": module_origin(), "rows": rows}


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "x".join(map(str, value)) if isinstance(value, list) else str(value)

    lines = [" | ".join(columns)] + [" | ".join(cell(row.get(c, "")) for c in columns) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varrt.bench.var_speed",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", help="write the JSON here instead of stdout")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="only the first cases")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU part")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "host": {"machine": platform.machine(), "python": platform.python_version(),
                 "numpy": np.__version__, "onnxruntime": ort.__version__},
        "temperature": TEMPERATURE, "tau": TAU, "repeat": args.repeat,
        "cpu": bench_cpu(args.repeat, args.quick),
        "gpu": {"skipped": "--no-gpu"} if args.no_gpu else bench_gpu(args.repeat, args.quick),
    }
    print("CPU (median ms):\n" + _table(result["cpu"], ["N", "K", "shape", "MB", "numpy_ms", "ort_ms",
                                                         "ort_over_numpy"]), file=sys.stderr)
    gpu = result["gpu"]
    if "rows" in gpu:
        print(f"GPU {gpu['device']} ({gpu['module']}), median ms / GB/s:\n" + _table(
            gpu["rows"], ["N", "K", "shape", "dtype", "kernel_ms", "kernel_GBps", "copy_GBps",
                          "kernel_over_copy", "cupy_ops_over_kernel", "torch_over_kernel"]), file=sys.stderr)
    else:
        print(f"GPU part skipped: {gpu['skipped']}", file=sys.stderr)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
