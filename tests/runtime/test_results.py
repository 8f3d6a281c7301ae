"""results.parquet and --save: `varrt explain` with the real Explainer on the linear classifier,
whose attributions are W[:, k] (tests/testbed.py), read back with pyarrow alone."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import testbed
from testbed import softmax, top_and_min, var_reference
from varrt import audit, cli
from varrt.images import load_image, preprocessing_for
from varrt.results import SCHEMA, SCHEMA_VERSION, read_results

SHAPE = (3, 8, 8)
NUM_CLASSES = 7
W, B = testbed.linear_weights(SHAPE, NUM_CLASSES)


@pytest.fixture
def setup(tmp_path):
    return testbed.linear_job(tmp_path, W, B, SHAPE, photos=3)


def explain(setup, out, *extra):
    model, labels, photos = setup
    return cli.main(["explain", str(model), *map(str, photos), "-o", str(out), "--labels", str(labels), "-q",
                     "-m", "gradient", "--batch-size", "2", *extra])


def expected_row(photo, model):
    """The row computed here: logits x @ W + b, attributions W[:, k], VAR by testbed's reference."""
    x = load_image(photo, preprocessing_for(model))
    logits = x.reshape(1, -1).astype(np.float64) @ W + B
    ids = top_and_min(logits, 4)[0]
    probabilities = softmax(logits)[0]
    gradients = W.T[ids].reshape(len(ids), *SHAPE)
    var = var_reference(gradients[None])[0]
    m = np.exp(10 * np.abs(gradients) - (10 * np.abs(gradients)).max(axis=0))
    m /= m.sum(axis=0)
    return ids, probabilities, logits[0], gradients, var, float((-(m * np.log(m)).sum(axis=0)).mean())


def test_one_row_per_image_with_the_maps_figures(setup, tmp_path):
    out = tmp_path / "out"
    assert explain(setup, out) == 0
    table = pq.read_table(out / "results.parquet")
    assert table.schema.metadata[b"varrt.schema_version"] == str(SCHEMA_VERSION).encode()
    assert table.schema.remove_metadata() == SCHEMA
    rows = table.to_pylist()
    model, _, photos = setup
    assert [row["path"] for row in rows] == [str(p) for p in photos]
    for photo, row in zip(photos, rows):
        ids, probabilities, logits, _, var, entropy = expected_row(photo, model)
        assert row["stem"] == photo.stem and row["class_ids"] == ids.tolist()
        assert row["class_names"] == [f"thing {i}" for i in ids]
        np.testing.assert_allclose(row["probabilities"], probabilities[ids], rtol=1e-5)
        np.testing.assert_allclose(row["logits"], logits[ids], rtol=1e-5, atol=1e-5)
        assert row["predicted_id"] == int(np.argmax(probabilities)) == ids[0]
        assert row["predicted_name"] == f"thing {ids[0]}"
        assert row["predicted_probability"] == pytest.approx(probabilities.max(), rel=1e-5)
        maps = var.sum(axis=1)
        np.testing.assert_allclose(row["top_mass_share"], [audit.top_mass_share(m) for m in maps], rtol=1e-4)
        assert list(zip(row["peak_row"], row["peak_col"])) == [audit.peak(m) for m in maps]
        np.testing.assert_allclose(row["kept_fraction"], [(v != 0).any(axis=0).mean() for v in var])
        assert row["class_entropy"] == pytest.approx(entropy, rel=1e-5)
        assert 0 < row["class_entropy"] < math.log(len(ids))
    run = read_results(out / "results.parquet").run
    assert run["method"] == "gradient" and run["classes"] == "top4+min" and run["images"] == 3


def test_save_var_keeps_channel_summed_float16_maps_and_summary_only_the_table(setup, tmp_path):
    model, _, photos = setup
    assert explain(setup, tmp_path / "var", "--save", "var") == 0
    assert sorted(p.name for p in (tmp_path / "var").iterdir()) == sorted(
        ["index.html", "results.parquet", "thumbs", *(f"{p.stem}.npz" for p in photos)])
    for photo in photos:
        ids, probabilities, logits, _, var, _ = expected_row(photo, model)
        with np.load(tmp_path / "var" / f"{photo.stem}.npz") as saved:
            assert set(saved.files) == {"class_ids", "class_names", "probabilities", "logits", "var", "layout"}
            assert str(saved["layout"]) == "nchw"
            assert saved["var"].dtype == np.float16 and saved["var"].shape == (len(ids), *SHAPE[1:])
            np.testing.assert_allclose(saved["var"], var.sum(axis=1), rtol=2e-3, atol=1e-3)
            np.testing.assert_array_equal(saved["class_ids"], ids)
    assert explain(setup, tmp_path / "summary", "--save", "summary") == 0
    assert sorted(p.name for p in (tmp_path / "summary").iterdir()) == ["index.html", "results.parquet", "thumbs"]
    # The table does not depend on what else is saved.
    tables = [pq.read_table(tmp_path / name / "results.parquet").replace_schema_metadata(None)
              for name in ("var", "summary")]
    assert tables[0].equals(tables[1])


def test_save_var_without_var_is_a_usage_error(setup, tmp_path, capsys):
    assert explain(setup, tmp_path / "out", "--save", "var", "--no-var") == 2
    assert "--save var" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_var_leaves_the_var_figures_empty(setup, tmp_path):
    assert explain(setup, tmp_path / "out", "--no-var", "--save", "summary") == 0
    row = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()[0]
    assert row["top_mass_share"] is None and row["peak_row"] is None and row["kept_fraction"] is None
    assert row["class_entropy"] > 0


def test_a_failed_run_leaves_the_old_table_and_no_temporary(setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert explain(setup, out, "--save", "summary") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    calls = []

    def disk_full(job, image):
        calls.append(image)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return []

    monkeypatch.setattr(cli, "_write_outputs", disk_full)
    assert explain(setup, out, "--save", "summary") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "results.parquet", "thumbs"]  # no temporary
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
