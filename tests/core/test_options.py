"""The options record, the defaults written once, and the one version."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import inspect

import pytest
import varrt
from varrt import cli
from varrt.bench import gpg, insertion_deletion, sanity, speed_reference
from varrt.core import defaults
from varrt.core.classes import ClassSpec
from varrt.core.errors import UsageError
from varrt.core.options import ExplainOptions
from varrt.core.version import __version__
from varrt.explainer import Explainer
from varrt.export import explain_graph
from varrt.kernels import var_maps
from varrt.kernels.var_cupy import var_maps_cupy
from varrt.kernels.var_numpy import var_maps_numpy


def test_defaults_are_the_papers():
    options = ExplainOptions()
    assert (options.method, options.classes, options.temperature, options.tau, options.var_scale) == (
        "guided_backprop", "top4+min", 10.0, 0.01, "none")
    assert options.spec == ClassSpec("top4+min", None, 5)


def test_classes_are_parsed_once_here():
    assert ExplainOptions(classes="281,285").spec.ids == (281, 285)
    assert ExplainOptions(classes=3).spec.rule == "top3"
    assert ExplainOptions(classes="top1", var=False).spec.k == 1


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=True), "batch_size"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(tau=float("inf")), "tau"),
        (dict(var_scale="min"), "VAR scale"),
        (dict(classes="top1"), "VAR needs at least 2"),
        (dict(classes="1,cat"), "integers"),
    ],
)
def test_bad_options_are_usage_errors(changes, words):
    with pytest.raises(UsageError, match=words):
        ExplainOptions(**changes)


def _default(function, name):
    return inspect.signature(function).parameters[name].default


@pytest.mark.parametrize("function", [Explainer, explain_graph, var_maps, var_maps_numpy, var_maps_cupy,
                                      gpg.run_gpg, sanity.run_sanity, insertion_deletion.run_insertion_deletion,
                                      speed_reference.var_torch])
def test_var_defaults_are_written_once(function):
    assert _default(function, "temperature") is defaults.TEMPERATURE
    assert _default(function, "tau") is defaults.TAU


def test_the_explainer_and_the_command_line_share_the_defaults():
    assert _default(Explainer, "method") == defaults.METHOD
    assert _default(Explainer, "classes") == defaults.CLASSES
    assert _default(Explainer, "var_scale") == defaults.VAR_SCALE
    args = cli.build_parser().parse_args(["explain", "model.onnx", "image.png", "--out", "out"])
    assert (args.method, args.classes, args.temperature, args.tau, args.var_scale) == (
        defaults.METHOD, defaults.CLASSES, defaults.TEMPERATURE, defaults.TAU, defaults.VAR_SCALE)
    export = cli.build_parser().parse_args(["export", "model.onnx", "-o", "g.onnx", "-m", "gradient"])
    assert (export.temperature, export.tau, export.var_scale) == (defaults.TEMPERATURE, defaults.TAU, "none")


def test_one_version_for_the_code_and_the_metadata():
    assert varrt.__version__ == __version__ == importlib.metadata.version("varrt")


def test_the_package_is_marked_typed():
    assert (importlib.resources.files("varrt") / "py.typed").is_file()
