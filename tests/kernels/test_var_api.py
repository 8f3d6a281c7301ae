"""Pin varrt.kernels' signatures and run its docstring examples."""

from __future__ import annotations

import doctest
import inspect

import pytest
import varrt.kernels
from varrt.kernels import maps, var_graph, var_numpy


def test_signatures():  # __all__ is pinned in tests/test_public_api.py
    assert str(inspect.signature(varrt.kernels.var_maps)) == (
        "(attributions: 'Any', temperature: 'float' = 10.0, tau: 'float' = 0.01, scale: 'str' = 'none') -> 'Any'")
    assert str(inspect.signature(varrt.kernels.append_var)) == (
        "(tape: 'ir_tape.Tape', attributions: 'ir.Value', *, temperature: 'float', tau: 'float', "
        "opset: 'int', scale: 'str' = 'none', rank: 'int | None' = None) -> 'ir.Value'")


@pytest.mark.parametrize("module", [maps, var_graph, var_numpy], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
