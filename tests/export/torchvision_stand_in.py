"""Importing packages that import torchvision (timm, pytorch-grad-cam) where torchvision cannot load.

timm and pytorch-grad-cam import torchvision when they are imported (timm: FrozenBatchNorm2d in
timm.layers, transforms in timm.data; pytorch-grad-cam: transforms in utils.image, model targets),
although the parts the tests use never call it. PyPI's torchvision wheels are CUDA builds that cannot
load beside the CPU torch ("operator torchvision::nms does not exist"), so where torchvision fails to
import, the package is imported against a stand-in module whose attributes raise if anything calls
them; the stand-in is removed again once the package is imported.
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
def _torchvision_stand_in() -> Iterator[None]:
    finder = _StandInFinder()
    _forget_torchvision()  # what a failed import of the real one left behind
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        _forget_torchvision()


def import_without_torchvision(name: str) -> types.ModuleType:
    try:
        import torchvision  # noqa: F401
    except Exception:  # RuntimeError for PyPI's CUDA build beside the CPU torch, ImportError if absent
        with _torchvision_stand_in():
            return importlib.import_module(name)
    return importlib.import_module(name)
