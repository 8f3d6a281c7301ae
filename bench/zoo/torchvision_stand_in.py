"""Importing timm where torchvision cannot load.

timm imports torchvision when it is imported (FrozenBatchNorm2d in timm.layers, transforms in
timm.data), every release does, although its classifiers never call it. PyPI's torchvision wheels
are CUDA builds that cannot load beside the CPU torch ("operator torchvision::nms does not exist"),
so where torchvision fails to import, timm is imported against a stand-in module whose attributes
raise if anything calls them; the stand-in is removed again once timm is imported.

Shared by the zoo sweep (varrt.bench.zoo.torch_zoo) and tests/export/test_timm_models.py.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Placeholder:
    """Any attribute of the stand-in torchvision: usable as a name, a default or a base class."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, item: str) -> _Placeholder:
        return _Placeholder(f"{self._name}.{item}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name}: torchvision cannot be loaded here (a stand-in was imported)")

    def __mro_entries__(self, bases: tuple) -> tuple:
        return (object,)


class _StandInModule(types.ModuleType):
    def __getattr__(self, item: str) -> _Placeholder:
        if item.startswith("__"):
            raise AttributeError(item)
        return _Placeholder(f"{self.__name__}.{item}")


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] != "torchvision":
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _forget_torchvision() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        del sys.modules[name]


@contextmanager
def torchvision_stand_in() -> Iterator[None]:
    """While inside, ``import torchvision`` (and any submodule) gives the stand-in."""
    finder = _StandInFinder()
    _forget_torchvision()  # what a failed import of the real one left behind
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        _forget_torchvision()


def import_without_torchvision(name: str) -> types.ModuleType:
    """Module ``name`` (timm, pytorch_grad_cam), imported beside the real torchvision where that
    loads, else beside the stand-in."""
    try:
        importlib.import_module("torchvision")
    except Exception:  # RuntimeError for PyPI's CUDA build beside the CPU torch, ImportError if absent
        with torchvision_stand_in():
            return importlib.import_module(name)
    return importlib.import_module(name)


def import_timm() -> types.ModuleType:
    return import_without_torchvision("timm")
