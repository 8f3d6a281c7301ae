"""A bad image in `varrt explain`: an error row in results.parquet, the other images explained as if
it were not there (their rows and .npz equal a run without it), the summary and index.html count it;
a run where every image fails is one line and writes nothing. The real Explainer on the linear
classifier of tests/testbed.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import testbed
from varrt import cli, pipeline
from varrt.explainer import Explainer
from varrt.images import Preprocessing

SHAPE = (3, 8, 8)
W, B = testbed.linear_weights(SHAPE, 7)


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "linear.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE, preset="none"), model)
    good = [testbed.write_png(tmp_path / f"good{i}.png", size=(20, 16), seed=i) for i in range(3)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return model, good, broken


def explain(model, images, out, *extra):
    return cli.main(["explain", str(model), *map(str, images), "-o", str(out), "-m", "gradient",
                     "--classes", "top2", "--batch-size", "2", *extra])


def test_a_bad_image_is_an_error_row_and_the_others_are_explained(files, tmp_path, capsys):
    model, good, broken = files
    # The broken file shares a batch with good1: that batch's good image must be explained all the same.
    assert explain(model, [good[0], broken, good[1], good[2]], tmp_path / "mixed") == 0
    out = capsys.readouterr().out
    assert "broken.png: error: cannot decode image" in out
    assert "varrt: 3 explanations" in out and "1 image not explained" in out
    assert explain(model, good, tmp_path / "clean", "-q") == 0

    mixed = pq.read_table(tmp_path / "mixed" / "results.parquet").to_pylist()
    clean = pq.read_table(tmp_path / "clean" / "results.parquet").to_pylist()
    assert [row["stem"] for row in mixed] == ["good0", "broken", "good1", "good2"]
    error_row = mixed[1]
    assert error_row["path"] == str(broken) and "broken.png" in error_row["error"]
    assert all(value is None for key, value in error_row.items() if key not in ("path", "stem", "error"))
    assert [row for i, row in enumerate(mixed) if i != 1] == clean  # every column, every value
    assert all(row["error"] is None for row in clean)
    for name in ("good0", "good1", "good2"):
        with np.load(tmp_path / "mixed" / f"{name}.npz") as a, np.load(tmp_path / "clean" / f"{name}.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not (tmp_path / "mixed" / "broken.npz").exists()
    page = (tmp_path / "mixed" / "index.html").read_text(encoding="utf-8")
    assert "<b>errors</b> 1" in page and "<b>errors</b> 0" in (tmp_path / "clean" / "index.html").read_text()
    assert "cannot decode image" in page


def test_gradients_of_the_explained_rows_are_the_linear_models_weights(files, tmp_path):
    """The rows beside an error row are real explanations: d logit_k / d x = W[:, k]."""
    model, good, broken = files
    assert explain(model, [broken, good[0]], tmp_path / "out", "-q") == 0
    with np.load(tmp_path / "out" / "good0.npz") as saved:
        expected = W[:, saved["class_ids"]].T.reshape(-1, *SHAPE)
        np.testing.assert_allclose(saved["attributions"], expected, rtol=1e-6)


def test_when_every_image_fails_it_is_one_line_and_nothing_is_written(files, tmp_path, capsys):
    model, _, broken = files
    other = tmp_path / "empty.jpg"
    other.write_bytes(b"")
    assert explain(model, [broken, other], tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("varrt: error: no image explained: cannot decode image")
    assert "broken.png" in err and "and the other 1 images" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:overflow encountered in divide")  # the point of this std
def test_a_batch_the_explainer_refuses_is_retried_image_by_image(files):
    """The Explainer refuses a batch holding Inf; explain_pixels then blames the images that hold it
    and explains the others, with their real gradients."""
    model, good, _ = files
    explainer = Explainer(str(model), method="gradient", classes="top2")
    # std = the smallest float32: every nonzero pixel normalises to Inf; an all-black image stays 0.
    prep = Preprocessing(size=SHAPE[1:], mean=(0.0,), std=(1e-45,))
    photo = pipeline.decode(str(good[0]), prep)
    black = np.zeros_like(photo)
    outcomes = pipeline.explain_pixels(["a.png", "b.png", "c.png"], ["a", "b", "c"], [photo, black, photo],
                                       explainer, prep)
    assert [type(o).__name__ for o in outcomes] == ["Failed", "Explained", "Failed"]
    assert [o.stem for o in outcomes] == ["a", "b", "c"] and "inf" in outcomes[0].error.lower()
    explained = outcomes[1]
    np.testing.assert_allclose(explained.attributions, W[:, explained.class_ids].T.reshape(-1, *SHAPE), rtol=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--actors", "2"], "--actors: for runs on Ray only (add --ray)"),
        (["--ray", "not-an-address"], "--ray ADDRESS must be auto, ray://HOST:PORT or HOST:PORT"),
        (["--ray", "--actors", "0"], "--actors must be at least 1"),
    ],
)
def test_ray_options_are_checked_before_anything_runs(files, tmp_path, capsys, extra, message):
    model, good, _ = files
    assert explain(model, good[:1], tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_the_bar_and_rows_keep_the_images_order(files, tmp_path):
    model, good, broken = files
    assert explain(model, [broken, *good[::-1]], tmp_path / "out", "-q") == 0
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert [Path(row["path"]).name for row in rows] == ["broken.png", "good2.png", "good1.png", "good0.png"]
