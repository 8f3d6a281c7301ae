"""The public API, pinned (as onnx/ir-py's public_api_test.py does): the names are listed literally,
so changing what users import is a deliberate edit of this file, not a side effect."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import varrt
import varrt.export
import varrt.kernels

README = Path(__file__).resolve().parents[1] / "README.md"

ALL = {
    "varrt": ["Explainer", "Explanation", "__version__"],
    "varrt.export": ["METHODS", "explain_graph"],
    "varrt.kernels": ["append_var", "var_maps"],
}

METHODS = ("gradient", "input_x_gradient", "guided_backprop", "integrated_gradients", "smoothgrad", "gradcam",
           "guided_gradcam", "deconvolution")

# What README's Python examples import: (module, name), name None for `import module`.
README_IMPORTS = {
    ("numpy", None),
    ("varrt", None),
    ("varrt.data", "demo_images"),
    ("varrt.data", "demo_model_path"),
    ("varrt.images", "load_image"),
    ("varrt.images", "preprocessing_for"),
    ("varrt.export", "explain_graph"),
}

# The dotted varrt names README's text refers to in `code` spans.
README_NAMES = {
    "varrt.Explainer",
    "varrt.export.explain_graph",
    "varrt.export.tensorrt_support.tensorrt_problems",
    "varrt.kernels.var_maps",
    "varrt.bench.speed_reference",
    "varrt.bench.zoo",
}

EXPLANATION_FIELDS = {
    "class_ids": Any,
    "logits": Any,
    "probabilities": Any,
    "attributions": Any,
    "var": Any | None,
    "method": str,
    "backend": str,
}

# Keyword arguments README and the docstrings document, with their defaults; others may be added.
EXPLAINER_ARGUMENTS = {
    "model": inspect.Parameter.empty,
    "method": "guided_backprop",
    "classes": "top4+min",
    "backend": "auto",
    "device": "auto",
    "var": True,
    "temperature": 10.0,
    "tau": 0.01,
    "batch_size": 16,
    "cache_dir": None,
    "var_in_graph": False,
    "var_scale": "none",
    "backend_options": None,
}
EXPLAIN_GRAPH_ARGUMENTS = {
    "model": inspect.Parameter.empty,
    "method": "gradient",
    "layer": None,
    "steps": 32,
    "baseline": 0.0,
    "samples": 16,
    "noise": 0.15,
    "var": False,
    "temperature": 10.0,
    "tau": 0.01,
    "var_scale": "none",
    "classes": None,
    "batch": None,
}


def _resolve(dotted: str) -> Any:
    """The object a dotted name refers to: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            value = getattr(value, attribute)
        return value
    raise ImportError(dotted)


@pytest.mark.parametrize("module", list(ALL))
def test_all_is_pinned_and_every_name_resolves(module):
    imported = importlib.import_module(module)
    assert imported.__all__ == ALL[module]
    for name in imported.__all__:
        assert getattr(imported, name) is not None, f"{module}.{name}"
    assert "__version__" in ALL["varrt"] and isinstance(varrt.__version__, str)


def test_methods_are_pinned():
    assert varrt.export.METHODS == METHODS


def test_readme_examples_import_the_pinned_names():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    imports = set()
    for node in (n for block in blocks for n in ast.walk(ast.parse(block))):
        if isinstance(node, ast.Import):
            imports |= {(alias.name, None) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imports |= {(node.module, alias.name) for alias in node.names}
    assert imports == README_IMPORTS
    for module, name in sorted(imports, key=str):
        _resolve(module if name is None else f"{module}.{name}")


def test_readme_text_names_the_pinned_names():
    text = re.sub(r"```.*?```", "", README.read_text(encoding="utf-8"), flags=re.S)  # examples: above
    spans = re.findall(r"`([^`]*)`", text)
    names = {match for span in spans for match in re.findall(r"\bvarrt(?:\.[A-Za-z_]\w*)+", span)}
    assert names == README_NAMES
    for name in sorted(names):
        _resolve(name)


def test_explanation_fields_are_typed_as_pinned():
    assert dataclasses.is_dataclass(varrt.Explanation)
    fields = dataclasses.fields(varrt.Explanation)
    assert [field.name for field in fields] == list(EXPLANATION_FIELDS)
    assert typing.get_type_hints(varrt.Explanation) == EXPLANATION_FIELDS
    assert {field.name: field.default for field in fields if field.default is not dataclasses.MISSING} == {
        "method": "",
        "backend": "",
    }


@pytest.mark.parametrize(
    ("function", "expected"),
    [(varrt.Explainer, EXPLAINER_ARGUMENTS), (varrt.export.explain_graph, EXPLAIN_GRAPH_ARGUMENTS)],
    ids=["Explainer", "explain_graph"],
)
def test_documented_arguments_keep_their_defaults(function, expected):
    parameters = inspect.signature(function).parameters
    assert {name: parameters[name].default for name in expected if name in parameters} == expected
    assert list(parameters)[:2] == ["model", "method"]  # the two that may be passed by position
