"""``varrt bench scale``: images per second of ``varrt explain`` in one process and on Ray.

Three flows, side by side in alternating rounds (``bench.timing.timed_in_rounds``), each the real
command line in its own process, exactly as a user runs it, over the same images (by default the
4 bundled photos repeated to 200):

- ``single process``: ``varrt explain``, ONNX Runtime on ``threads`` threads (its default: one
  per physical core);
- ``ray, 1 actor``: ``varrt explain --ray ADDRESS --actors 1 --cpus-per-actor threads``;
- ``ray, 2 actors``: ``--actors 2 --cpus-per-actor threads/2``;

so every flow runs on the same total number of threads. The Ray flows join one local Ray the
bench starts first (``threads`` CPUs), as a run joins a long-lived cluster: its start-up is
reported, not timed. Each run's time includes its process start, the model load and Explainer (the
Ray actors' too), and writing results.parquet and index.html. The ratio is a flow's images/s over
the single process's (goal for the Ray flows: >= 0.85). After the timing, every flow's
results.parquet is checked against the single process's: the same rows, bit for bit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from varrt.backends.onnxruntime import physical_cores
from varrt.bench.timing import timed_in_rounds
from varrt.core.errors import UsageError, VarrtError

SINGLE = "single process"
#: The Ray flows: name -> actors.
RAY_FLOWS = {"ray, 1 actor": 1, "ray, 2 actors": 2}


def images_to(photos: Sequence[Path], count: int) -> list[Path]:
    """``photos`` repeated, in order, to ``count`` paths (the CLI names the repeats stem_2, stem_3...)."""
    if count < 1 or not photos:
        raise UsageError(f"--count must be at least 1 and there must be photos, got {count} and {len(photos)}")
    return [photos[i % len(photos)] for i in range(count)]


def run_scale(model: Path, photos: Sequence[Path], *, count: int = 200, method: str = "gradient",
              classes: str = "top4+min", save: str = "summary", rounds: int = 2, threads: int | None = None,
              ray: bool = True, progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Time the flows; a report with each flow's seconds, images/s and ratio to the single process."""
    threads = threads or physical_cores()
    images = images_to(photos, count)
    work = Path(tempfile.mkdtemp(prefix="varrt-scale-"))
    try:
        base = [str(model), *map(str, images), "-m", method, "--classes", classes, "--save", save, "-q"]
        _varrt(["explain", str(model), *map(str, photos), "-m", method, "--classes", classes, "--save", "summary",
                "-q", "-o", str(work / "warm")])  # builds the cached graph every flow then loads
        flows = {SINGLE: _flow(base, work / "single")}
        layout = {SINGLE: (1, threads)}
        ray_skipped, ray_start, stop_ray = _start_ray(threads) if ray else ("not asked (--no-ray)", None, None)
        if ray_start is not None:
            address, started_s = ray_start
            for name, actors in RAY_FLOWS.items():
                cpus = max(1, threads // actors)
                flows[name] = _flow([*base, "--ray", address, "--actors", str(actors), "--cpus-per-actor", str(cpus)],
                                    work / name.replace(" ", "").replace(",", "-"))
                layout[name] = (actors, cpus)
        try:
            seconds = timed_in_rounds(_counted(flows, rounds, progress), repeats=rounds, warmup=0, rounds=rounds)
            same = {name: _same_rows(work / "single", _out(work, name)) for name in flows if name != SINGLE}
        finally:
            if stop_ray is not None:
                stop_ray()
        return _report(seconds, layout, same, count, threads, dict(method=method, classes=classes, save=save,
                       rounds=rounds, model=str(model)), ray_skipped, None if ray_start is None else ray_start[1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _out(work: Path, name: str) -> Path:
    return work / ("single" if name == SINGLE else name.replace(" ", "").replace(",", "-"))


def _flow(arguments: list[str], out: Path) -> Callable[[], None]:
    def run() -> None:
        shutil.rmtree(out, ignore_errors=True)
        _varrt(["explain", *arguments, "-o", str(out)])

    return run


def _varrt(arguments: list[str]) -> None:
    """Run the ``varrt`` command line in a new process; its error line becomes a VarrtError."""
    done = subprocess.run([sys.executable, "-m", "varrt.cli", *arguments], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("varrt: error:")]
        raise VarrtError(f"varrt {arguments[0]} failed: {(lines or done.stderr.splitlines() or ['?'])[-1]}")


def _counted(flows: dict[str, Callable[[], None]], rounds: int,
             progress: Callable[[int, int, str], None] | None) -> dict[str, Callable[[], None]]:
    total, done = rounds * len(flows), [0]

    def wrap(name: str, call: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            call()
            done[0] += 1
            if progress is not None:
                progress(done[0], total, name)

        return run

    return {name: wrap(name, call) for name, call in flows.items()}


def _start_ray(threads: int) -> tuple[str | None, tuple[str, float] | None, Callable[[], None] | None]:
    """(why Ray is skipped, or None; (address, start-up seconds); how to stop what was started)."""
    try:
        import ray
    except ImportError:
        return "Ray is not installed (pip install 'varrt[ray]')", None, None
    if ray.is_initialized():  # joined by whoever called us (tests): leave it running
        return None, (ray.get_runtime_context().gcs_address, 0.0), None
    started = time.perf_counter()
    ray.init(num_cpus=threads, include_dashboard=False, logging_level="WARNING")
    return None, (ray.get_runtime_context().gcs_address, time.perf_counter() - started), ray.shutdown


def _same_rows(reference: Path, other: Path) -> bool:
    return bool(pq.read_table(reference / "results.parquet").equals(pq.read_table(other / "results.parquet")))


def _report(seconds: dict[str, list[float]], layout: dict[str, tuple[int, int]], same: dict[str, bool], count: int,
            threads: int, settings: dict[str, Any], ray_skipped: str | None, ray_start_s: float | None
            ) -> dict[str, Any]:
    best = {name: min(values) for name, values in seconds.items()}
    flows = []
    for name, values in seconds.items():
        actors, cpus = layout[name]
        flows.append({
            "flow": name, "actors": actors, "threads_per_actor": cpus, "seconds": values, "best_s": best[name],
            "images_per_s": count / best[name], "ratio": best[SINGLE] / best[name],
            "rows_equal_single_process": same.get(name, True),
        })
    return {"settings": {**settings, "images": count, "threads": threads, "cpu_count": os.cpu_count()},
            "flows": flows, "ray_skipped": ray_skipped, "ray_start_s": ray_start_s}


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows for ``varrt.bench.cli.format_table``."""
    headers = ["flow", "actors x threads", "best s", "images/s", "vs single process", "rows equal"]
    rows = [[f["flow"], f"{f['actors']} x {f['threads_per_actor']}", f"{f['best_s']:.1f}",
             f"{f['images_per_s']:.2f}", f"{f['ratio']:.2f}", "yes" if f["rows_equal_single_process"] else "NO"]
            for f in report["flows"]]
    return headers, rows
