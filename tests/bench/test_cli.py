"""`varrt bench ...` end to end on tiny settings: table on stdout, JSON and PNGs in --out."""

import io
import json
import sys

import pytest
from bench_models import CellOracleExplainer, WeightHashExplainer
from varrt.bench import cli, gpg, sanity


@pytest.fixture
def fake_explainer(monkeypatch):
    """Replaces the Explainer where the GPG and sanity benchmarks look it up, with an oracle whose
    maps (and so whose scores) are known."""

    def use(factory):
        for module in (gpg, sanity):
            monkeypatch.setattr(module, "Explainer", factory)

    return use


def test_gpg_command(colour_setup, tmp_path, capsys, fake_explainer):
    fake_explainer(CellOracleExplainer)
    model, photos = colour_setup
    out = tmp_path / "gpg"
    status = cli.main(
        [
            "bench",
            "gpg",
            str(model),
            "--images",
            str(photos),
            "--methods",
            "gradient,gradcam",
            "--limit",
            "5",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "5 grids, 20 cells" in printed and "gradcam" in printed and "1.000 [1.000, 1.000]" in printed
    report = json.loads((out / "gpg.json").read_text())
    assert report["grids"] == 5 and set(report["methods"]) == {"gradient", "gradcam"}
    assert (out / "gpg.png").stat().st_size > 0 and (out / "gpg_maps.png").stat().st_size > 0


def test_sanity_command(tiny_model_path, colour_setup, tmp_path, capsys, fake_explainer):
    fake_explainer(WeightHashExplainer)
    _, photos = colour_setup
    out = tmp_path / "sanity"
    status = cli.main(
        [
            "bench",
            "sanity",
            str(tiny_model_path),
            "--images",
            str(photos),
            "--methods",
            "gradient",
            "--depths",
            "1,3",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    assert "3 layers with weights, 4 images" in capsys.readouterr().out
    report = json.loads((out / "sanity.json").read_text())
    assert report["depths"] == [1, 3]
    assert (out / "sanity.png").exists() and (out / "sanity_maps.png").exists()


def test_speed_command(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "speed"
    status = cli.main(
        [
            "bench",
            "speed",
            str(tiny_model_path),
            "--methods",
            "gradient",
            "--backends",
            "onnxruntime-cpu",
            "--batch-sizes",
            "2",
            "--repeats",
            "2",
            "--throughput-repeats",
            "1",
            "--no-torch-reference",
            "--out",
            str(out),
            "--quiet",
            "--no-plots",
        ]
    )
    assert status == 0
    assert "img/s b=2" in capsys.readouterr().out
    report = json.loads((out / "speed.json").read_text())
    assert [(row["method"], row["backend_name"]) for row in report["results"]] == [("gradient", "onnxruntime-cpu")]
    assert report["settings"]["repeats"] == 2 and report["settings"]["batch_sizes"] == [2]
    assert len(report["results"][0]["throughput_seconds"]["2"]) == 1
    assert not (out / "speed.png").exists()


def test_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    assert cli.main(["bench", "gpg", str(tmp_path / "missing.onnx"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"varrt: error: no such model file: {tmp_path / 'missing.onnx'}"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "gpg", "--methods", "nonsense"])
    assert exit_info.value.code == 2


def test_too_few_classes_exit_one(colour_setup, tmp_path, capsys, fake_explainer):
    fake_explainer(CellOracleExplainer)
    model, photos = colour_setup
    (photos / "black.png").unlink()
    assert cli.main(["bench", "gpg", str(model), "--images", str(photos), "--out", str(tmp_path), "--quiet"]) == 1
    assert "at least 4 distinct classes" in capsys.readouterr().err


def test_help_of_every_subcommand(capsys):
    for command in ("gpg", "sanity", "speed"):
        with pytest.raises(SystemExit):
            cli.main(["bench", command, "--help"])
        assert "--out" in capsys.readouterr().out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "enabled", "drawn"), [(_Terminal, None, True), (io.StringIO, None, False),
                                                          (_Terminal, False, False)])
def test_progress_bars_follow_the_benchmark_phases(monkeypatch, stream, enabled, drawn):
    """The benchmarks report (done, total, note); a new total starts a new tqdm bar, drawn on
    terminals only (and never with --quiet, enabled=False)."""
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    progress = cli._ProgressAdapter("sanity", enabled=enabled)
    for done in (1, 2, 3):
        progress(done, 3, f"gradient, {done} layers randomized")
    progress(1, 2, "guided_backprop")
    progress(2, 2, "guided_backprop")
    progress.close()
    text = err.getvalue()
    if drawn:
        assert "sanity: 100%" in text and "3/3" in text and "2/2" in text and "3 layers randomized" in text
        assert text.count("\n") == 2  # one line per phase
    else:
        assert text == ""
