"""Running the sweep: each model in its own process (a per-model timeout; a framework that
crashes or hangs costs one model), results appended as each cell is checked, cells already in
results.jsonl skipped (resume), the tables rewritten after every model."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from varrt.bench.zoo import matrix
from varrt.bench.zoo.catalog import FRAMEWORKS, Entry
from varrt.bench.zoo.harness import Record, Subject, check, one_line

# The module each framework needs; a framework that is not installed is skipped with a note.
REQUIRES = {"timm": ("torch", "timm"), "keras": ("tensorflow", "tf2onnx"), "paddle": ("paddle", "paddle2onnx")}


def missing_framework(entry: Entry) -> str | None:
    """The first module ``entry``'s framework needs that is not installed, or None."""
    return next((m for m in REQUIRES[FRAMEWORKS[entry.exporter]] if importlib.util.find_spec(m) is None), None)


# framework -> its adapter module (a Subject class that builds, exports and differentiates a model)
ADAPTERS = {"timm": "varrt.bench.zoo.torch_zoo", "keras": "varrt.bench.zoo.keras_zoo",
            "paddle": "varrt.bench.zoo.paddle_zoo"}


def subject(entry: Entry, size: int | None = None) -> Subject:
    """The framework's Subject for ``entry`` at ``size`` (default: the entry's, else the model's
    own); imports only that framework."""
    framework = FRAMEWORKS[entry.exporter]
    size = entry.size if size is None else size
    # Each adapter imports its framework (torch, TensorFlow, Paddle) at its top, so only the
    # framework of the entry is loaded: the adapter is imported by name, here.
    adapter = importlib.import_module(ADAPTERS[framework])
    if framework == "timm":
        return adapter.TimmSubject(entry.model, entry.exporter.split("-", 1)[1], size)
    if framework == "keras":
        return adapter.KerasSubject(entry.model, size)
    return adapter.PaddleSubject(entry.model, size)


def _build(entry: Entry, max_size: int | None) -> Subject:
    """At ``max_size`` where the architecture builds and runs there, else at its own size."""
    if max_size is None or entry.size is not None:
        return subject(entry)
    try:
        return subject(entry, max_size)
    except Exception:  # fixed-size architectures (window or patch grids, fixed token counts)
        return subject(entry)


def run_model(entry: Entry, forms: Sequence[str], methods: Sequence[str], emit: Callable[[Record], None],
              max_size: int | None = None) -> None:  # fmt: skip
    """Builds ``entry`` and checks it in this process."""
    base = Record(entry.exporter, entry.key, entry.family, "", "", "")
    started = time.perf_counter()
    try:
        model = _build(entry, max_size)
    except Exception as error:
        for form in forms:
            for method in methods:
                emit(
                    Record(
                        **{
                            **base.to_json(),
                            "form": form,
                            "method": method,
                            "status": "build-failed",
                            "reason": one_line(error),
                            "seconds": round(time.perf_counter() - started, 2),
                        }
                    )
                )
        return
    check(model, base, forms, methods, emit)


def _print(record: Record) -> None:
    error = "" if record.error is None else f" {record.error:.1e}"
    print(f"{record.exporter:20s} {record.model:32s} {record.form:14s} {record.method:17s} "
          f"{record.status}{error} {record.reason} ({record.seconds:.0f} s)", flush=True)  # fmt: skip


def worker(entry: Entry, forms: Sequence[str], methods: Sequence[str], out: pathlib.Path,
           max_size: int | None = None) -> None:  # fmt: skip
    """The child process: checks one model, appending each cell to results.jsonl."""

    def emit(record: Record) -> None:
        matrix.append(out, record)
        _print(record)

    run_model(entry, forms, methods, emit, max_size)


def _todo(entry: Entry, forms: Sequence[str], methods: Sequence[str], done: set[tuple[str, str, str, str]]
          ) -> list[tuple[str, str]]:  # fmt: skip
    return [(f, m) for f in forms for m in methods if (entry.exporter, entry.key, f, m) not in done]


def sweep(entries: Sequence[Entry], forms: Sequence[str], methods: Sequence[str], out: pathlib.Path,
          timeout: float, rerun: bool, max_size: int | None = None) -> list[Record]:  # fmt: skip
    """Checks every entry not already checked (all of them with ``rerun``); returns every record."""
    out.mkdir(parents=True, exist_ok=True)
    # a timeout says nothing about the model: those cells are tried again (with a longer --timeout)
    done = (
        set() if rerun else {(r.exporter, r.model, r.form, r.method) for r in matrix.read(out) if r.status != "timeout"}
    )
    for number, entry in enumerate(entries, 1):
        todo = _todo(entry, forms, methods, done)
        missing = missing_framework(entry)
        if not todo or missing:
            print(
                f"[{number}/{len(entries)}] {entry.exporter} {entry.key}: "
                + (f"skipped, {missing} is not installed" if missing else "already checked"),
                flush=True,
            )
            continue
        print(f"[{number}/{len(entries)}] {entry.exporter} {entry.key}", flush=True)
        status, reason = _run_child(
            entry,
            sorted({f for f, _ in todo}, key=forms.index),
            sorted({m for _, m in todo}, key=methods.index),
            out,
            timeout,
            max_size,
        )
        # cells the child did not write: it timed out or died
        written = {(r.exporter, r.model, r.form, r.method) for r in matrix.read(out)}
        for form, method in _todo(entry, forms, methods, written):
            matrix.append(out, Record(entry.exporter, entry.key, entry.family, form, method, status, reason=reason))
        matrix.write_tables(out, matrix.read(out))
    return matrix.read(out)


def _run_child(entry: Entry, forms: Sequence[str], methods: Sequence[str], out: pathlib.Path, timeout: float,
               max_size: int | None) -> tuple[str, str]:  # fmt: skip
    """Checks one model in a child process; returns the status and reason of cells it left unwritten."""
    command = [sys.executable, "-m", "varrt.bench.zoo", "--worker", entry.exporter, entry.model,
               "--forms", ",".join(forms), "--methods", ",".join(methods), "--out", str(out)]  # fmt: skip
    if entry.size is not None:
        command += ["--size", str(entry.size)]
    if max_size is not None:
        command += ["--max-size", str(max_size)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    with open(out / "worker.log", "a") as log:
        log.write(f"\n=== {entry.exporter} {entry.key}\n")
        log.flush()
        try:
            result = subprocess.run(command, stdout=None, stderr=log, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return "timeout", f"not done within the per-model timeout of {timeout:g} s"
    return "crashed", f"the worker process exited with status {result.returncode}"
