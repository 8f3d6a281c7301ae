"""deeplift and lrp through the CLI and the Explainer, on logits = flatten(x) @ W + b, where both
have closed forms: DeepLIFT is (x - baseline) * W_k (the model is linear), and LRP's rules on the one
Gemm give R_i = x_i W'_ik logit_k / (z'_k + s sign(z'_k)), z' = x @ W' + b, with W' = W (epsilon,
s = --epsilon), W + gamma max(W, 0) (gamma) or max(W, 0) (zplus), s = 1e-9 for both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import testbed
from varrt import Explainer, cli

SHAPE = (3, 8, 8)
W, B = testbed.linear_weights(SHAPE, 7)
IDS = np.array([[0, 6, 3], [2, 2, 5]])


def _lrp(x: np.ndarray, weights: np.ndarray, stability: float, ids: np.ndarray = IDS) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    logits, z = flat @ W + B, flat @ weights + B
    out = []
    for n, row in enumerate(ids):
        share = logits[n, row] / (z[n, row] + np.where(z[n, row] < 0, -stability, stability))
        out.append((flat[n][None, :] * weights[:, row].T * share[:, None]).reshape(len(row), *SHAPE))
    return np.stack(out)


@pytest.mark.parametrize(("flags", "weights", "stability"), [
    ([], W, 1e-9),
    (["--epsilon", "2.0"], W, 2.0),
    (["--lrp-rule", "gamma", "--gamma", "0.5"], W + 0.5 * np.maximum(W, 0), 1e-9),
    (["--lrp-rule", "zplus"], np.maximum(W, 0), 1e-9),
])  # fmt: skip
def test_export_lrp_rules(tmp_path: Path, flags: list[str], weights: np.ndarray, stability: float) -> None:
    model, out = tmp_path / "linear.onnx", tmp_path / "lrp.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE), model)
    assert cli.main(["export", str(model), "-o", str(out), "--method", "lrp", *flags]) == 0
    graph = onnx.load(out)
    rule = flags[1] if flags[:1] == ["--lrp-rule"] else "epsilon"
    assert {p.key: p.value for p in graph.metadata_props}["varrt.lrp_rule"] == rule
    x = testbed.images(2, SHAPE)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    attributions = session.run(["attributions"], {"input": x, "class_ids": IDS})[0]
    np.testing.assert_allclose(attributions, _lrp(x, weights, stability), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("var_in_graph", [False, True])
def test_explainer_deeplift_and_lrp_with_var(tmp_path: Path, var_in_graph: bool) -> None:
    """Both methods through the Explainer, with VAR after the graph and inside it."""
    model = tmp_path / "linear.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE), model)
    x = testbed.images(2, SHAPE)
    ids = np.array([[0, 6, 3], [0, 6, 3]])
    deeplift = (x - np.float32(0.2))[:, None] * W.T[ids[0]].reshape(1, 3, *SHAPE)
    weights = W + 0.5 * np.maximum(W, 0)
    lrp = _lrp(x, weights, 1e-9, ids)
    for expected, options in [(deeplift, dict(method="deeplift", baseline=0.2)),
                              (lrp, dict(method="lrp", lrp_rule="gamma", gamma=0.5))]:  # fmt: skip
        explainer = Explainer(str(model), classes=ids[0].tolist(), cache_dir=tmp_path, var_in_graph=var_in_graph,
                              **options)  # fmt: skip
        got = explainer(x)
        np.testing.assert_allclose(got.attributions, expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.var, testbed.var_reference(expected), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("flags", "message"), [(["--epsilon", "0"], "--epsilon must be > 0"),
                                                (["--gamma", "-1"], "--gamma >= 0")])  # fmt: skip
def test_bad_lrp_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                      message: str) -> None:  # fmt: skip
    model, out = tmp_path / "linear.onnx", tmp_path / "lrp.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE), model)
    assert cli.main(["export", str(model), "-o", str(out), "--method", "lrp", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not out.exists()
