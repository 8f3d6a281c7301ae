"""The VAR Explainer the quality benches build for each method."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any


def fed_ids_explainer(
    factory: Callable[..., Any],
    model: str | os.PathLike[str],
    method: str,
    k: int,
    backend: str,
    temperature: float,
    tau: float,
    batch_size: int,
    method_options: Mapping[str, Mapping[str, Any]] | None,
    var_scale: str = "none",
) -> Any:
    """The VAR explainer of one method, for graphs that take K class_ids as an input."""
    # The ids here only pick the graph with a class_ids input of K classes; each call passes
    # its own, which override them.
    return factory(
        os.fspath(model),
        method=method,
        classes=list(range(k)),
        backend=backend,
        var=True,
        temperature=temperature,
        tau=tau,
        var_scale=var_scale,
        batch_size=batch_size,
        **dict((method_options or {}).get(method, {})),
    )
