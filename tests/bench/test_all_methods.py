"""`varrt bench gpg` and `varrt bench sanity` with every method (`--methods all`), on the real
Explainer and the colour classifier, where every method has a rule; a method that cannot explain
a model becomes a row with its reason instead of ending the run."""

import json
import math

import onnx
from varrt.bench import cli
from varrt.export.methods import METHODS

# Cheap settings for a 16x16 model: every option the methods take, given explicitly.
GRADIENT_ONLY = {"gradient", "guided_backprop", "deconvolution"}  # maps with no input factor or perturbation
CHEAP = ["--steps-ig", "4", "--samples", "4", "--window", "4", "--stride", "4", "--masks", "16"]


def test_gpg_accepts_every_method(colour_setup, tmp_path, capsys):
    model, photos = colour_setup
    out = tmp_path / "gpg"
    argv = ["bench", "gpg", str(model), "--images", str(photos), "--methods", "all", "--limit", "2", *CHEAP,
            "--out", str(out), "--quiet", "--no-plots"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "integrated_gradients steps=4" in printed and "occlusion window=4 stride=4" in printed
    report = json.loads((out / "gpg.json").read_text())
    assert list(report["methods"]) == list(METHODS)
    for method, entry in report["methods"].items():
        assert "refused" not in entry, (method, entry.get("refused"))
        scores = entry["scores_base"] + entry["scores_var"]
        # 8 cells of 2 grids; a score is a share of positive mass, so in [0, 1]
        assert len(scores) == 16 and all(0.0 <= s <= 1.0 for s in scores), method


def test_sanity_accepts_every_method(colour_setup, tmp_path, capsys):
    model, photos = colour_setup
    out = tmp_path / "sanity"
    argv = ["bench", "sanity", str(model), "--images", str(photos), "--methods", "all", "--steps", "1",
            "--classes", "top3", *CHEAP,
            "--out", str(out), "--quiet", "--no-plots"]
    assert cli.main(argv) == 0
    report = json.loads((out / "sanity.json").read_text())
    assert report["refused"] == {} and list(report["similarity"]) == list(METHODS)
    assert report["depths"] == [0, 1]  # the original, then the output layer (fc) redrawn
    for method, kinds in report["similarity"].items():
        rho = kinds["base"]["spearman"][1]
        if method in GRADIENT_ONLY:
            # A pure gradient through GAP and the identity pointwise conv (every ReLU open on these
            # photos) is the same at every pixel: no ranking, so NaN, as varrt.bench.sanity says.
            assert math.isnan(rho), (method, rho)
            continue
        # Every other map depends on the class weights: redrawing them must change it.
        assert math.isfinite(rho) and rho < 0.999, (method, rho)


def test_a_refused_method_is_a_row(colour_setup, tmp_path, capsys):
    model_path, photos = colour_setup
    model = onnx.load(model_path)
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Sigmoid"  # LRP has no rule for Sigmoid (nor has Captum): refused
    sigmoid_path = tmp_path / "sigmoid.onnx"
    onnx.save(model, sigmoid_path)
    out = tmp_path / "sanity"
    argv = ["bench", "sanity", str(sigmoid_path), "--images", str(photos), "--methods", "gradient,lrp", "--depths", "1",
            "--classes", "top3", "--out", str(out), "--quiet", "--no-plots"]
    assert cli.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lrp")]
    assert len(rows) == 1 and "refused:" in rows[0] and "Sigmoid" in rows[0]
    report = json.loads((out / "sanity.json").read_text())
    assert "Sigmoid" in report["refused"]["lrp"] and list(report["similarity"]) == ["gradient"]

