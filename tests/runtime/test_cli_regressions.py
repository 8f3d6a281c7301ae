"""Bugs that came from duplication (issue 11), each pinned on a tiny model built with onnx.helper:
class specs given as text to `varrt export`, in-graph VAR past opset 21, `--debug` showing the
rule that failed, and `varrt explain` reading the model file once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from varrt import cli

CLASSES = 300  # enough for the ids the README uses (281, 285)


def tiny_classifier(opset: int = 17, activation: str = "Relu") -> onnx.ModelProto:
    """Conv -> activation -> GlobalAveragePool -> Flatten -> Gemm -> Softmax on [N, 3, 8, 8]."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(scale=0.5, size=shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node(activation, ["c"], ["a"], name="act"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["scores"], name="fc", transB=1),
        helper.make_node("Softmax", ["scores"], ["prob"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", CLASSES])],
        [weight("w", 4, 3, 3, 3), weight("b", 4), weight("wf", CLASSES, 4), weight("bf", CLASSES)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(), path)
    return path


def _run(graph: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": images}), strict=True))


def _images(count: int = 2) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(count, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("classes", ["3", "281,285"])
def test_export_takes_classes_as_the_command_line_writes_them(model_path, tmp_path, classes, capsys):
    out = tmp_path / "explain.onnx"
    status = cli.main(["export", str(model_path), "-o", str(out), "-m", "gradient", "--classes", classes])
    assert status == 0, capsys.readouterr().err
    graph = onnx.load(str(out))
    assert [i.name for i in graph.graph.input] == ["x"]  # the classes are chosen inside the graph
    outputs = _run(out, _images())
    if classes == "3":
        expected = np.argsort(-outputs["logits"], axis=1, kind="stable")[:, :3]
    else:
        expected = np.array([[281, 285], [281, 285]])
    np.testing.assert_array_equal(outputs["class_ids"], expected)
    assert outputs["attributions"].shape == (2, expected.shape[1], 3, 8, 8)


@pytest.mark.parametrize("opset", [22, 25])
def test_export_with_var_takes_opsets_past_21(tmp_path, opset, capsys):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(opset=opset), model)
    out = tmp_path / "explain.onnx"
    status = cli.main(["export", str(model), "-o", str(out), "-m", "gradient", "--classes", "top3", "--var"])
    assert status == 0, capsys.readouterr().err
    outputs = _run(out, _images())
    assert outputs["var_attributions"].shape == outputs["attributions"].shape == (2, 3, 3, 8, 8)


def test_debug_shows_the_rule_that_failed(tmp_path, capsys):
    model = tmp_path / "asinh.onnx"
    onnx.save(tiny_classifier(activation="Asinh"), model)  # no classifier uses it: it has no gradient rule
    argv = ["export", str(model), "-o", str(tmp_path / "g.onnx"), "-m", "gradient"]

    assert cli.main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("varrt: error: ") and "Asinh" in lines[0]

    assert cli.main(["--debug", *argv]) == 1
    err = capsys.readouterr().err
    assert "The above exception was the direct cause" in err  # the exporter's original failure, chained
    assert "autodiff.py" in err  # the driver that found no rule for the op
    assert err.strip().splitlines()[-1] == lines[0]


def test_explain_reads_the_model_file_once(model_path, tmp_path, monkeypatch):
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(tmp_path / "photo.png")
    monkeypatch.setenv("VARRT_CACHE_DIR", str(tmp_path / "cache"))
    model_bytes = model_path.read_bytes()
    parsed: list[str] = []

    def counted(name, function, is_the_model):
        def wrapper(source, *args, **kwargs):
            if is_the_model(source):
                parsed.append(name)
            return function(source, *args, **kwargs)

        return wrapper

    def from_the_file(source) -> bool:
        return Path(source) == model_path

    def from_its_bytes(source) -> bool:  # (shape inference parses graphs from strings too)
        return source == model_bytes

    for name, is_the_model in (("load", from_the_file), ("load_model", from_the_file),
                               ("load_from_string", from_its_bytes), ("load_model_from_string", from_its_bytes)):
        monkeypatch.setattr(onnx, name, counted(name, getattr(onnx, name), is_the_model))
    argv = ["explain", str(model_path), str(tmp_path / "photo.png"), "--out", str(tmp_path / "out"),
            "-m", "gradient", "--classes", "top3", "--backend", "onnxruntime-cpu", "-q"]
    assert cli.main(argv) == 0
    assert parsed == ["load"]
    assert (tmp_path / "out" / "photo.npz").is_file()
