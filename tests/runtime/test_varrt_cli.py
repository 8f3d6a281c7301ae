"""The `varrt` command line: help, errors, and explain/export/demo end to end.

The first group runs `varrt explain` in-process with a stand-in Explainer, so file formats,
layout and errors are checked fast and without the exporter; the second runs the real commands
in a subprocess on the bundled model and photos.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from varrt import cli, data
from varrt.core.classes import parse_classes
from varrt.explainer import Explanation


def _varrt_command() -> list[str]:
    script = Path(sys.executable).parent / "varrt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "varrt.cli"]


def run_varrt(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VARRT_CACHE_DIR=str((cwd or Path.cwd()) / ".varrt-cache"))
    return subprocess.run([*_varrt_command(), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


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


def test_help_through_the_entry_point():
    top = run_varrt("--help")
    assert top.returncode == 0
    for name in ("demo", "explain", "export"):
        assert name in top.stdout
        sub = run_varrt(name, "--help")
        assert sub.returncode == 0 and f"usage: varrt {name}" in sub.stdout
    version = run_varrt("--version")
    assert version.returncode == 0 and version.stdout.startswith("varrt ")


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: varrt" in capsys.readouterr().err


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", "--no-such-option"])
    assert exit_info.value.code == 2


def test_class_spec_parsing():
    assert cli.parse_class_spec("top4+min") == "top4+min"
    assert cli.parse_class_spec("3") == 3
    assert cli.parse_class_spec("281,285") == [281, 285]
    with pytest.raises(cli.UsageError):
        cli.parse_class_spec("1,cat")


def test_optional_subcommand_module_is_skipped_when_absent():
    register = cli._optional("varrt.no_such_module_for_tests")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))  # no error


# --- explain in-process with a stand-in Explainer --------------------------------------------------
class FakeExplainer:
    """Deterministic arrays of the shapes the real Explainer returns."""

    def __init__(self, model, method="guided_backprop", classes="top4+min", var=True, **options):
        self.method = method
        self.k = parse_classes(classes, var=var).k
        self.var = var
        self.backend_name = "fake"
        FakeExplainer.last_options = dict(options, method=method, classes=classes, var=var)

    def __call__(self, images, class_ids=None):
        n, c, h, w = images.shape
        logits = np.tile(np.arange(1000, dtype=np.float32), (n, 1)) / 100
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        ids = np.tile(np.array([999 - i for i in range(self.k)], np.int64), (n, 1))
        cam = self.method == "gradcam"
        shape = (n, self.k, h, w) if cam else (n, self.k, c, h, w)
        attributions = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        var = attributions * 0.5 if self.var else None
        return Explanation(ids, logits, probabilities, attributions, var, self.method, "fake")


@pytest.fixture
def fake_explainer(monkeypatch):
    monkeypatch.setattr("varrt.explainer.Explainer", FakeExplainer)
    return FakeExplainer


def test_explain_writes_npz_and_png_per_image(tmp_path, fake_explainer, capsys):
    photos = [str(p) for p in data.demo_images()[:2]]
    out = tmp_path / "out"
    status = cli.main(["explain", str(data.demo_model_path()), *photos, "--out", str(out), "--batch-size", "1"])
    assert status == 0
    for photo in photos:
        stem = Path(photo).stem
        with np.load(out / f"{stem}.npz") as saved:
            assert saved["class_ids"].shape == (5,) and saved["class_ids"].dtype == np.int64
            assert saved["probabilities"].shape == (5,)
            assert saved["attributions"].shape == (5, 3, 224, 224)
            assert saved["var"].shape == (5, 3, 224, 224)
            assert saved["logits"].shape == (1000,)
            assert saved["class_names"][0] == data.imagenet_labels()[999]
        with Image.open(out / f"{stem}.png") as png:
            png.load()
            assert png.format == "PNG" and png.width == 2 * 224 + 3 * 6
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "chelsea.jpg" in printed


def test_explain_options_reach_the_explainer(tmp_path, fake_explainer):
    photo = str(data.demo_images()[0])
    argv = [
        "explain",
        str(data.demo_model_path()),
        photo,
        "-o",
        str(tmp_path),
        "--method",
        "integrated_gradients",
    ]
    argv += ["--classes", "281,285", "--steps", "8", "--no-var", "--tau", "0.1", "--quiet", "--no-overlays"]
    assert cli.main(argv) == 0
    options = fake_explainer.last_options
    assert options["classes"] == [281, 285] and options["steps"] == 8 and options["var"] is False
    assert options["tau"] == 0.1 and "samples" not in options
    with np.load(tmp_path / "chelsea.npz") as saved:
        assert "var" not in saved and saved["attributions"].shape == (2, 3, 224, 224)
    assert not (tmp_path / "chelsea.png").exists()


def test_explain_cam_maps_and_directory_input_and_duplicate_names(tmp_path, fake_explainer):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / folder / "same.png")
    out = tmp_path / "out"
    argv = ["explain", str(data.demo_model_path()), str(tmp_path / "a"), str(tmp_path / "b" / "same.png")]
    assert cli.main([*argv, "-o", str(out), "-m", "gradcam", "--classes", "top2", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["same.npz", "same.png", "same_2.npz", "same_2.png"]
    with np.load(out / "same_2.npz") as saved:
        assert saved["attributions"].shape == (2, 224, 224)


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
def test_bad_input_is_one_line_and_nonzero(tmp_path, fake_explainer, capsys, argv, status, message):
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
    proto = _tiny_classifier()
    target = tmp_path / "sub" / "m.onnx"
    cli.save_model(proto, target)
    onnx.checker.check_model(onnx.load(str(target)))
    assert [p.name for p in target.parent.iterdir()] == ["m.onnx"]


# --- the real commands -----------------------------------------------------------------------------
def _tiny_classifier() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = {
        "conv_w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.standard_normal(4).astype(np.float32),
        "fc_w": rng.standard_normal((5, 4)).astype(np.float32),
        "fc_b": rng.standard_normal(5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    # IR 8 (the opset 17 era): onnx 1.23 would default to an IR version onnxruntime cannot load yet.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_export_writes_an_explanation_graph(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(_tiny_classifier(), str(model))
    result = run_varrt(
        "export",
        str(model),
        "-o",
        str(tmp_path / "explain.onnx"),
        "--method",
        "gradient",
        "--var",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    graph = onnx.load(str(tmp_path / "explain.onnx"))
    outputs = {value.name for value in graph.graph.output}
    assert {"logits", "attributions", "var_attributions"} <= outputs
    assert {value.name for value in graph.graph.input} >= {"input", "class_ids"}
    assert "explain.onnx" in result.stdout


def test_export_batch_fixes_the_batch_axis_and_is_checked(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(_tiny_classifier(), str(model))
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
    onnx.save(_tiny_classifier(), str(model))
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
    lines = result.stdout
    assert "coffee.jpg: espresso" in lines and "chelsea.jpg:" in lines and "cat" in lines
    assert str(out.resolve()) in lines


def test_progress_bar_draws_only_on_terminals():
    import io

    from varrt.progress import Progress

    quiet = io.StringIO()
    with Progress(2, "x", stream=quiet) as bar:  # StringIO is not a terminal
        bar.update(2)
    assert quiet.getvalue() == ""
    drawn = io.StringIO()
    with Progress(2, "explain", stream=drawn, enabled=True) as bar:
        bar.update(1, note="a.jpg")
        bar.update(1, note="b.jpg")
    text = drawn.getvalue()
    assert text.startswith("\rexplain [") and "2/2" in text and "b.jpg" in text and text.endswith("\n")


def test_explain_fixed_class_ids_labels_and_preset_on_a_small_model(tmp_path):
    model = _tiny_classifier()
    for axis in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = 40
    onnx.save(model, str(tmp_path / "tiny40.onnx"))
    (tmp_path / "labels.txt").write_text("".join(f"thing {i}\n" for i in range(5)))
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
