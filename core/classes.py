"""Which classes an explanation is computed for: parsing and checking class specs.

A spec is either a *rule* that the explanation graph applies to its own logits (so choosing the
classes costs no second forward pass) or a fixed list of *ids*, fed to the graph's ``class_ids``
input:

>>> parse_classes("top4+min")
ClassSpec(rule='top4+min', ids=None, k=5)
>>> parse_classes(3)
ClassSpec(rule='top3', ids=None, k=3)
>>> parse_classes([281, 285])
ClassSpec(rule=None, ids=(281, 285), k=2)

The command line's text forms are the same specs: ``"3"`` is ``"top3"``, ``"281,285"`` the ids.

>>> parse_classes("281,285").text
'281,285'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from varrt.core.errors import UsageError

# "top4+min": the 4 most likely classes, then the least likely one (the VAR paper's choice).
_RULE = re.compile(r"top(\d+)(\+min)?")

@dataclass(frozen=True)
class ClassSpec:
    """A parsed class spec: exactly one of ``rule`` (canonical string) and ``ids`` is set."""

    rule: str | None
    ids: tuple[int, ...] | None
    k: int

    @property
    def text(self) -> str:
        """The spec as the command line writes it: ``"top4+min"`` or ``"281,285"``."""
        return self.rule if self.rule is not None else ",".join(str(i) for i in self.ids or ())


ClassesArg = str | int | Sequence[int] | ClassSpec


def parse_classes(classes: ClassesArg | np.ndarray, *, var: bool = True) -> ClassSpec:
    """Parse ``"topK"``, ``"topK+min"``, an int K (= ``"topK"``) or a list of class ids; as text,
    ``"K"`` and ``"id,id,..."`` too (the command line's ``--classes``). A ClassSpec is checked again.

    VAR compares attributions across classes, so it needs at least two (``var=True``).

    >>> parse_classes("top1", var=True)
    Traceback (most recent call last):
    ...
    varrt.core.errors.UsageError: classes 'top1' gives K=1, but VAR needs at least 2 classes
    """
    if isinstance(classes, bool):
        raise UsageError(f"classes must be 'topK', 'topK+min', an int or a list of ids, not {classes!r}")
    if isinstance(classes, ClassSpec):
        spec = classes
    elif isinstance(classes, (int, np.integer)):
        spec = _rule_spec(int(classes), with_min=False, text=str(classes))
    elif isinstance(classes, str):
        spec = _parse_text(classes)
    elif isinstance(classes, (Sequence, np.ndarray)):
        spec = _ids_spec([_as_class_id(i) for i in np.asarray(classes).ravel().tolist()])
    else:
        raise UsageError(f"classes must be 'topK', 'topK+min', an int or a list of ids, not {classes!r}")
    if var and spec.k < 2:
        shown = classes.text if isinstance(classes, ClassSpec) else classes
        raise UsageError(f"classes {shown!r} gives K={spec.k}, but VAR needs at least 2 classes")
    return spec


def _parse_text(classes: str) -> ClassSpec:
    text = classes.strip().lower()
    if "," in text:
        try:
            ids = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise UsageError(f"classes {classes!r}: a list of class ids must be integers, e.g. 281,285") from None
        return _ids_spec(ids)
    if text.isdigit():
        return _rule_spec(int(text), with_min=False, text=classes)
    match = _RULE.fullmatch(text)
    if match is None:
        raise UsageError(f"unknown class spec {classes!r}: use 'topK', 'topK+min', an int K or a list of ids")
    return _rule_spec(int(match.group(1)), with_min=match.group(2) is not None, text=classes)


def _ids_spec(ids: Sequence[int]) -> ClassSpec:
    if not ids:
        raise UsageError("classes: the list of class ids is empty")
    if len(set(ids)) != len(ids):
        raise UsageError(f"classes: class ids must be distinct, got {list(ids)}")
    return ClassSpec(rule=None, ids=tuple(ids), k=len(ids))


def _rule_spec(top: int, *, with_min: bool, text: str) -> ClassSpec:
    if top < 1:
        raise UsageError(f"classes {text!r}: K must be at least 1")
    rule = f"top{top}+min" if with_min else f"top{top}"
    return ClassSpec(rule=rule, ids=None, k=top + int(with_min))


def _as_class_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UsageError(f"classes: class ids must be integers, got {value!r}")
    return int(value)


def check_spec_fits(spec: ClassSpec, num_classes: int | None) -> None:
    """Fail when the spec asks for more classes, or other ids, than the model has."""
    if num_classes is None:
        return
    if spec.ids is not None:
        check_class_ids(np.asarray([spec.ids], dtype=np.int64), num_classes)
    elif spec.k > num_classes:
        raise UsageError(f"classes {spec.rule!r} needs {spec.k} classes, but the model has {num_classes}")


def check_class_ids(class_ids: Any, num_classes: int | None, *, var: bool = False) -> np.ndarray:
    """Return ``class_ids`` as an int64 [N, K] NumPy array after checking range and shape.

    Out-of-range ids would silently give all-zero attributions (the graph's one-hot seed
    matches nothing), so they are an error here.
    """
    ids = np.asarray(class_ids)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise UsageError(f"class_ids must be an integer array [N, K], got shape {tuple(ids.shape)}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise UsageError(f"class_ids must be integers, got dtype {ids.dtype}")
    if var and ids.shape[1] < 2:
        raise UsageError(f"class_ids gives K={ids.shape[1]}, but VAR needs at least 2 classes")
    if num_classes is not None and ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise UsageError(f"class id {bad} is out of range: the model has {num_classes} classes")
    return ids.astype(np.int64, copy=False)


def select_classes(logits: np.ndarray, spec: ClassSpec) -> np.ndarray:
    """Apply ``spec`` to logits [N, num_classes] in NumPy: the reference for the in-graph rule.

    Ties go to the lower class id, as in TopK.

    >>> select_classes(np.array([[0.1, 3.0, 2.0, -1.0]]), parse_classes("top2+min"))
    array([[1, 2, 3]])
    """
    logits = np.asarray(logits)
    if spec.ids is not None:
        return np.tile(np.asarray(spec.ids, dtype=np.int64), (logits.shape[0], 1))
    assert spec.rule is not None
    match = _RULE.fullmatch(spec.rule)
    assert match is not None
    top = int(match.group(1))
    order = np.argsort(-logits, axis=1, kind="stable")[:, :top]
    if match.group(2):
        order = np.concatenate([order, np.argmin(logits, axis=1)[:, None]], axis=1)
    return order.astype(np.int64)
