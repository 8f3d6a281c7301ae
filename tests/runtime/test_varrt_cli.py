"""The `varrt` command line: help, errors, and explain/export/demo end to end.

The first group runs `varrt explain` in-process with the real Explainer on tiny models whose
attributions are known in closed form (tests/testbed.py), so file formats, options and numbers are
checked together; the second runs the real commands in a subprocess, on tiny models and on the
bundled model and photos.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import testbed
from PIL import Image
from testbed import softmax, top_and_min, var_reference
from varrt import cli, data
from varrt.images import load_image, preprocessing_for


def run_varrt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return testbed.run_varrt(*args, cwd=cwd)


# --- help -----------------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _check_documented(name: str, parser: argparse.ArgumentParser) -> None:
    assert parser.description, f"`{name}` has no description"
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                _check_documented(f"{name} {sub_name}", sub)
            continue
        assert action.help, f"`{name}` option {action.option_strings or action.dest} has no help"
        for option in action.option_strings:
            assert option in text


def test_every_subcommand_and_option_is_documented():
    parser = cli.build_parser()
    assert {"demo", "explain", "export"} <= set(_subparsers(parser))
    _check_documented("varrt", parser)


def test_help_through_the_entry_point(tmp_path):
    top = run_varrt("--help", cwd=tmp_path)
    assert top.returncode == 0
    for name in ("demo", "explain", "export"):
        assert name in top.stdout
        sub = run_varrt(name, "--help", cwd=tmp_path)
        assert sub.returncode == 0 and f"usage: varrt {name}" in sub.stdout
    version = run_varrt("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("varrt ")


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: varrt" in capsys.readouterr().err


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", "--no-such-option"])
    assert exit_info.value.code == 2


# --- explain in-process, the real Explainer on tiny models ------------------------------------------
SHAPE = (3, 8, 8)
NUM_CLASSES = 7
W, B = testbed.linear_weights(SHAPE, NUM_CLASSES)


def gradients(class_ids):
    """d logit_k / d x of the linear model for each id in ``class_ids`` [K]: [K, *SHAPE]."""
    return W.T[np.asarray(class_ids)].reshape(len(class_ids), *SHAPE)


def preprocessed(photo: Path, model: Path) -> np.ndarray:
    """What the model sees of ``photo``: varrt's preprocessing, tested in test_images.py."""
    return load_image(photo, preprocessing_for(model))


@pytest.fixture
def linear_setup(tmp_path):
    """The linear classifier (preset 'none'), 7 labels and two photos of other sizes than 8x8."""
    return testbed.linear_job(tmp_path, W, B, SHAPE, photos=2)


