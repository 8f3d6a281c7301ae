"""Timing loops shared by the benchmarks: plain repeats, and alternating rounds for a shared
machine whose speed drifts over seconds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


def timed(call: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def timed_in_rounds(
    flows: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    rounds: int,
    *,
    settle: float = 0.0,
    untimed: int = 0,
) -> dict[str, list[float]]:
    """``repeats`` timed calls of each flow, taken in ``rounds`` alternating blocks: a shared
    machine's speed drifts over seconds, and alternation makes the drift hit every flow alike.

    After ``warmup`` calls of each flow, every block starts after ``settle`` seconds and
    ``untimed`` calls, for flows that leave worker threads busy behind them.
    """
    for call in flows.values():
        for _ in range(warmup):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in flows}
    for block in split_evenly(list(range(repeats)), rounds):
        for name, call in flows.items():
            if settle:
                time.sleep(settle)
            seconds[name] += timed(call, len(block), untimed)
    return seconds


def split_evenly(values: list, parts: int) -> list[list]:
    """``values`` in ``parts`` consecutive blocks of near-equal size (none empty)."""
    parts = max(1, min(parts, len(values)))
    bounds = [round(i * len(values) / parts) for i in range(parts + 1)]
    return [values[a:b] for a, b in zip(bounds, bounds[1:])]


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    milliseconds = [1000.0 * s for s in seconds]
    return {
        "median": statistics.median(milliseconds),
        "p90": float(np.percentile(milliseconds, 90)),
        "min": min(milliseconds),
        "samples": len(milliseconds),
    }
