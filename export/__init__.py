"""varrt.export: ONNX-to-ONNX reverse-mode autodiff and the explanation methods.

>>> from varrt.export import explain_graph
>>> graph = explain_graph("model.onnx", method="gradcam")   # doctest: +SKIP
"""

from varrt.export.explanation import explain_graph
from varrt.export.methods import METHODS

__all__ = ["METHODS", "explain_graph"]
