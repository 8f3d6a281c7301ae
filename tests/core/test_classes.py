"""Class specs: parsing, validation, and the NumPy reference of the in-graph rules."""

import numpy as np
import pytest
from varrt.core.classes import ClassSpec, check_class_ids, check_spec_fits, parse_classes, select_classes
from varrt.core.errors import UsageError


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ("top4+min", ClassSpec("top4+min", None, 5)),
        ("TOP5", ClassSpec("top5", None, 5)),
        (" top2+min ", ClassSpec("top2+min", None, 3)),
        (3, ClassSpec("top3", None, 3)),
        (np.int64(2), ClassSpec("top2", None, 2)),
        ([7, 1, 4], ClassSpec(None, (7, 1, 4), 3)),
        ((0, 9), ClassSpec(None, (0, 9), 2)),
        (np.array([5, 6]), ClassSpec(None, (5, 6), 2)),
        # the command line's text forms
        ("3", ClassSpec("top3", None, 3)),
        ("281,285", ClassSpec(None, (281, 285), 2)),
        (" 7, 1 ,4 ", ClassSpec(None, (7, 1, 4), 3)),
        ("5,", ClassSpec(None, (5,), 1)),
        (ClassSpec("top2", None, 2), ClassSpec("top2", None, 2)),
    ],
)
def test_parse_accepts(classes, expected):
    assert parse_classes(classes, var=expected.k > 1) == expected


@pytest.mark.parametrize("classes", ["top4+min", "top3", "281,285", "0,9,3"])
def test_text_round_trips(classes):
    assert parse_classes(classes).text == classes
    assert parse_classes(parse_classes(classes).text) == parse_classes(classes)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ("top", "unknown class spec"),
        ("bottom3", "unknown class spec"),
        ("top4+max", "unknown class spec"),
        ("top0", "at least 1"),
        (0, "at least 1"),
        (1, "VAR needs at least 2"),
        ("top1", "VAR needs at least 2"),
        ([3], "VAR needs at least 2"),
        ([], "empty"),
        ([1, 1, 2], "distinct"),
        ([1.5, 2], "integers"),
        (True, "classes must be"),
        (2.0, "classes must be"),
        ("1,cat", "must be integers"),
        ("3,3", "distinct"),
        (",", "empty"),
        ("-3", "unknown class spec"),
        (ClassSpec("top1", None, 1), "VAR needs at least 2"),
    ],
)
def test_parse_rejects(classes, message):
    with pytest.raises(UsageError, match=message):
        parse_classes(classes)


def test_single_class_is_fine_without_var():
    assert parse_classes("top1", var=False).k == 1
    assert parse_classes([3], var=False).ids == (3,)


def test_spec_must_fit_the_model():
    check_spec_fits(parse_classes("top4+min"), 5)
    with pytest.raises(UsageError, match="needs 5 classes, but the model has 4"):
        check_spec_fits(parse_classes("top4+min"), 4)
    with pytest.raises(UsageError, match="class id 10 is out of range"):
        check_spec_fits(parse_classes([1, 10]), 10)
    check_spec_fits(parse_classes("top4+min"), None)  # unknown width: checked at run time


def test_check_class_ids():
    ids = check_class_ids([[1, 2], [3, 0]], 4, var=True)
    assert ids.dtype == np.int64 and ids.shape == (2, 2)
    with pytest.raises(UsageError, match="class id -1 is out of range"):
        check_class_ids([[1, -1]], 4)
    with pytest.raises(UsageError, match="class id 4 is out of range"):
        check_class_ids([[1, 4]], 4)
    with pytest.raises(UsageError, match=r"\[N, K\]"):
        check_class_ids([1, 2], 4)
    with pytest.raises(UsageError, match="integers"):
        check_class_ids(np.array([[0.5, 1.0]]), 4)
    with pytest.raises(UsageError, match="VAR needs at least 2"):
        check_class_ids([[1], [2]], 4, var=True)


def test_select_top4_plus_min_matches_a_plain_sort():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 20)).astype(np.float32)
    chosen = select_classes(logits, parse_classes("top4+min"))
    for row, ids in zip(logits, chosen, strict=True):
        ranked = sorted(range(20), key=lambda c: -row[c])
        assert list(ids) == ranked[:4] + [ranked[-1]]


def test_select_topk_and_ids():
    logits = np.array([[0.0, 5.0, 1.0, 3.0]])
    assert select_classes(logits, parse_classes("top3")).tolist() == [[1, 3, 2]]
    assert select_classes(np.zeros((2, 4)), parse_classes([3, 0])).tolist() == [[3, 0], [3, 0]]