def test_explain_writes_npz_and_png_per_image(linear_setup, tmp_path, capsys):
    model, labels, photos = linear_setup
    out = tmp_path / "out"
    argv = ["explain", str(model), *map(str, photos), "--out", str(out), "--labels", str(labels), "--batch-size", "1"]
    assert cli.main(argv) == 0
    for photo in photos:
        x = preprocessed(photo, model)
        logits = x.reshape(1, -1).astype(np.float64) @ W + B
        ids = top_and_min(logits, 4)[0]
        with np.load(out / f"{photo.stem}.npz") as saved:
            np.testing.assert_array_equal(saved["class_ids"], ids)
            assert saved["class_ids"].dtype == np.int64
            assert list(saved["class_names"]) == [f"thing {i}" for i in ids]
            np.testing.assert_allclose(saved["logits"], logits[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(saved["probabilities"], softmax(logits)[0, ids], rtol=1e-5)
            # The default method is guided backprop: on a model without ReLUs, the gradient.
            np.testing.assert_allclose(saved["attributions"], gradients(ids), rtol=1e-6)
            np.testing.assert_allclose(saved["var"], var_reference(gradients(ids)[None])[0], rtol=1e-5, atol=1e-6)
        with Image.open(out / f"{photo.stem}.png") as png:
            png.load()
            assert png.format == "PNG" and png.width == 2 * SHAPE[2] + 3 * 6
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "photo1.png" in printed


def test_explain_options_reach_the_explainer(tmp_path):
    """Integrated gradients on logits = flatten(x * x) @ W + b: with S right-Riemann steps the
    attribution is x^2 W (S + 1) / S, so --steps shows in the numbers, as do --temperature, --tau,
    --classes and --no-var."""
    model = tmp_path / "square.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE, square=True, preset="none"), model)
    photo = testbed.write_png(tmp_path / "photo.png", size=(9, 9))
    x = preprocessed(photo, model)
    expected = x[None] ** 2 * gradients([1, 4]) * 9 / 8
    argv = ["explain", str(model), str(photo), "-m", "integrated_gradients", "--classes", "1,4", "--steps", "8",
            "--quiet", "--no-overlays"]
    assert cli.main([*argv, "-o", str(tmp_path / "var"), "--temperature", "5", "--tau", "0.3"]) == 0
    with np.load(tmp_path / "var" / "photo.npz") as saved:
        np.testing.assert_array_equal(saved["class_ids"], [1, 4])
        np.testing.assert_allclose(saved["attributions"], expected, rtol=1e-5, atol=1e-6)
        var = var_reference(expected[None], temperature=5.0, tau=0.3)[0]
        assert not np.allclose(var, var_reference(expected[None])[0])  # T and tau matter here
        np.testing.assert_allclose(saved["var"], var, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "var" / "photo.png").exists()
    assert cli.main([*argv, "-o", str(tmp_path / "no-var"), "--no-var"]) == 0
    with np.load(tmp_path / "no-var" / "photo.npz") as saved:
        assert "var" not in saved
        np.testing.assert_allclose(saved["attributions"], expected, rtol=1e-5, atol=1e-6)


def test_explain_cam_maps_and_directory_input_and_duplicate_names(tmp_path):
    """Grad-CAM of the colour classifier (identity 1x1 conv, ReLU, average pool, Gemm): the map of
    class k is ReLU(sum_c fc[k, c] relu(x_c)) / (H W), at the input's own resolution."""
    model = tmp_path / "colours.onnx"
    onnx.save(testbed.colour_classifier(), model)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / folder / "same.png")
    out = tmp_path / "out"
    argv = ["explain", str(model), str(tmp_path / "a"), str(tmp_path / "b" / "same.png")]
    assert cli.main([*argv, "-o", str(out), "-m", "gradcam", "--classes", "top2", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "index.html", "results.parquet", "same.npz", "same.png", "same_2.npz", "same_2.png", "thumbs"]
    features = np.maximum(preprocessed(tmp_path / "a" / "same.png", model), 0)
    logits = testbed.COLOUR_FC @ features.mean(axis=(1, 2)) + testbed.COLOUR_BIAS
    ids = np.argsort(-logits)[:2]
    cams = np.maximum(np.einsum("kc,chw->khw", testbed.COLOUR_FC[ids], features) / features[0].size, 0)
    for name in ("same", "same_2"):
        with np.load(out / f"{name}.npz") as saved:
            np.testing.assert_array_equal(saved["class_ids"], ids)
            np.testing.assert_allclose(saved["attributions"], cams, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["explain", "{model}", "{tmp}/missing.jpg", "-o", "{tmp}/o"], 1, "no such image file"),
        (["explain", "{tmp}/missing.onnx", "{photo}", "-o", "{tmp}/o"], 1, "no such model file"),
        (["explain", "{model}", "{tmp}/broken.jpg", "-o", "{tmp}/o"], 1, "broken.jpg"),
        (["explain", "{model}", "{photo}", "-o", "{tmp}/o", "--classes", "1,x"], 2, "class ids"),
        (
            ["explain", "{model}", "{photo}", "-o", "{tmp}/o", "--preset", "none", "--mean", "1", "2"],
            2,
            "mean",
        ),
        (["explain", "{model}", "{photo}", "-o", "{tmp}/o", "--labels", "{tmp}/none.txt"], 1, "labels"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys, argv, status, message):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    values = {"model": str(data.demo_model_path()), "photo": str(data.demo_images()[0]), "tmp": str(tmp_path)}
    assert cli.main([part.format(**values) for part in argv]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("varrt: error: ") and message in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert cli.main(["--debug", "explain", str(data.demo_model_path()), str(tmp_path / "x.jpg"), "-o", "o"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("varrt: error:")


def test_unexpected_exceptions_are_one_line_too(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(cli, "_run_demo", boom)
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "something broke" in err and "--debug" in err


def test_save_model_is_atomic_and_loadable(tmp_path):
    proto = testbed.tiny_cnn()
    target = tmp_path / "sub" / "m.onnx"
    cli.save_model(proto, target)
    onnx.checker.check_model(onnx.load(str(target)))
    assert [p.name for p in target.parent.iterdir()] == ["m.onnx"]


# --- the real commands -----------------------------------------------------------------------------
def run_graph(path: Path, images: np.ndarray, class_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All outputs of an exported graph, run by ONNX Runtime; ``class_ids`` fed when it is an input."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input": images}
    if "class_ids" in [value.name for value in session.get_inputs()]:
        feeds["class_ids"] = class_ids
    return dict(zip([value.name for value in session.get_outputs()], session.run(None, feeds), strict=True))


def test_export_writes_an_explanation_graph(tmp_path):
    model = tmp_path / "linear.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE), str(model))
    result = run_varrt("export", str(model), "-o", "explain.onnx", "--method", "gradient", "--var", "--tau", "0.05",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "explain.onnx" in result.stdout
    graph = onnx.load(str(tmp_path / "explain.onnx"))
    onnx.checker.check_model(graph)
    assert [value.name for value in graph.graph.input] == ["input", "class_ids"]
    assert [value.name for value in graph.graph.output] == ["logits", "attributions", "var_attributions"]
    images = testbed.images(2, SHAPE)
    ids = np.array([[0, 6, 3], [2, 2, 5]])
    outputs = run_graph(tmp_path / "explain.onnx", images, ids)
    np.testing.assert_allclose(outputs["logits"], images.reshape(2, -1) @ W + B, rtol=1e-5, atol=1e-5)
    expected = np.stack([gradients(row) for row in ids])
    np.testing.assert_allclose(outputs["attributions"], expected, rtol=1e-6)
    np.testing.assert_allclose(outputs["var_attributions"], var_reference(expected, tau=0.05), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("spec", "top"), [("3", 3), ("top3", 3), ("top2+min", None)])
def test_export_class_rules_choose_in_the_graph(tmp_path, spec, top):
    model = tmp_path / "linear.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE), str(model))
    result = run_varrt("export", str(model), "-o", "explain.onnx", "-m", "gradient", "--classes", spec, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    images = testbed.images(4, SHAPE)
    outputs = run_graph(tmp_path / "explain.onnx", images)
    logits = images.reshape(4, -1).astype(np.float64) @ W + B
    ids = top_and_min(logits, top, with_min=False) if top else top_and_min(logits, 2)
    np.testing.assert_array_equal(outputs["class_ids"], ids)
    np.testing.assert_allclose(outputs["attributions"], np.stack([gradients(row) for row in ids]), rtol=1e-6)


def test_export_with_explicit_class_ids(tmp_path):
    model = tmp_path / "linear.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE), str(model))
    result = run_varrt("export", str(model), "-o", "explain.onnx", "-m", "gradient", "--classes", "1,4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    images = testbed.images(2, SHAPE)
    outputs = run_graph(tmp_path / "explain.onnx", images, np.array([[1, 4]] * 2))
    if "class_ids" in outputs:
        np.testing.assert_array_equal(outputs["class_ids"], [[1, 4]] * 2)
    np.testing.assert_allclose(outputs["attributions"], np.stack([gradients([1, 4])] * 2), rtol=1e-6)


def test_export_batch_fixes_the_batch_axis_and_is_checked(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(testbed.tiny_cnn(), str(model))
    out = tmp_path / "explain.onnx"
    result = run_varrt("export", str(model), "-o", str(out), "-m", "guided_backprop", "--batch", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    out.unlink()
    result = run_varrt("export", str(model), "-o", str(out), "--method", "smoothgrad", "--batch", "1", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "smoothgrad runs its samples along the batch axis" in result.stderr and not out.exists()


def test_export_unknown_method_is_a_usage_error(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(testbed.tiny_cnn(), str(model))
    result = run_varrt("export", str(model), "-o", str(tmp_path / "x.onnx"), "--method", "nonsense", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("varrt: error:") and result.stderr.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()


def test_explain_on_bundled_photos_with_the_demo_model(tmp_path):
    photos = [str(p) for p in data.demo_images()[:2]]
    result = run_varrt(
        "explain",
        str(data.demo_model_path()),
        *photos,
        "--out",
        "out",
        "--method",
        "gradient",
        "--classes",
        "top2+min",
        "--batch-size",
        "2",
        "--backend",
        "onnxruntime",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for photo in photos:
        stem = Path(photo).stem
        with np.load(tmp_path / "out" / f"{stem}.npz") as saved:
            assert saved["class_ids"].shape == (3,)
            assert saved["attributions"].shape == (3, 3, 224, 224) == saved["var"].shape
            assert np.isfinite(saved["attributions"]).all() and np.abs(saved["attributions"]).sum() > 0
            probabilities = saved["probabilities"]
            assert probabilities[0] >= probabilities[1] >= probabilities[2]
        with Image.open(tmp_path / "out" / f"{stem}.png") as png:
            png.load()
            assert png.size[0] == 2 * 224 + 3 * 6
    assert "espresso" in result.stdout or "cat" in result.stdout


def test_demo(tmp_path):
    # In a fresh interpreter, so that it also shows the runtime never imports torch.
    code = (
        "import sys, varrt.cli\n"
        "status = varrt.cli.main(['demo', '--out', 'demo-out'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(status)\n"
    )
    env = dict(os.environ, VARRT_CACHE_DIR=str(tmp_path / ".varrt-cache"))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "demo-out"
    for photo in data.demo_images():
        with np.load(out / f"{photo.stem}.npz") as saved:
            ids = saved["class_ids"]
            assert ids.shape == (5,) and saved["var"].shape == (5, 3, 224, 224)
            assert saved["probabilities"][-1] == saved["probabilities"].min()  # the "+min" class
        with Image.open(out / f"{photo.stem}.png") as png:
            png.load()
            assert png.format == "PNG"
    table = pq.read_table(out / "results.parquet")
    assert table.column("path").to_pylist() == [str(p) for p in data.demo_images()]
    predicted = dict(zip(table.column("stem").to_pylist(), table.column("predicted_name").to_pylist()))
    assert predicted["coffee"] == "espresso"
    lines = result.stdout
    assert "coffee.jpg: espresso" in lines and "chelsea.jpg:" in lines and "cat" in lines
    assert str(out.resolve()) in lines


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm draws on it."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "quiet", "drawn"), [("terminal", False, True), ("terminal", True, False),
                                                        ("pipe", False, False)])
def test_progress_bar_on_terminals_only_and_not_with_quiet(linear_setup, tmp_path, monkeypatch, stream, quiet, drawn):
    model, labels, photos = linear_setup
    err = _Terminal() if stream == "terminal" else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    argv = ["explain", str(model), *map(str, photos), "-o", str(tmp_path / "out"), "-m", "gradient", "--save",
            "summary", *(["-q"] if quiet else [])]
    assert cli.main(argv) == 0
    text = err.getvalue()
    if drawn:  # tqdm's bar: the method, images done of the total, the unit
        assert "gradient:" in text and "2/2" in text and "image" in text, text
    else:
        assert text == ""


def test_explain_fixed_class_ids_labels_and_preset_on_a_small_model(tmp_path):
    onnx.save(testbed.tiny_cnn(size=40), str(tmp_path / "tiny40.onnx"))
    (tmp_path / "labels.txt").write_text("".join(f"thing {i}\n" for i in range(testbed.CLASSES)))
    photos = [str(p) for p in data.demo_images()]
    result = run_varrt(
        "explain", "tiny40.onnx", *photos, "-o", "out", "-m", "gradient", "--classes", "0,3",
        "--labels", "labels.txt", "--preset", "none", "--batch-size", "2", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for photo in data.demo_images():
        with np.load(tmp_path / "out" / f"{photo.stem}.npz") as saved:
            np.testing.assert_array_equal(saved["class_ids"], [0, 3])
            assert list(saved["class_names"]) == ["thing 0", "thing 3"]
            assert saved["attributions"].shape == (2, 3, 40, 40) == saved["var"].shape
        with Image.open(tmp_path / "out" / f"{photo.stem}.png") as png:
            assert png.width == 2 * 40 + 3 * 6
