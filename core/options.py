"""The options of an explanation: one record that ``varrt.Explainer`` and ``varrt explain`` share.

The command line fills it from its arguments, the Explainer from its keyword arguments; either way
the values are checked here, once, and the defaults are ``varrt.core.defaults``'.

>>> options = ExplainOptions(method="gradcam", classes="281,285")
>>> options.spec.ids, options.temperature
((281, 285), 10.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from varrt.core import defaults
from varrt.core.classes import ClassesArg, ClassSpec, parse_classes
from varrt.core.errors import UsageError


@dataclass(frozen=True)
class ExplainOptions:
    """What is explained and how: method, classes, VAR's settings, where it runs, batch size.

    ``method_options`` go to the exporter (``layer``, ``steps``, ``baseline``, ``samples``,
    ``noise``); which method names and options exist is the exporter's to say, not checked here.
    """

    method: str = defaults.METHOD
    classes: ClassesArg = defaults.CLASSES
    var: bool = True
    temperature: float = defaults.TEMPERATURE
    tau: float = defaults.TAU
    var_scale: str = defaults.VAR_SCALE
    backend: str = "auto"
    device: str | int = "auto"
    batch_size: int = 16
    method_options: Mapping[str, Any] = field(default_factory=dict)
    #: ``classes`` parsed (and checked against ``var``).
    spec: ClassSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"temperature must be a positive number, got {self.temperature}")
        if not math.isfinite(self.tau):
            raise UsageError(f"tau must be a finite number, got {self.tau}")
        if self.var_scale not in defaults.VAR_SCALES:
            raise UsageError(f"unknown VAR scale {self.var_scale!r}: use one of {', '.join(defaults.VAR_SCALES)}")
        # Frozen: the parsed spec is set once, here.
        object.__setattr__(self, "spec", parse_classes(self.classes, var=self.var))
