"""The Explainer and ``varrt explain`` on a model whose image height and width are dynamic.

The bundled EfficientNet-Lite0 with its H/W made symbolic (dim_param) is explained through the real
exporter and Explainer: one graph per image shape, each cached on disk, equal to the static model's
explanation at 224 and to a static 192 export at 192. Static models keep their cache keys.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from PIL import Image
from varrt import Explainer, cli, data
from varrt.core.errors import UsageError


def _with_hw(model: onnx.ModelProto, height: int | str, width: int | str) -> onnx.ModelProto:
    """A copy of ``model`` whose image input has height and width ``height``/``width`` (a name: dynamic)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for axis, size in ((2, height), (3, width)):
        dim = copy.graph.input[0].type.tensor_type.shape.dim[axis]
        dim.Clear()
        if isinstance(size, str):
            dim.dim_param = size
        else:
            dim.dim_value = size
    del copy.graph.value_info[:]  # recorded against 224x224
    return copy


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    bundled = onnx.load(str(data.demo_model_path()))
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for key, model in (("static", bundled), ("dynamic", _with_hw(bundled, "H", "W")),
                       ("static192", _with_hw(bundled, 192, 192))):
        paths[key] = folder / f"{key}.onnx"
        onnx.save(model, str(paths[key]))
    return paths


def _explainer(path, cache) -> Explainer:
    return Explainer(str(path), method="gradient", classes="top3", backend="onnxruntime-cpu", cache_dir=cache)


def _images(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (2, 3, size, size)).astype(np.float32)


def _assert_same(got, expected) -> None:
    np.testing.assert_array_equal(got.class_ids, expected.class_ids)
    np.testing.assert_allclose(got.attributions, expected.attributions, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got.var, expected.var, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got.logits, expected.logits, rtol=1e-5, atol=1e-6)


def test_one_graph_per_image_shape_equal_to_the_static_exports(models, tmp_path):
    dynamic = _explainer(models["dynamic"], tmp_path / "cache")
    assert dynamic.graph_paths == {} and dynamic.input_name == "input"
    x224, x192 = _images(224, 0), _images(192, 1)
    _assert_same(dynamic(x224), _explainer(models["static"], tmp_path / "cache")(x224))
    _assert_same(dynamic(x192), _explainer(models["static192"], tmp_path / "cache")(x192))
    assert set(dynamic.graph_paths) == {"top3@3x224x224", "top3@3x192x192"}
    for key, size in (("top3@3x224x224", 224), ("top3@3x192x192", 192)):
        graph = onnx.load(str(dynamic.graph_paths[key]))
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims] == [1, 3, size, size]  # the CPU backend's one-image graph
    assert len(set(dynamic.graph_paths.values())) == 2 and all(p.is_file() for p in dynamic.graph_paths.values())
    # A second Explainer finds both graphs in the cache and gives the same numbers.
    again = _explainer(models["dynamic"], tmp_path / "cache")
    _assert_same(again(x192), dynamic(x192))
    assert again.graph_paths["top3@3x192x192"] == dynamic.graph_paths["top3@3x192x192"]


def test_static_models_keep_their_graph_options(models, tmp_path):
    static = _explainer(models["static"], tmp_path)
    assert "input_shape" not in static.graph_options("top3") and list(static.graph_paths) == ["top3"]


def test_fed_class_ids_at_a_dynamic_size(models, tmp_path):
    dynamic = _explainer(models["dynamic"], tmp_path)
    x = _images(160, 2)
    ids = np.array([[1, 2], [3, 4]])
    got = dynamic(x, class_ids=ids)
    assert got.attributions.shape == (2, 2, 3, 160, 160)
    np.testing.assert_array_equal(got.class_ids, ids)
    assert set(dynamic.graph_paths) == {"class_ids@3x160x160"}


@pytest.mark.parametrize(("shape", "words"), [
    ((3, 224, 224), "images must be a batch [N, C, H, W], got shape (3, 224, 224)"),
    ((1, 1, 224, 224), "images have 1 channels, but input 'input' of"),
])
def test_images_without_a_usable_size_are_one_line(models, tmp_path, shape, words):
    dynamic = _explainer(models["dynamic"], tmp_path)
    with pytest.raises(UsageError) as caught:
        dynamic(np.zeros(shape, np.float32))
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert dynamic.graph_paths == {}


def _cli_explain(model, photo, out, *extra) -> int:
    return cli.main(["explain", str(model), str(photo), "--out", str(out), "-m", "gradient", "--classes", "top3",
                     "--backend", "onnxruntime-cpu", "-q", *extra])


@pytest.mark.parametrize("size", [["--size", "224"], []])  # without --size: the default 224
def test_cli_explain_dynamic_model_writes_the_static_numbers(models, tmp_path, monkeypatch, size):
    monkeypatch.setenv("VARRT_CACHE_DIR", str(tmp_path / "cache"))
    photo = tmp_path / "photo.png"
    pixels = np.random.default_rng(3).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo)
    assert _cli_explain(models["dynamic"], photo, tmp_path / "dyn", *size) == 0
    assert _cli_explain(models["static"], photo, tmp_path / "static") == 0
    got, expected = np.load(tmp_path / "dyn" / "photo.npz"), np.load(tmp_path / "static" / "photo.npz")
    assert set(got.files) == set(expected.files)
    for name in expected.files:
        if np.issubdtype(expected[name].dtype, np.floating):
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-9, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_cli_size_on_a_static_model_that_contradicts_it_is_exit_2(models, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photo)
    assert _cli_explain(models["static"], photo, tmp_path / "out", "--size", "192") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fixed at 224x224, not 192x192" in err
