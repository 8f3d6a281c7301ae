"""Running a batched-step method's graph over chunks of its steps (Captum's ``internal_batch_size``).

A graph exported with ``step_batch`` (export/steps.py) takes the points of one run as an input:
``alphas`` for integrated_gradients, ``sample_weights`` for smoothgrad and gradient_shap. Its
attributions are that run's share of the weighted sum, so the chunks' attributions add up to the
method's: memory grows with ``step_batch`` instead of with all the steps.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from varrt.export import explain_graph
from varrt.export.methods import METHOD_TABLE, default_samples
from varrt.export.steps import STEP_INPUTS


def step_chunk_feeds(method: str, options: dict[str, Any], first: int | None = None) -> list[dict[str, np.ndarray]]:
    """The extra feed of each run, in order; empty when the graph takes its steps all at once.
    ``first``: the first run's number of steps, when it differs from ``step_batch``."""
    chunk = options.get("step_batch")
    kind = METHOD_TABLE[method].batching
    if chunk is None or kind is None:
        return []
    key = "steps" if kind == "interpolate" else "samples"
    given = options.get(key)
    if given is not None:
        count = int(given)
    else:
        steps = inspect.signature(explain_graph).parameters["steps"].default
        count = steps if key == "steps" else default_samples(method)
    if kind == "interpolate":
        values = (np.arange(1, count + 1) / count).astype(np.float32)  # as the graph's own alphas
    else:
        values = np.full(count, 1.0 / count, np.float32)
    name = STEP_INPUTS[kind]
    if first is not None and first < count and chunk < count:  # one run needs no split
        bounds = [0, *range(first, count, chunk)]
    else:
        bounds = [*range(0, count, chunk)]
    return [{name: values[start:stop]} for start, stop in zip(bounds, [*bounds[1:], count])]
