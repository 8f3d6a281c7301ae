"""The benchmarks on a channels-last model: the colour classifier taking [N, H, W, 3] and transposing to
channels-first first, as tf2onnx writes Keras models. The real Explainer runs; the scores are the ones
hand reasoning gives the channels-first classifier (tests/bench/test_real_explainer.py)."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper
from varrt.bench import cli, gpg, grids, speed


def _channels_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its input [N, C, H, W] replaced by [N, H, W, C] and a Transpose to NCHW."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    image = model.graph.input[0]
    dims = image.type.tensor_type.shape.dim
    sizes = [dims[i].dim_value for i in (1, 2, 3)]
    for dim, size in zip(list(dims)[1:], (sizes[1], sizes[2], sizes[0]), strict=True):
        dim.dim_value = size
    for node in model.graph.node:
        node.input[:] = ["nchw" if name == image.name else name for name in node.input]
    model.graph.node.insert(0, helper.make_node("Transpose", [image.name], ["nchw"], perm=[0, 3, 1, 2]))
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def nhwc_colours(colour_setup, tmp_path):
    model, photos = colour_setup
    path = tmp_path / "colours_nhwc.onnx"
    onnx.save(_channels_last(onnx.load(model)), path)
    return path, photos


def test_gpg_input_x_gradient_on_a_channels_last_model(nhwc_colours):
    model, photos = nhwc_colours
    cells = gpg.load_cells(model, gpg.image_files(photos))
    arrangements = grids.distinct_class_arrangements([c.label for c in cells])
    result = gpg.run_gpg(model, cells, arrangements, ["input_x_gradient", "gradcam"], batch_size=8)
    labels = np.array([[cells[i].label for i in a] for a in arrangements]).ravel()
    scores = {s.method: s for s in result.scores}
    # As for the channels-first classifier: the red/green/blue cells hold all of their class's positive
    # evidence, black has none (its map sums over the channel axis, here the last one).
    np.testing.assert_allclose(scores["input_x_gradient"].base[labels != 3], 1.0, atol=1e-6)
    np.testing.assert_allclose(scores["input_x_gradient"].base[labels == 3], 0.0)
    assert result.example_maps["input_x_gradient"][0].shape == (4, 16, 16)
    assert result.example_maps["gradcam"][0].shape == (4, 16, 16)


def test_sanity_and_speed_commands_on_a_channels_last_model(nhwc_colours, tmp_path, capsys):
    model, photos = nhwc_colours
    assert cli.main(["bench", "sanity", str(model), "--images", str(photos), "--methods", "gradient,gradcam",
                     "--out", str(tmp_path / "sanity"), "--quiet", "--no-plots", "--classes", "top3"]) == 0
    report = json.loads((tmp_path / "sanity" / "sanity.json").read_text())
    for method in ("gradient", "gradcam"):
        assert report["similarity"][method]["base"]["ssim"][0] == pytest.approx(1.0)
    assert speed.input_shape(model) == (16, 16, 3)
    assert cli.main(["bench", "speed", str(model), "--methods", "gradient", "--backends", "onnxruntime-cpu",
                     "--batch-sizes", "2", "--classes", "top3", "--repeats", "1", "--throughput-repeats", "1",
                     "--no-torch-reference", "--out", str(tmp_path / "speed"), "--quiet", "--no-plots"]) == 0
    report = json.loads((tmp_path / "speed" / "speed.json").read_text())
    assert report["settings"]["input_shape"] == [16, 16, 3]
    capsys.readouterr()


def test_insertion_deletion_on_a_channels_last_model_equals_the_channels_first_one(colour_setup, nhwc_colours):
    """The same classifier either way round: identical curves (the channels-first one is checked against
    closed forms in test_insertion_deletion.py)."""
    from varrt.bench import insertion_deletion
    from varrt.images import load_image, preprocessing_for

    (first, photos), (last, _) = colour_setup, nhwc_colours
    paths = gpg.image_files(photos)
    runs = []
    for model in (first, last):
        prep = preprocessing_for(model)
        inputs = np.stack([load_image(p, prep) for p in paths])
        runs.append(insertion_deletion.run_insertion_deletion(model, inputs, ["input_x_gradient", "gradcam"],
                                                              steps=8, backend="onnxruntime-cpu"))
    assert runs[1].methods[0].curves["base"]["deletion"].shape == (4, 9)
    for a, b in zip(runs[0].methods, runs[1].methods, strict=True):
        for kind in ("base", "var"):
            for curve in ("deletion", "insertion"):
                np.testing.assert_allclose(b.curves[kind][curve], a.curves[kind][curve], rtol=1e-5, atol=1e-7)
