"""Speed: latency at batch 1 and throughput at larger batches, per backend and method.

What is timed is one ``Explainer`` call as a user makes it: the explanation graph's run (forward,
class choice, backward for K classes), VAR on its output and the softmax, with the Explainer's
batch size equal to the batch so each call is one backend run. Graph export, session creation
and warm-up calls are not timed. Inputs are seeded random images of the model's input shape
(speed does not depend on content). Backends that cannot run here are listed with the reason.

When the PyTorch reference is asked for (``torch_reference``, on by default for the demo
model when torch and captum are installed), ``varrt.bench.speed_reference.run`` times the same
methods with PyTorch + Captum + VAR in NumPy in the same process, and the report adds the ratio
reference time / varrt time (above 1: varrt is faster).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from varrt import data, images
from varrt.backends.select import BACKENDS, unavailable_reason
from varrt.bench import speed_reference
from varrt.bench.timing import latency_summary, timed
from varrt.bench.timing import split_evenly as split_evenly  # also importable from here
from varrt.bench.timing import timed_in_rounds as timed_in_rounds
from varrt.core import defaults
from varrt.core import layout as image_layout
from varrt.core.classes import parse_classes
from varrt.core.errors import UsageError
from varrt.explainer import Explainer
from varrt.export.methods import METHODS  # every method is benchmarked

REFERENCE_FLOW = "torch+captum"

Progress = Callable[[int, int, str], None]


def _no_progress(done: int, total: int, label: str) -> None:
    del done, total, label


def available_backends() -> tuple[list[str], dict[str, str]]:
    """Backends that can run here, and why each of the others cannot."""
    usable, skipped = [], {}
    for name in BACKENDS:
        reason = unavailable_reason(name)
        if reason is None:
            usable.append(name)
        else:
            skipped[name] = reason
    return usable, skipped


def timed_calls(call: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """``timed`` for Explainer calls: each result is forced to the host before the clock stops."""
    return timed(lambda: _block(call()), repeats, warmup)


def _block(explanation: Any) -> None:
    # GPU backends return before the device is done; reading one value back waits for it.
    for array in (getattr(explanation, "var", None), getattr(explanation, "attributions", None)):
        if array is not None:
            float(array.ravel()[0])
            return


def input_shape(model: str | os.PathLike[str]) -> tuple[int, int, int]:
    """One image's shape in the model's layout: (C, H, W), or (H, W, C) for a channels-last model."""
    prep = images.preprocessing_for(model)
    return image_layout.image_dims(prep.layout, prep.channels, *prep.size)


def measure_varrt(
    model: str | os.PathLike[str],
    method: str,
    backend: str,
    batch_sizes: Sequence[int],
    *,
    classes: str,
    repeats: int,
    throughput_repeats: int,
    warmup: int,
    explainer_factory: Callable[..., Any],
    method_options: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency (batch 1) and throughput (each of ``batch_sizes``) of one method on one backend."""
    shape = input_shape(model)
    rng = np.random.default_rng(seed)
    row: dict[str, Any] = {"flow": backend, "method": method, "throughput": {}, "throughput_seconds": {}}
    for batch in (1, *batch_sizes):
        images = rng.standard_normal((batch, *shape), dtype=np.float32)
        explainer = explainer_factory(
            os.fspath(model),
            method=method,
            classes=classes,
            backend=backend,
            batch_size=batch,
            **dict(method_options or {}),
        )
        row["backend_name"] = getattr(explainer, "backend_name", backend)
        seconds = timed_calls(
            functools.partial(explainer, images),
            throughput_repeats if batch > 1 else repeats,
            warmup,
        )
        if batch == 1:
            row["latency_ms"] = latency_summary(seconds)
        else:
            row["throughput"][str(batch)] = batch / statistics.median(seconds)
            row["throughput_seconds"][str(batch)] = seconds
        close = getattr(explainer, "close", None)
        if close is not None:
            close()
    return row


