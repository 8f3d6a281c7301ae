"""varrt: class-relevant saliency maps (VAR) for any ONNX image classifier.

>>> import varrt
>>> explainer = varrt.Explainer("model.onnx", method="guided_backprop", classes="top4+min")  # doctest: +SKIP
>>> explanation = explainer(images)                                   # doctest: +SKIP
>>> explanation.var.shape                                             # doctest: +SKIP
(8, 5, 3, 224, 224)

``import varrt`` stays light: the public names below are imported on first use, and no backend
runtime (onnxruntime, cupy, tensorrt) is loaded until an Explainer needs one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from varrt.core.version import __version__

# public name -> module that defines it (imported lazily by __getattr__)
_LAZY = {
    "Explainer": "varrt.explainer",
    "Explanation": "varrt.explainer",
}

__all__ = ["Explainer", "Explanation", "__version__"]

if TYPE_CHECKING:
    from varrt.explainer import Explainer, Explanation


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'varrt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
