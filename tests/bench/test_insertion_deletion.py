"""Insertion/deletion AUC: hand-computed areas and perturbations, a linear model whose answer is
known, the JSON report and `varrt bench deletion` end to end."""

import json

import numpy as np
import onnx
import pytest
import testbed
from bench_models import FakeExplanation
from varrt.bench import cli, metrics
from varrt.bench import insertion_deletion as idl

SIZE = 8


def linear_classifier(weights: np.ndarray, softmax: bool = False) -> onnx.ModelProto:
    """Two classes: logit 0 = <weights, x>, logit 1 = 0; so p(class 0) = sigmoid(<weights, x>)."""
    fc = np.stack([weights.ravel(), np.zeros(weights.size)], axis=1)
    return testbed.linear_classifier(fc, np.zeros(2), weights.shape, softmax=softmax, preset="none")


@pytest.fixture
def linear_setup(tmp_path):
    # Positive weights of very different sizes: a few pixels carry most of the logit.
    rng = np.random.default_rng(1)
    weights = rng.exponential(size=(3, SIZE, SIZE)) ** 3
    weights = (weights * 3.0 / weights.sum()).astype(np.float32)  # logit 0 = 3 at x = 1: p not saturated
    path = tmp_path / "linear.onnx"
    onnx.save(linear_classifier(weights), path)
    inputs = np.ones((3, 3, SIZE, SIZE), np.float32) * np.array([1.0, 0.5, 2.0], np.float32)[:, None, None, None]
    return path, weights, inputs


class WeightMapExplainer:
    """Stands in for varrt.Explainer: every class's attribution is weights * input (exact for the
    linear model's class 0), or pure noise with ``noise=True``."""

    weights: np.ndarray = np.zeros(0)
    noise = False

    def __init__(self, model, method="gradient", **options):
        self.method = method

    def __call__(self, images, class_ids=None):
        from varrt.kernels import var_maps

        k = class_ids.shape[1]
        if self.noise:
            maps = np.random.default_rng(7).normal(size=images.shape)
        else:
            maps = self.weights[None] * images
        attributions = np.repeat(maps[:, None], k, axis=1).astype(np.float32)
        attributions[:, 1:] *= 0.1  # class 1 (logit 0) gets little attribution: VAR keeps class 0's
        return FakeExplanation(class_ids, attributions, var_maps(attributions))


def _explainer(weights, noise=False):
    return type("Explainer", (WeightMapExplainer,), {"weights": weights, "noise": noise})


# --- areas and perturbations by hand --------------------------------------------------------------
def test_trapezoid_auc_hand_computed():
    assert idl.trapezoid_auc([1.0, 0.5, 0.0], [0.0, 0.5, 1.0]) == pytest.approx(0.5)
    # (1 + 1)/2 * 1/3 + (1 + 0)/2 * 1/3 + 0 = 0.5
    assert idl.trapezoid_auc([1, 1, 0, 0], [0, 1 / 3, 2 / 3, 1]) == pytest.approx(0.5)
    # Uneven spacing: (1 + 0)/2 * 0.25 + 0 * 0.75
    assert idl.trapezoid_auc([1, 0, 0], [0, 0.25, 1]) == pytest.approx(0.125)
    assert idl.trapezoid_auc([0.2, 0.9], [0, 1]) == pytest.approx(0.55)
    curve = np.random.default_rng(0).uniform(size=17)
    assert idl.trapezoid_auc(curve, np.linspace(0, 1, 17)) == pytest.approx(metrics.normalised_auc(curve))
    with pytest.raises(ValueError):
        idl.trapezoid_auc([1.0], [0.0])


def test_step_counts_run_from_none_to_all():
    np.testing.assert_array_equal(idl.step_counts(64, 4), [0, 16, 32, 48, 64])
    counts = idl.step_counts(10, 3)
    assert counts[0] == 0 and counts[-1] == 10 and np.all(np.diff(counts) > 0) and counts.size == 4


