"""A channels-last model ([N, H, W, C] input, as Keras/TensorFlow via tf2onnx) through the Explainer
and ``varrt explain``: images preprocessed to [H, W, C], maps [K, H, W, C] equal to torch.autograd's
on the very inputs, ``layout`` in the .npz and results.parquet, overlays and audits summed over the last
axis; NCHW images refused in one line, nothing written.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from varrt import Explainer, audit, cli, data
from varrt.core.errors import UsageError
from varrt.images import Preprocessing, load_image, preprocessing_for

torch = pytest.importorskip("torch", reason="the model and its reference gradients come from torch")
from torch import nn  # noqa: E402

HEIGHT, WIDTH, CLASSES = 40, 48, 6


class _Keraslike(nn.Module):
    """Takes [N, H, W, 3] and permutes to channels-first first, as a converted Keras model does."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x.permute(0, 3, 1, 2)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    module = _Keraslike().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, HEIGHT, WIDTH, 3),), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["scores"], dynamic_axes={"image": {0: "N"}})
    path = tmp_path_factory.mktemp("nhwc") / "keraslike.onnx"
    path.write_bytes(buffer.getvalue())
    return module, path


def _torch_gradients(module: nn.Module, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """d logit[n, ids[n, k]] / d x[n]: [N, K, H, W, C]."""
    rows = []
    for k in range(ids.shape[1]):
        xt = torch.from_numpy(x).requires_grad_(True)
        module(xt).gather(1, torch.from_numpy(ids[:, k:k + 1])).sum().backward()
        rows.append(xt.grad.numpy())
    return np.stack(rows, axis=1)


def test_preprocessing_follows_the_model(model):
    _, path = model
    prep = preprocessing_for(path)
    assert (prep.layout, prep.size, prep.channels) == ("nhwc", (HEIGHT, WIDTH), 3)
    image = load_image(data.demo_images()[0], prep)
    assert image.shape == (HEIGHT, WIDTH, 3)
    channels_first = load_image(data.demo_images()[0], Preprocessing(size=(HEIGHT, WIDTH), mean=prep.mean,
                                                                     std=prep.std))
    np.testing.assert_array_equal(image, channels_first.transpose(1, 2, 0))
    with pytest.raises(UsageError, match=r"takes 40 channels \(axis 1\) as channels-first"):
        preprocessing_for(path, layout="nchw")  # would read [H, W, 3] as C = 40


def test_explainer_takes_nhwc_and_matches_torch(model, tmp_path):
    module, path = model
    x = np.random.default_rng(0).uniform(-1, 1, (2, HEIGHT, WIDTH, 3)).astype(np.float32)
    explainer = Explainer(str(path), method="gradient", classes="top2+min", backend="onnxruntime-cpu",
                          cache_dir=tmp_path)
    explanation = explainer(x)
    assert explainer.layout == explanation.layout == "nhwc"
    assert explanation.attributions.shape == (2, 3, HEIGHT, WIDTH, 3)
    expected = _torch_gradients(module, x, explanation.class_ids)
    np.testing.assert_allclose(explanation.attributions, expected, rtol=1e-4, atol=1e-6)


def test_explainer_refuses_nchw_images(model, tmp_path):
    _, path = model
    explainer = Explainer(str(path), method="gradient", classes="top2", backend="onnxruntime-cpu", cache_dir=tmp_path)
    with pytest.raises(UsageError, match=r"are channels-first \[N, C, H, W\], but input 'image' .* is channels-last"):
        explainer(np.zeros((1, 3, HEIGHT, WIDTH), np.float32))


def test_varrt_explain_writes_nhwc_maps(model, tmp_path):
    module, path = model
    photos = data.demo_images()[:2]
    out = tmp_path / "out"
    assert cli.main(["explain", str(path), *map(str, photos), "--out", str(out), "--classes", "top2+min",
                     "--method", "gradient", "--backend", "onnxruntime-cpu", "--quiet"]) == 0
    prep = preprocessing_for(path)
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert pq.read_metadata(out / "results.parquet").metadata[b"varrt.run"].decode().count('"layout": "nhwc"') == 1
    for photo, row in zip(photos, rows, strict=True):
        saved = np.load(out / f"{photo.stem}.npz")
        assert str(saved["layout"]) == "nhwc"
        assert saved["attributions"].shape == saved["var"].shape == (3, HEIGHT, WIDTH, 3)
        x = load_image(photo, prep)[None]
        expected = _torch_gradients(module, x, saved["class_ids"][None])[0]
        np.testing.assert_allclose(saved["attributions"], expected, rtol=1e-4, atol=1e-6)
        # the audit sums the VAR maps over the last (channel) axis
        pixel = saved["var"].sum(axis=-1)
        assert row["kept_fraction"] == pytest.approx([float((v != 0).any(axis=-1).mean()) for v in saved["var"]])
        assert [row["peak_row"][k] * WIDTH + row["peak_col"][k] for k in range(3)] == [
            int(np.argmax(m)) if m.any() else -WIDTH - 1 for m in pixel]
        assert (out / f"{photo.stem}.png").is_file()


def test_varrt_explain_save_var_is_summed_over_the_last_axis(model, tmp_path):
    _, path = model
    photo = data.demo_images()[0]
    full, small = tmp_path / "full", tmp_path / "small"
    for out, save in ((full, "all"), (small, "var")):
        assert cli.main(["explain", str(path), str(photo), "--out", str(out), "--save", save,
                         "--backend", "onnxruntime-cpu", "--quiet"]) == 0
    var = np.load(full / f"{photo.stem}.npz")["var"]
    summed = np.load(small / f"{photo.stem}.npz")
    assert str(summed["layout"]) == "nhwc" and summed["var"].shape == (5, HEIGHT, WIDTH)
    np.testing.assert_allclose(summed["var"], var.sum(axis=-1).astype(np.float16), rtol=1e-3)
    np.testing.assert_array_equal(audit.pixel_maps(var, "nhwc"), var.sum(axis=-1))


def test_wrong_layout_override_is_one_line_and_writes_nothing(model, tmp_path, capsys):
    _, path = model
    out = tmp_path / "out"
    status = cli.main(["explain", str(path), str(data.demo_images()[0]), "--out", str(out), "--layout", "nchw",
                       "--backend", "onnxruntime-cpu", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1
    assert "takes 40 channels (axis 1) as channels-first [N, C, H, W]" in error and "--layout" in error
    assert not out.exists()


def test_dynamic_height_and_width_channels_last(model, tmp_path):
    """TensorFlow's None sizes: [N, H, W, 3] with dynamic H and W is still channels-last; the Explainer
    builds one graph per (H, W, C) and each matches torch."""
    module, _ = model
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, HEIGHT, WIDTH, 3),), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["scores"],
                          dynamic_axes={"image": {0: "N", 1: "H", 2: "W"}})
    path = tmp_path / "dynamic.onnx"
    path.write_bytes(buffer.getvalue())
    explainer = Explainer(str(path), method="gradient", classes="top2", backend="onnxruntime-cpu", cache_dir=tmp_path)
    assert explainer.layout == "nhwc"
    rng = np.random.default_rng(3)
    for height, width in ((HEIGHT, WIDTH), (24, 20)):
        x = rng.uniform(-1, 1, (2, height, width, 3)).astype(np.float32)
        explanation = explainer(x)
        expected = _torch_gradients(module, x, explanation.class_ids)
        np.testing.assert_allclose(explanation.attributions, expected, rtol=1e-4, atol=1e-6)
    assert sorted(explainer.graph_paths) == ["top2@24x20x3", f"top2@{HEIGHT}x{WIDTH}x3"]
    with pytest.raises(UsageError, match="are channels-first"):
        explainer(np.zeros((1, 3, HEIGHT, WIDTH), np.float32))