def reference_available() -> str | None:
    """None when the PyTorch + Captum reference can run, else why not."""
    for module in ("torch", "captum"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{module} is not installed"
    return None


def is_demo_model(model: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(os.fspath(model), data.demo_model_path())
    except OSError:
        return False


def run_speed(
    model: str | os.PathLike[str],
    methods: Sequence[str] = METHODS,
    backends: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (32, 64),
    *,
    classes: str = defaults.CLASSES,
    repeats: int = 10,
    throughput_repeats: int = 3,
    warmup: int = 1,
    torch_reference: bool | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    explainer_factory: Callable[..., Any] | None = None,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Time every method on every backend (all usable ones by default); the JSON report."""
    _check_counts(batch_sizes, repeats, throughput_repeats, warmup)
    factory = explainer_factory or Explainer
    usable, skipped = available_backends()
    chosen = list(backends) if backends else usable
    torch_reference, reference_skipped = _reference_choice(model, torch_reference)
    k = parse_classes(classes).k
    report = _report(model, classes, k, batch_sizes, repeats, throughput_repeats, warmup, method_options, skipped)
    jobs = _varrt_jobs(
        model, methods, chosen, batch_sizes, classes, repeats, throughput_repeats, warmup, factory, method_options
    )
    if torch_reference:
        jobs += _reference_jobs(methods, batch_sizes, k, repeats, throughput_repeats, warmup, method_options)
    report["results"].extend(_measure_all(jobs, progress))
    if torch_reference:
        report["ratios"] = reference_ratios(report["results"])
    else:
        report["reference_skipped"] = reference_skipped
    return report


def _check_counts(batch_sizes: Sequence[int], repeats: int, throughput_repeats: int, warmup: int) -> None:
    """Refuse repeat counts, warm-up counts and batch sizes that cannot be timed."""
    if repeats < 1 or throughput_repeats < 1 or warmup < 0:
        raise UsageError("--repeats and --throughput-repeats must be at least 1, --warmup at least 0")
    if any(b < 1 for b in batch_sizes):
        raise UsageError(f"batch sizes must be positive, got {list(batch_sizes)}")


def _reference_choice(model: str | os.PathLike[str], torch_reference: bool | None) -> tuple[bool, str | None]:
    """Whether the PyTorch reference is timed, and why not when it was left out by default."""
    reference_skipped = None
    if torch_reference is None:
        torch_reference = is_demo_model(model) and reference_available() is None
        if not torch_reference:
            reference_skipped = reference_available() or "not the demo model (pass --torch-reference)"
    elif torch_reference and reference_available() is not None:
        raise UsageError(f"the PyTorch reference cannot run: {reference_available()}")
    return torch_reference, reference_skipped


def _report(
    model: str | os.PathLike[str],
    classes: str,
    k: int,
    batch_sizes: Sequence[int],
    repeats: int,
    throughput_repeats: int,
    warmup: int,
    method_options: Mapping[str, Mapping[str, Any]] | None,
    skipped: dict[str, str],
) -> dict[str, Any]:
    """The report before any timing: model, settings and the backends that cannot run here."""
    return {
        "benchmark": "speed",
        "model": os.fspath(model),
        "settings": {
            "k": k,
            "classes": classes,
            "batch_sizes": list(batch_sizes),
            "repeats": repeats,
            "throughput_repeats": throughput_repeats,
            "warmup": warmup,
            "input_shape": list(input_shape(model)),
            "cpu_count": os.cpu_count(),
            "method_options": {m: dict(o) for m, o in (method_options or {}).items()},
        },
        "backends_skipped": skipped,
        "results": [],
    }


_Job = tuple[str, Callable[[], dict[str, Any]]]  # progress label, and the measurement giving one row


def _varrt_jobs(
    model: str | os.PathLike[str],
    methods: Sequence[str],
    backends: Sequence[str],
    batch_sizes: Sequence[int],
    classes: str,
    repeats: int,
    throughput_repeats: int,
    warmup: int,
    factory: Callable[..., Any],
    method_options: Mapping[str, Mapping[str, Any]] | None,
) -> list[_Job]:
    """One varrt measurement per backend and method, backend by backend."""
    return [
        (
            f"{backend} {method}",
            functools.partial(
                measure_varrt,
                model,
                method,
                backend,
                batch_sizes,
                classes=classes,
                repeats=repeats,
                throughput_repeats=throughput_repeats,
                warmup=warmup,
                explainer_factory=factory,
                method_options=(method_options or {}).get(method),
            ),
        )
        for backend in backends
        for method in methods
    ]


def _reference_jobs(
    methods: Sequence[str], batch_sizes: Sequence[int], k: int, repeats: int, throughput_repeats: int, warmup: int,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[_Job]:
    """One PyTorch reference measurement per method (with the method options varrt gets)."""
    return [
        (
            f"{REFERENCE_FLOW} {method}",
            functools.partial(
                _reference_row, speed_reference, method, batch_sizes, k, repeats, throughput_repeats, warmup,
                (method_options or {}).get(method),
            ),
        )
        for method in methods
    ]


def _measure_all(jobs: Sequence[_Job], progress: Progress) -> list[dict[str, Any]]:
    """The rows of ``jobs`` in order, reporting progress before and after each."""
    rows = []
    for done, (label, measure) in enumerate(jobs):
        progress(done, len(jobs), label)
        rows.append(measure())
        progress(done + 1, len(jobs), label)
    return rows


def _reference_row(
    speed_reference: Any,
    method: str,
    batch_sizes: Sequence[int],
    k: int,
    repeats: int,
    throughput_repeats: int,
    warmup: int,
    method_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One row in the same format as ``measure_varrt``, from the reference module's ``run``."""
    measured = speed_reference.run(
        method=method,
        batch_sizes=list(batch_sizes),
        k=k,
        repeats=repeats,
        throughput_repeats=throughput_repeats,
        warmup=warmup,
        method_options=method_options,
        compare=method in speed_reference.FLOOR_BLOCKS,  # side by side in rounds, and the floor
    )
    row = {"flow": REFERENCE_FLOW, "method": method, **measured}
    row.setdefault("throughput", {})
    row["throughput"] = {str(b): v for b, v in row["throughput"].items()}
    return row


def reference_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reference time / varrt time per backend and method (above 1: varrt is faster)."""
    reference = {row["method"]: row for row in rows if row["flow"] == REFERENCE_FLOW}
    ratios = []
    for row in rows:
        base = reference.get(row["method"])
        if row["flow"] == REFERENCE_FLOW or base is None:
            continue
        entry: dict[str, Any] = {"flow": row["flow"], "method": row["method"]}
        if "latency_ms" in row and "latency_ms" in base:
            entry["latency_speedup"] = base["latency_ms"]["median"] / row["latency_ms"]["median"]
        for batch, rate in row["throughput"].items():
            if batch in base["throughput"]:
                entry[f"throughput_speedup_{batch}"] = rate / base["throughput"][batch]
        ratios.append(entry)
    return ratios


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the printed speed table (with the reference ratio where there is one)."""
    batches = [str(b) for b in report["settings"]["batch_sizes"]]
    ratios = {(r["flow"], r["method"]): r for r in report.get("ratios", [])}
    headers = ["flow", "method", "latency ms (b=1, median)", "p90"] + [f"img/s b={b}" for b in batches]
    if ratios:
        headers += ["ref/varrt latency"] + [f"ref/varrt b={b}" for b in batches]
    rows = []
    for row in report["results"]:
        latency = row.get("latency_ms", {})
        line = [row["flow"], row["method"], _number(latency.get("median")), _number(latency.get("p90"))]
        line += [_number(row["throughput"].get(b)) for b in batches]
        if ratios:
            ratio = ratios.get((row["flow"], row["method"]), {})
            line += [_ratio(ratio.get("latency_speedup"))] + [
                _ratio(ratio.get(f"throughput_speedup_{b}")) for b in batches
            ]
        rows.append(line)
    return headers, rows


def side_by_side(report: dict[str, Any]) -> list[str]:
    """Per-round ratios of the methods timed side by side with the reference (and against their floor)."""
    lines = []
    for row in report["results"]:
        if row["flow"] != REFERENCE_FLOW or "speedup_per_round" not in row:
            continue
        rounds = ", ".join(f"{r:.2f}x" for r in row["speedup_per_round"])
        line = f"{row['method']}: {REFERENCE_FLOW} / varrt per round (alternating): {rounds}"
        if "varrt_over_floor_per_round" in row:
            floor = ", ".join(f"{r:.2f}x" for r in row["varrt_over_floor_per_round"])
            line += f"; varrt / {row['floor']['flow']} per round: {floor}"
        lines.append(line)
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
