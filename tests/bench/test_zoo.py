"""The zoo sweep's harness (varrt.bench.zoo) on its tiny CI models, and its bookkeeping.

Each tiny model (timm's test_resnet and test_vit, Keras MobileNetV3Small, Paddle
mobilenet_v3_small, all at 64x64) is built with random weights and checked in the three forms
against its framework's float64 autodiff by the sweep itself (a child process per model, results
appended, a second run resuming); a framework that is not installed is skipped. A subject whose
reference is deliberately wrong shows that the harness reports "wrong" rather than "ok"."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from varrt.bench.zoo import matrix, sweep
from varrt.bench.zoo.__main__ import main
from varrt.bench.zoo.catalog import TINY, Entry
from varrt.bench.zoo.harness import FORMS, REL_TOL, Record, check


def _sweep(entry: Entry, out: pathlib.Path) -> list[Record]:
    """The sweep itself: the model checked in a child process (TensorFlow, Paddle and torch do not
    all load into one process: Paddle's import segfaults after the other two)."""
    missing = sweep.missing_framework(entry)
    if missing:
        pytest.skip(f"{missing} is not installed (pip install -e '.[keras,zoo-paddle]')")
    return sweep.sweep([entry], FORMS, ("gradient",), out, timeout=900, rerun=False)


@pytest.mark.parametrize("entry", TINY, ids=lambda e: f"{e.exporter}-{e.key}")
def test_tiny_model_matches_its_framework_in_every_form(entry: Entry, tmp_path: pathlib.Path) -> None:
    records = _sweep(entry, tmp_path)
    assert [r.form for r in records] == list(FORMS)
    for r in records:
        assert r.status == "ok", f"{r.form}: {r.status}: {r.reason}"
        assert r.error is not None and r.error < REL_TOL
        # measured: 3.8e-7 test_resnet, 7.0e-7 test_vit, 2e-6..6e-6 Paddle, 2.0e-4 Keras MobileNetV3Small (whose
        # own float32 gradient is 1.5e-4 off its float64 one); a wrong rule or layout gives O(1)
        assert r.framework_f32_error is not None and r.error < max(1e-4, 10 * r.framework_f32_error)
    # resumed: a second run finds every cell checked and starts no worker
    written = (tmp_path / matrix.RESULTS).read_text()
    assert sweep.sweep([entry], FORMS, ("gradient",), tmp_path, timeout=900, rerun=False) == records
    assert (tmp_path / matrix.RESULTS).read_text() == written
    assert "| 1/1 | 1/1 | 1/1 |" in (tmp_path / "matrix.md").read_text()


class _WrongReference:
    """timm's test_resnet whose "reference" gives each image the other's gradient: every check must fail."""

    def __init__(self) -> None:
        from varrt.bench.zoo.torch_zoo import TimmSubject

        self.inner = TimmSubject("test_resnet", "torchscript", 64)
        self.image_shape, self.num_classes = self.inner.image_shape, self.inner.num_classes

    def export(self, form: str):  # noqa: ANN201
        return self.inner.export(form)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.inner.logits(x)

    def gradients(self, x: np.ndarray, class_ids: np.ndarray, double: bool) -> np.ndarray:
        return self.inner.gradients(x, class_ids, double)[::-1].copy()


def test_harness_reports_a_wrong_gradient() -> None:
    if sweep.missing_framework(TINY[0]):
        pytest.skip("timm is not installed")
    records: list[Record] = []
    base = Record("timm-torchscript", "test_resnet@64", "cnn", "", "", "")
    check(_WrongReference(), base, FORMS, ("gradient",), records.append)
    assert [r.status for r in records] == ["wrong"] * 3
    assert all(r.error is not None and r.error > 0.5 for r in records)


def _record(model: str, form: str, status: str, error: float | None = None, reason: str = "") -> Record:
    return Record("timm-torchscript", model, "cnn", form, "gradient", status, error, 1e-6, reason)


def test_results_resume_and_tables(tmp_path) -> None:
    matrix.append(tmp_path, _record("a", "static", "crashed", reason="old"))
    matrix.append(tmp_path, _record("a", "static", "ok", 1e-6))  # a rerun replaces the cell
    matrix.append(tmp_path, _record("a", "dynamic-hw", "refused", reason="ModelError: no rule for X"))
    with open(tmp_path / matrix.RESULTS, "a") as f:
        f.write('{"exporter": "timm-torch')  # a line cut short by a killed sweep
    records = matrix.read(tmp_path)
    assert sorted((r.form, r.status) for r in records) == [("dynamic-hw", "refused"), ("static", "ok")]
    matrix.write_tables(tmp_path, records)
    text = (tmp_path / "matrix.md").read_text()
    assert "| timm-torchscript | 1/1 | - | 0/1 |" in text
    assert "**refused** (1): ModelError: no rule for X — a (torchscript, dynamic-hw)" in text
    assert len(json.loads((tmp_path / "matrix.json").read_text())) == 2
    assert (tmp_path / "matrix.csv").read_text().count("\n") == 3
    assert "| timm-torchscript | 1/1 | - | 0/1 |" in matrix.readme_section(records)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--forms", "static,sideways"], "unknown form sideways"),
        (["--exporters", "caffe"], "unknown exporter caffe"),
        (["--models", "resnet9000"], "unknown model resnet9000"),
        (["--timeout", "0"], "--timeout must be positive"),
        (["--readme"], "does not exist: run the sweep first"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
