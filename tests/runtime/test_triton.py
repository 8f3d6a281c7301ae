"""`varrt export --triton-repo DIR --name NAME`: a Triton Inference Server model repository entry.

No Triton server runs here. What can be checked without one is: the written config.pbtxt parses
with Triton's own protobuf schema (tritonclient ships model_config_pb2), its tensors, data types
(named by tritonclient's own numpy mapping) and dims agree with the graph's and with the shapes
ONNX Runtime actually returns, and the repository's model.onnx is the explanation graph, giving
the same outputs as `explain_graph`'s. The tiny models of tests/testbed.py go through the real
exporter and the real command.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import testbed
from onnx import helper
from varrt import cli, triton
from varrt.core.errors import UsageError
from varrt.export import explain_graph

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] (the test extra) holds Triton's config schema"
)
text_format = pytest.importorskip("google.protobuf.text_format")
triton_utils = pytest.importorskip("tritonclient.utils")

NAME = "tiny_explain"


# --- helpers ---------------------------------------------------------------------------------------
def export_repo(tmp_path: Path, *args: str, model: onnx.ModelProto | None = None) -> int:
    """`varrt export tiny.onnx --triton-repo tmp_path/repo ARGS` in-process; returns the exit status."""
    path = tmp_path / "tiny.onnx"
    if not path.exists():
        onnx.save(model if model is not None else testbed.tiny_cnn(), str(path))
    try:
        return cli.main(["export", str(path), "--triton-repo", str(tmp_path / "repo"), *args])
    except SystemExit as error:  # argparse's own refusals (varrt's parser prints one line, exits 2)
        return int(error.code or 0)


def read_config(folder: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def triton_type(value: onnx.ValueInfoProto) -> str:
    """The value's Triton data type, by tritonclient's own numpy -> Triton mapping."""
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return "TYPE_" + triton_utils.np_to_triton_dtype(dtype)


def graph_tensors(values, batched: bool) -> list[tuple[str, str, list[int]]]:
    """(name, data type, dims) of graph values as Triton should see them."""
    rows = []
    for value in values:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        rows.append((value.name, triton_type(value), dims[1:] if batched else dims))
    return rows


def config_tensors(entries) -> list[tuple[str, str, list[int]]]:
    return [(e.name, model_config_pb2.DataType.Name(e.data_type), list(e.dims)) for e in entries]


def run(model: onnx.ModelProto | Path, images: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    feeds = {"x": images, "class_ids": ids}
    feeds = {value.name: feeds[value.name] for value in session.get_inputs()}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


# --- the repository ---------------------------------------------------------------------------------
CASES = {
    # a classes rule: the graph picks the classes and outputs them; no class_ids input
    "top4+min": (["--method", "guided_backprop", "--classes", "top4+min", "--var"],
                 dict(method="guided_backprop", classes="top4+min", var=True)),
    # class ids fed by the client: a class_ids input [N, K], K open
    "fed": (["--method", "gradient"], dict(method="gradient")),
    "gradcam": (["--method", "gradcam"], dict(method="gradcam")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_parses_with_tritons_schema_and_matches_the_graph(tmp_path, case, capsys):
    args, options = CASES[case]
    assert export_repo(tmp_path, "--name", NAME, *args) == 0
    folder = tmp_path / "repo" / NAME
    assert listing(tmp_path / "repo") == [NAME, f"{NAME}/1", f"{NAME}/1/model.onnx", f"{NAME}/config.pbtxt"]
    assert f"wrote Triton model {folder}" in capsys.readouterr().out
    config = read_config(folder)
    assert (config.name, config.platform, config.max_batch_size) == (NAME, "onnxruntime_onnx", 8)
    assert config.HasField("dynamic_batching")
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
        (1, "KIND_GPU")
    ]
    assert not config.HasField("optimization")

    graph = explain_graph(testbed.tiny_cnn(), **options).graph
    assert config_tensors(config.input) == graph_tensors(graph.input, batched=True)
    assert config_tensors(config.output) == graph_tensors(graph.output, batched=True)
    inputs = [entry.name for entry in config.input]
    outputs = {entry.name: entry for entry in config.output}
    c, h, w = testbed.SHAPE
    assert config_tensors(config.input)[0] == ("x", "TYPE_FP32", [c, h, w])
    assert config_tensors([outputs["logits"]]) == [("logits", "TYPE_FP32", [testbed.CLASSES])]
    if case == "top4+min":
        assert inputs == ["x"]
        assert config_tensors([outputs["class_ids"]]) == [("class_ids", "TYPE_INT64", [5])]
        assert list(outputs["var_attributions"].dims) == [5, c, h, w]
    else:
        assert inputs == ["x", "class_ids"] and "class_ids" not in outputs
        assert config_tensors(config.input)[1] == ("class_ids", "TYPE_INT64", [-1])
        assert list(outputs["attributions"].dims) == ([-1, c, h, w] if case == "fed" else [-1, h, w])


@pytest.mark.parametrize("case", list(CASES))
def test_the_repository_model_is_the_explanation_graph(tmp_path, case):
    args, options = CASES[case]
    assert export_repo(tmp_path, "--name", NAME, *args) == 0
    folder = tmp_path / "repo" / NAME
    images = testbed.images(3)
    ids = np.array([[0, 5], [2, 2], [4, 1]], np.int64)
    served = run(folder / "1" / "model.onnx", images, ids)
    expected = run(explain_graph(testbed.tiny_cnn(), **options), images, ids)
    assert served.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(served[name], expected[name], err_msg=name)
    # What ONNX Runtime returns fits the config: the batch axis, then the dims (-1: any size).
    for entry in read_config(folder).output:
        shape = served[entry.name].shape
        assert shape[0] == len(images) and len(shape) == len(entry.dims) + 1, entry.name
        assert all(d in (-1, s) for d, s in zip(entry.dims, shape[1:])), (entry.name, shape, entry.dims)


def test_the_repository_model_is_what_dash_o_writes(tmp_path):
    assert export_repo(tmp_path, "--name", NAME, "-m", "guided_backprop", "--classes", "top2+min") == 0
    plain = tmp_path / "plain.onnx"
    assert cli.main(["export", str(tmp_path / "tiny.onnx"), "-o", str(plain), "-m", "guided_backprop",
                     "--classes", "top2+min"]) == 0
    assert (tmp_path / "repo" / NAME / "1" / "model.onnx").read_bytes() == plain.read_bytes()


def test_tensorrt_platform_adds_the_execution_accelerator(tmp_path):
    assert export_repo(tmp_path, "--name", NAME, "--method", "gradient", "--triton-platform", "tensorrt") == 0
    config = read_config(tmp_path / "repo" / NAME)
    assert config.platform == "onnxruntime_onnx"
    accelerators = config.optimization.execution_accelerators
    assert len(accelerators.cpu_execution_accelerator) == 0
    assert [(a.name, dict(a.parameters)) for a in accelerators.gpu_execution_accelerator] == [
        ("tensorrt", {"precision_mode": "FP32"})
    ]
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"


def test_cpu_instances_and_batch_size(tmp_path):
    assert export_repo(tmp_path, "--name", NAME, "-m", "gradient", "--triton-device", "cpu",
                       "--max-batch-size", "32") == 0
    config = read_config(tmp_path / "repo" / NAME)
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_CPU"
    assert config.max_batch_size == 32


def test_fixed_batch_is_served_with_max_batch_size_0(tmp_path, capsys):
    # Triton batching needs the dynamic batch axis: --batch with the default max batch size is refused...
    assert export_repo(tmp_path, "--name", NAME, "-m", "gradient", "--batch", "1") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--max-batch-size 0" in error
    assert listing(tmp_path / "repo") == []
    # ...and with --max-batch-size 0 written with full dims and no dynamic batching.
    assert export_repo(tmp_path, "--name", NAME, "-m", "gradient", "--batch", "1", "--max-batch-size", "0") == 0
    config = read_config(tmp_path / "repo" / NAME)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert config_tensors(config.input) == [("x", "TYPE_FP32", [1, *testbed.SHAPE]),
                                            ("class_ids", "TYPE_INT64", [1, -1])]
    # Dynamic batch, no Triton batching: the batch axis is in dims as -1.
    assert export_repo(tmp_path, "--name", "other", "-m", "gradient", "--max-batch-size", "0") == 0
    assert list(read_config(tmp_path / "repo" / "other").input[0].dims) == [-1, *testbed.SHAPE]


def test_model_config_refuses_a_fixed_batch_axis_with_batching():
    graph = explain_graph(testbed.tiny_cnn(), method="gradient", batch=1)
    with pytest.raises(UsageError, match="dynamic batch axis"):
        triton.model_config(graph, NAME, max_batch_size=4)


def test_names_are_quoted_for_the_text_format():
    name = 'pixel "values" \\ é'
    nodes = [helper.make_node("Flatten", [name], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["scores"], name="fc")]
    weights, bias = testbed.linear_weights(classes=3)
    model = testbed.classifier(nodes, {"fc.w": weights, "fc.b": bias}, name="odd", input_shape=testbed.SHAPE,
                               classes=3, input_name=name, output_name="scores")
    graph = explain_graph(model, method="gradient")
    text = triton.model_config(graph, NAME, comment="two\nlines")
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert [entry.name for entry in config.input] == [name, "class_ids"]
    assert text.startswith("# two\n# lines\n")


# --- refusals: one line, exit 2, nothing written -----------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "a/b"], "is not a model name"),
        (["--name", ".."], "is not a model name"),
        (["--name", ""], "is not a model name"),
        (["--name", NAME, "--max-batch-size", "-1"], "--max-batch-size must be 0"),
        ([], "--triton-repo needs --name"),
        (["--name", NAME, "--triton-platform", "tensorrt", "--triton-device", "cpu"], "runs on GPUs"),
        (["--name", NAME, "-o", "x.onnx"], "not allowed with"),
        (["--name", NAME, "--triton-platform", "openvino"], "invalid choice"),
    ],
)
def test_bad_options_give_one_line_and_write_nothing(tmp_path, capsys, args, message):
    assert export_repo(tmp_path, "-m", "gradient", *args) == 2
    error = capsys.readouterr().err
    assert error.startswith("varrt: error:") and error.count("\n") == 1 and message in error
    assert listing(tmp_path / "repo") == [] and not (tmp_path / "x.onnx").exists()


def test_triton_options_need_triton_repo(tmp_path, capsys):
    onnx.save(testbed.tiny_cnn(), str(tmp_path / "tiny.onnx"))
    out = tmp_path / "x.onnx"
    assert cli.main(["export", str(tmp_path / "tiny.onnx"), "-o", str(out), "-m", "gradient", "--name", NAME,
                     "--force"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--name, --force: Triton options, for --triton-repo DIR only" in error
    assert not out.exists()


def test_existing_model_folder_needs_force(tmp_path, capsys):
    folder = tmp_path / "repo" / NAME
    (folder / "2").mkdir(parents=True)
    (folder / "config.pbtxt").write_text("old")
    (folder / "2" / "model.onnx").write_text("old model")
    assert export_repo(tmp_path, "--name", NAME, "-m", "gradient") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pass --force" in error
    assert listing(tmp_path / "repo") == [NAME, f"{NAME}/2", f"{NAME}/2/model.onnx", f"{NAME}/config.pbtxt"]
    assert (folder / "config.pbtxt").read_text() == "old"

    assert export_repo(tmp_path, "--name", NAME, "-m", "gradient", "--force") == 0
    # replaced whole (the old version 2 is gone), and no staging folder is left beside it
    assert [p.name for p in (tmp_path / "repo").iterdir()] == [NAME]
    assert listing(folder) == ["1", "1/model.onnx", "config.pbtxt"]
    assert read_config(folder).name == NAME


def test_an_empty_model_folder_is_filled_without_force(tmp_path):
    (tmp_path / "repo" / NAME).mkdir(parents=True)
    assert export_repo(tmp_path, "--name", NAME, "-m", "gradient") == 0
    assert listing(tmp_path / "repo" / NAME) == ["1", "1/model.onnx", "config.pbtxt"]


def test_an_unreadable_model_writes_nothing(tmp_path, capsys):
    (tmp_path / "tiny.onnx").write_bytes(b"not onnx")
    assert export_repo(tmp_path, "--name", NAME, "-m", "gradient") == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert listing(tmp_path / "repo") == []


def test_a_failed_write_leaves_the_old_folder_and_no_staging(tmp_path):
    repository = tmp_path / "repo"
    (repository / NAME).mkdir(parents=True)
    (repository / NAME / "config.pbtxt").write_text("old")

    def failing(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        triton.write_repository(repository, NAME, "name: 'x'\n", failing, force=True)
    assert listing(repository) == [NAME, f"{NAME}/config.pbtxt"]
    assert (repository / NAME / "config.pbtxt").read_text() == "old"