def test_saliency_map_reductions():
    attribution = np.zeros((3, 2, 2))
    attribution[:, 0, 0] = [2.0, -1.0, 0.5]  # net +1.5
    attribution[:, 0, 1] = [-2.0, -1.0, 0.0]  # net -3
    attribution[:, 1, 1] = [1.0, -1.0, 0.0]  # cancels
    np.testing.assert_allclose(idl.saliency_map(attribution, "positive"), [[1.5, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(idl.saliency_map(attribution, "abs"), [[3.5, 3.0], [0.0, 2.0]])
    cam = np.array([[0.0, -1.0], [2.0, 1.0]])
    np.testing.assert_allclose(idl.saliency_map(cam, "positive"), [[0.0, 0.0], [2.0, 1.0]])


def test_pixel_order_breaks_ties_by_the_tiebreak():
    saliency = np.array([[0.0, 3.0], [0.0, 1.0]])
    np.testing.assert_array_equal(idl.pixel_order(saliency, np.array([3, 0, 1, 2])), [1, 3, 2, 0])
    np.testing.assert_array_equal(idl.pixel_order(np.zeros((2, 2)), np.array([2, 0, 3, 1])), [1, 3, 0, 2])


def test_perturbed_inputs_hand_computed():
    image = np.arange(1, 9, dtype=np.float32).reshape(2, 2, 2)  # C=2, 2x2
    baseline = np.full_like(image, -1.0)
    order = np.array([3, 0, 2, 1])  # pixel (1,1) first, then (0,0), (1,0), (0,1)
    inputs = idl.perturbed_inputs(image, baseline, order, np.array([0, 2, 4]))
    deletion, insertion = inputs["deletion"], inputs["insertion"]
    np.testing.assert_array_equal(deletion[0], image)
    np.testing.assert_array_equal(deletion[2], baseline)
    np.testing.assert_array_equal(deletion[1], [[[-1, 2], [3, -1]], [[-1, 6], [7, -1]]])
    np.testing.assert_array_equal(insertion[0], baseline)
    np.testing.assert_array_equal(insertion[2], image)
    np.testing.assert_array_equal(insertion[1], [[[1, -1], [-1, 4]], [[5, -1], [-1, 8]]])


def test_blur_baseline_keeps_constant_images_and_smooths_edges():
    flat = np.full((3, 12, 12), 0.7, np.float32)
    np.testing.assert_allclose(idl.make_baseline(flat, "blur", 2.0), flat, atol=1e-6)
    edge = np.zeros((1, 12, 12), np.float32)
    edge[:, :, 6:] = 1.0
    blurred = idl.make_baseline(edge, "blur", 1.5)
    assert 0.0 < blurred[0, 6, 5] < 0.5 < blurred[0, 6, 6] < 1.0
    assert not idl.make_baseline(edge, "zero").any()
    with pytest.raises(Exception, match="unknown baseline"):
        idl.make_baseline(edge, "noise")


def test_explained_classes_top4_plus_min_top1_first():
    probabilities = np.array([[0.05, 0.3, 0.01, 0.2, 0.1, 0.04, 0.3]])
    np.testing.assert_array_equal(idl.explained_classes(probabilities), [[1, 6, 3, 4, 2]])
    np.testing.assert_array_equal(idl.explained_classes(np.array([[0.2, 0.5, 0.3]])), [[1, 2, 0]])


# --- a linear model: the answer is known ----------------------------------------------------------
def test_curves_of_the_linear_model_match_the_closed_form(linear_setup):
    path, weights, inputs = linear_setup
    classifier = idl.Classifier(path)
    classifier.calibrate(inputs)
    image = inputs[1]
    order = idl.pixel_order(idl.saliency_map(weights * image), np.arange(SIZE * SIZE))
    counts = idl.step_counts(SIZE * SIZE, 4)
    curves = idl.curves_for(classifier, image, np.zeros_like(image), order, counts, class_id=0)
    pixel_logit = (weights * image).sum(axis=0).ravel()[order]  # each pixel's share of logit 0
    total = pixel_logit.sum()
    removed = np.array([pixel_logit[:c].sum() for c in counts])
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(curves["deletion"], sigmoid(total - removed), atol=1e-5)
    np.testing.assert_allclose(curves["insertion"], sigmoid(removed), atol=1e-5)


def test_softmax_output_is_taken_as_probabilities(tmp_path, linear_setup):
    _, weights, inputs = linear_setup
    logits_path, softmax_path = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(linear_classifier(weights), logits_path)
    onnx.save(linear_classifier(weights, softmax=True), softmax_path)
    from_logits = idl.Classifier(logits_path).calibrate(inputs)
    from_softmax = idl.Classifier(softmax_path)
    np.testing.assert_allclose(from_softmax.calibrate(inputs), from_logits, atol=1e-6)
    assert from_softmax.outputs_probabilities


def test_true_weights_beat_a_random_ranking(linear_setup):
    path, weights, inputs = linear_setup
    oracle = idl.run_insertion_deletion(
        path, inputs, ["input_x_gradient"], steps=16, explainer_factory=_explainer(weights)
    )
    noise = idl.run_insertion_deletion(
        path, inputs, ["input_x_gradient"], steps=16, explainer_factory=_explainer(weights, noise=True)
    )
    reference = oracle.reference_aucs()
    (scores,) = oracle.methods
    (noisy,) = noise.methods
    for kind in ("base", "var"):
        # Per image: deleting the heaviest weights first drops p(class 0) fastest.
        assert np.all(scores.aucs[kind]["deletion"] < reference["deletion"] - 0.05)
        assert np.all(scores.aucs[kind]["insertion"] > reference["insertion"] + 0.05)
        assert np.all(scores.aucs[kind]["deletion"] < noisy.aucs[kind]["deletion"])
        assert np.all(scores.aucs[kind]["insertion"] > noisy.aucs[kind]["insertion"])
    # With positive weights and inputs the oracle order is the best possible: after every step
    # it has removed the most logit, so no other order's deletion curve lies below it anywhere.
    assert np.all(noisy.curves["base"]["deletion"] >= scores.curves["base"]["deletion"] - 1e-6)
    assert np.all(noisy.curves["base"]["insertion"] <= scores.curves["base"]["insertion"] + 1e-6)
    np.testing.assert_array_equal(oracle.class_ids[:, 0], 0)
    assert scores.empty_maps == {"base": 0, "var": 0}


def test_real_explainer_on_the_linear_model_is_the_oracle(linear_setup):
    # input x gradient of a linear logit is exactly weights * input: same ranking, same curves.
    path, weights, inputs = linear_setup
    real = idl.run_insertion_deletion(path, inputs, ["input_x_gradient"], steps=8)
    oracle = idl.run_insertion_deletion(
        path, inputs, ["input_x_gradient"], steps=8, explainer_factory=_explainer(weights)
    )
    np.testing.assert_allclose(real.methods[0].aucs["base"]["deletion"], oracle.methods[0].aucs["base"]["deletion"])
    np.testing.assert_allclose(real.methods[0].aucs["base"]["insertion"], oracle.methods[0].aucs["base"]["insertion"])


def test_json_report_is_well_formed(linear_setup, tmp_path):
    path, weights, inputs = linear_setup
    result = idl.run_insertion_deletion(
        path, inputs, ["gradient", "gradcam"], steps=4, explainer_factory=_explainer(weights)
    )
    report = json.loads(json.dumps(result.to_json(), default=cli._json_default))
    assert report["benchmark"] == "insertion_deletion" and report["settings"]["steps"] == 4
    assert report["settings"]["k"] == 2 and report["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(report["images"]) == 3 and report["images"][0]["class_ids"] == [0, 1]
    assert set(report["methods"]) == {"gradient", "gradcam"}
    for entry in report["methods"].values():
        for curve in ("deletion", "insertion"):
            for kind in ("base", "var", "var_minus_base"):
                stats = entry[curve][kind]
                assert stats["n"] == 3 and stats["low"] <= stats["mean"] <= stats["high"]
            assert all(0.0 <= a <= 1.0 for a in entry[curve]["auc_base"] + entry[curve]["auc_var"])
            assert np.shape(entry[curve]["curves_var"]) == (3, 5) and len(entry[curve]["mean_curve_base"]) == 5
        # Deletion ends at the baseline, insertion at the image, whatever the ranking.
        np.testing.assert_allclose(np.array(entry["deletion"]["curves_base"])[:, 0], result.probabilities, rtol=1e-6)
    assert report["reference"]["ranking"] == "random" and len(report["reference"]["deletion"]["aucs"]) == 3
    rows = result.table_rows()
    assert rows[0][0] == "random ranking" and [r[1] for r in rows[1:4]] == ["base", "VAR", "VAR - base"]


# --- the command ----------------------------------------------------------------------------------
def test_deletion_command_end_to_end(colour_setup, tmp_path, capsys):
    model, photos = colour_setup
    out = tmp_path / "deletion"
    status = cli.main(
        [
            "bench",
            "deletion",
            str(model),
            "--images",
            str(photos),
            "--methods",
            "gradient,gradcam",
            "--steps",
            "4",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "insertion/deletion: 4 images" in printed and "K = 4" in printed
    assert "random ranking" in printed and "gradcam" in printed and "VAR - base" in printed
    report = json.loads((out / "deletion.json").read_text())
    assert set(report["methods"]) == {"gradient", "gradcam"} and report["settings"]["k"] == 4
    assert sorted(image["class_ids"][0] for image in report["images"]) == [0, 1, 2, 3]
    assert (out / "deletion.png").stat().st_size > 0


def test_deletion_command_errors_and_help(tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    assert cli.main(["bench", "deletion", str(missing), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"varrt: error: no such model file: {missing}"
    with pytest.raises(SystemExit):
        cli.main(["bench", "deletion", "--methods", "nonsense"])
    with pytest.raises(SystemExit):
        cli.main(["bench", "deletion", "--help"])
    help_text = capsys.readouterr().out
    assert "--steps" in help_text and "--baseline" in help_text and "--ranking" in help_text
