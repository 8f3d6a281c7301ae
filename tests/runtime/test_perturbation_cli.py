"""occlusion and rise through `varrt export` / `varrt explain` and the Explainer, on the linear
classifier logits = flatten(x) @ W + b, where both maps are known by hand:

- occlusion: occluding window j changes logit k by sum over the window (all channels) of
  W_k (x - baseline), so the map at u is the mean of that over the windows covering u;
- rise: the sum over its masks m_i of z_k(x * m_i) m_i / (N p), with the masks rebuilt from the
  seeded tables (export/perturbation.py; their distribution is tested in tests/export).

So the options given on the command line show in the numbers (atol 1e-4: occlusion subtracts two
logits of size ~20 in float32).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import testbed
from varrt import Explainer, cli
from varrt.export.perturbation import RiseTables, occlusion_windows
from varrt.images import load_image, preprocessing_for

SHAPE = (3, 12, 12)
W, B = testbed.linear_weights(SHAPE, 5)


def occlusion_by_hand(x: np.ndarray, ids: list[int], window: int, stride: int, baseline: float) -> np.ndarray:
    rows, cols = occlusion_windows(SHAPE[1], window, stride), occlusion_windows(SHAPE[2], window, stride)
    maps = []
    for k in ids:
        drop = W[:, k].reshape(SHAPE) * (x - baseline)  # [C, H, W]
        total, count = np.zeros(SHAPE[1:]), np.zeros(SHAPE[1:])
        for r in rows:
            for c in cols:
                inside = np.outer(r, c)
                total += (drop * inside).sum() * inside
                count += inside
        maps.append(np.broadcast_to(total / count, SHAPE))
    return np.stack(maps)


def rise_by_hand(x: np.ndarray, ids: list[int], samples: int, cells: int, keep: float, seed: int) -> np.ndarray:
    masks = RiseTables.make(*SHAPE[1:], samples, cells, keep, seed).masks(*SHAPE[1:]).astype(np.float64)
    logits = (x[None] * masks[:, None]).reshape(samples, -1) @ W + B  # [masks, classes]
    return np.einsum("ik,ihw->khw", logits[:, ids], masks) / (samples * keep)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "linear.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE, preset="none"), path)
    return path


def test_export_options_reach_the_graph(model, tmp_path, capsys):
    out = tmp_path / "occlusion.onnx"
    argv = ["export", str(model), "-o", str(out), "-m", "occlusion", "--window", "5", "--stride", "3",
            "--baseline", "0.25", "--chunk", "4", "--var"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    x = testbed.images(2, SHAPE)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ids = np.array([[1, 3], [0, 4]], np.int64)
    maps = session.run(["attributions"], {"input": x, "class_ids": ids})[0]
    for n in range(2):
        np.testing.assert_allclose(maps[n], occlusion_by_hand(x[n], list(ids[n]), 5, 3, 0.25), rtol=1e-4, atol=1e-4)
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert (metadata["varrt.window"], metadata["varrt.stride"], metadata["varrt.chunk"]) == ("5", "3", "4")


def test_explain_options_reach_the_explainer(model, tmp_path, capsys):
    photo = testbed.write_png(tmp_path / "photo.png", size=(14, 13))
    argv = ["explain", str(model), str(photo), "-o", str(tmp_path / "out"), "-m", "rise", "--classes", "2,4",
            "--samples", "300", "--mask-size", "3", "--keep", "0.3", "--seed", "7", "--chunk", "64", "--quiet",
            "--no-overlays"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    x = load_image(photo, preprocessing_for(model))
    with np.load(tmp_path / "out" / "photo.npz") as saved:
        np.testing.assert_allclose(saved["attributions"], rise_by_hand(x, [2, 4], 300, 3, 0.3, 7),
                                   rtol=1e-4, atol=1e-4)
        assert saved["attributions"].shape == (2, *SHAPE[1:])


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_explainer_takes_the_options(model, tmp_path, method):
    x = testbed.images(3, SHAPE, seed=4)
    explainer = Explainer(model, method=method, classes="2,0", cache_dir=tmp_path, window=4, stride=2,
                          samples=50, mask_size=4, keep=0.6, seed=1, chunk=16)
    got = explainer(x)
    expected = np.stack([occlusion_by_hand(image, [2, 0], 4, 2, 0.0) if method == "occlusion"
                         else rise_by_hand(image, [2, 0], 50, 4, 0.6, 1) for image in x])
    np.testing.assert_allclose(got.attributions, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("option", "message"), [
    (["-m", "occlusion", "--chunk", "0"], "--chunk must be a positive integer (got 0)"),
    (["-m", "occlusion", "--window", "20"], "--window 20 is larger than the image (12x12)"),
    (["-m", "rise", "--keep", "2"], "--keep must lie in (0, 1] (got 2.0)"),
])
def test_bad_options_are_one_line_and_write_nothing(model, tmp_path, capsys, option, message):
    out = tmp_path / "g.onnx"
    assert cli.main(["export", str(model), "-o", str(out), *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()
