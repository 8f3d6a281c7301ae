"""Every user-facing failure: one line `varrt: error: ...` naming the cause, the right exit code,
no traceback (unless --debug), and nothing written.

CLI cases run `varrt` in a subprocess; Python API cases check the Explainer's UsageErrors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import testbed as models
from onnx import TensorProto, helper
from varrt.core.errors import ModelError, UnsupportedOpError, UsageError
from varrt.explainer import Explainer
from varrt.export.rules import RULES


def _save(model: onnx.ModelProto, name: str) -> Callable[[Path], None]:
    return lambda d: onnx.save(model, d / name)


def _edited(edit: Callable[[onnx.ModelProto], None]) -> onnx.ModelProto:
    model = models.tiny_cnn()
    edit(model)
    return model


def _truncated(d: Path) -> None:
    data = (d / "tiny.onnx").read_bytes()
    (d / "bad.onnx").write_bytes(data[: len(data) // 2])


def _not_onnx(d: Path) -> None:
    (d / "bad.onnx").write_text("this is a text file, not a model\n")


def _dangling(m):
    m.graph.node[1].input[0] = "nowhere"


# A standard elementwise op with no VJP rule, put on the gradient path in place of relu1 (Round was
# one until it got a zero rule: the table decides, so the op is picked from it).
NO_RULE = next(op for op in ("Shrink", "Softsign", "ThresholdedRelu", "Selu", "Celu")
               if op not in {row.op for row in RULES})


def _no_rule(m):
    m.graph.node[1].op_type = NO_RULE


def _custom(m):
    m.graph.node[1].domain, m.graph.node[1].op_type = "com.example", "MyRelu"
    m.opset_import.append(helper.make_opsetid("com.example", 1))


def _double_bias(m):
    m.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(np.zeros(4, np.float64), "b1"))


def _two_inputs(m):
    m.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 3, 8, 8]))


def _int_input(m):
    m.graph.input[0].name = "pixels"
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    m.graph.node.insert(0, helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT))


def _four_channels(d: Path) -> None:
    model = models.tiny_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4
    w1 = onnx.numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w1")
    model.graph.initializer[0].CopyFrom(w1)
    onnx.save(model, d / "bad.onnx")


def _fixed_batch(d: Path) -> None:
    onnx.save(models.tiny_cnn(batch=1), d / "bad.onnx")


def _undecodable(d: Path) -> None:
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")


def _truncated_png(d: Path) -> None:
    data = (d / "img1.png").read_bytes()
    (d / "broken.png").write_bytes(data[: len(data) - 40])


def _empty_dir(d: Path) -> None:
    (d / "nothing").mkdir()


def _blocker(d: Path) -> None:
    (d / "blocker").write_text("a file where a folder should be")


EXPORT = ("export", "-m", "gradient", "-o", "out/graph.onnx")
IMG = "img0.png"

# id, setup, arguments, exit code, words the one-line message must contain
CLI_CASES: list[tuple[str, Callable[[Path], None] | None, tuple[str, ...], int, tuple[str, ...]]] = [
    ("missing-model-export", None, (*EXPORT, "missing.onnx"), 1, ("missing.onnx",)),
    ("missing-model-explain", None, ("explain", "missing.onnx", IMG, "--out", "out"), 1, ("missing.onnx",)),
    ("truncated-model", _truncated, (*EXPORT, "bad.onnx"), 1, ("bad.onnx", "not a readable ONNX model")),
    ("non-onnx-file", _not_onnx, (*EXPORT, "bad.onnx"), 1, ("bad.onnx", "not a readable ONNX model")),
    ("truncated-model-explain", _truncated, ("explain", "bad.onnx", IMG, "--out", "out"), 1, ("bad.onnx",)),
    ("fails-checker", _save(_edited(_dangling), "bad.onnx"), (*EXPORT, "bad.onnx"), 1,
     ("bad.onnx", "onnx.checker", "nowhere")),
    ("no-vjp-rule", _save(_edited(_no_rule), "bad.onnx"), (*EXPORT, "bad.onnx"), 1, (NO_RULE, "relu1")),
    ("custom-domain", _save(_edited(_custom), "bad.onnx"), (*EXPORT, "bad.onnx"), 1,
     ("MyRelu", "com.example", "relu1")),
    ("type-mismatch", _save(_edited(_double_bias), "bad.onnx"), (*EXPORT, "bad.onnx"), 1,
     ("bad.onnx", "conv1", "double")),
    ("several-inputs", _save(_edited(_two_inputs), "bad.onnx"), (*EXPORT, "bad.onnx"), 1, ("x", "x2")),
    ("no-float-input", _save(_edited(_int_input), "bad.onnx"), (*EXPORT, "bad.onnx"), 1, ("pixels", "INT64")),
    ("unknown-method-export", None, ("export", "-m", "nope", "-o", "out/g.onnx", "tiny.onnx"), 2, ("nope",)),
    ("unknown-method-explain", None, ("explain", "tiny.onnx", IMG, "--out", "out", "-m", "nope"), 2, ("nope",)),
    ("unknown-option", None, ("explain", "tiny.onnx", IMG, "--out", "out", "--bogus"), 2, ("--bogus",)),
    ("bad-option-value", None, ("explain", "tiny.onnx", IMG, "--out", "out", "--batch-size", "0"), 2,
     ("batch_size", "0")),
    ("bad-steps", None, ("explain", "tiny.onnx", IMG, "--out", "out", "-m", "integrated_gradients", "--steps", "0"),
     2, ("steps",)),
    ("non-finite-tau", None, ("explain", "tiny.onnx", IMG, "--out", "out", "--tau", "nan"), 2, ("tau", "nan")),
    # Among good images a bad one is an error row (tests/runtime/test_error_rows.py); alone, nothing is explained.
    ("undecodable-image", _undecodable, ("explain", "tiny.onnx", "broken.png", "--out", "out"), 1,
     ("broken.png", "decode")),
    ("truncated-image", _truncated_png, ("explain", "tiny.onnx", "broken.png", "--out", "out"), 1,
     ("broken.png", "decode")),
    ("missing-image", None, ("explain", "tiny.onnx", "nope.png", "--out", "out"), 1, ("nope.png",)),
    ("empty-image-folder", _empty_dir, ("explain", "tiny.onnx", "nothing", "--out", "out"), 1, ("nothing",)),
    ("wrong-channel-count", _four_channels, ("explain", "bad.onnx", IMG, "--out", "out"), 2, ("axis 1", "4")),
    ("wrong-size", _fixed_batch, ("explain", "bad.onnx", IMG, "--out", "out", "--size", "16"), 2, ("8x8", "16x16")),
    ("k-larger-than-classes", None, ("explain", "tiny.onnx", IMG, "--out", "out", "--classes", "top9"), 2,
     ("top9", "6")),
    ("class-id-out-of-range", None, ("explain", "tiny.onnx", IMG, "--out", "out", "--classes", "1,99"), 2,
     ("99", "6 classes")),
    ("bad-class-spec", None, ("explain", "tiny.onnx", IMG, "--out", "out", "--classes", "1,x"), 2, ("1,x",)),
    ("unwritable-out-folder", _blocker, ("explain", "tiny.onnx", IMG, "--out", "blocker/out"), 1,
     ("blocker", "not a directory")),
    ("unwritable-export-output", _blocker, ("export", "-m", "gradient", "-o", "blocker/g.onnx", "tiny.onnx"), 1,
     ("blocker", "not a directory")),
    ("tensorrt-missing", None, ("explain", "tiny.onnx", IMG, "--out", "out", "--backend", "tensorrt"), 2,
     ("tensorrt", "not available")),
    ("cuda-missing", None, ("explain", "tiny.onnx", IMG, "--out", "out", "--backend", "cuda"), 2,
     ("onnxruntime-cuda", "not available")),
    ("cuda-device-missing", None, ("explain", "tiny.onnx", IMG, "--out", "out", "--device", "cuda"), 2,
     ("cuda", "no GPU backend")),
    ("unknown-backend", None, ("explain", "tiny.onnx", IMG, "--out", "out", "--backend", "nope"), 2, ("nope",)),
]


def _gpu_stack_present() -> bool:
    from varrt.backends.select import unavailable_reason

    return unavailable_reason("onnxruntime-cuda") is None or unavailable_reason("tensorrt") is None


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and ".varrt-cache" not in p.parts}


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_error(case, workdir):
    name, setup, args, code, words = case
    if name in ("tensorrt-missing", "cuda-missing", "cuda-device-missing") and _gpu_stack_present():
        pytest.skip("this machine has a GPU backend")
    if setup is not None:
        setup(workdir)
    before = _files(workdir)
    result = models.run_varrt(*args, cwd=workdir)
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("varrt: error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert _files(workdir) == before, "a failed run wrote files"
    assert not (workdir / "out").exists() or not any((workdir / "out").iterdir())


def test_debug_adds_the_traceback(workdir):
    result = models.run_varrt("--debug", "export", "-m", "gradient", "-o", "g.onnx", "missing.onnx", cwd=workdir)
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("varrt: error: ")


def test_auto_backend_falls_back_to_the_cpu(workdir):
    result = models.run_varrt("explain", "tiny.onnx", IMG, "--out", "out", "-q", "--backend", "auto", cwd=workdir)
    assert result.returncode == 0, result.stderr
    written = {p.name for p in (workdir / "out").iterdir()}
    assert written == {"img0.npz", "img0.png", "results.parquet", "index.html", "thumbs"}


def test_grayscale_and_odd_sized_images_are_converted(workdir):
    models.write_png(workdir / "gray.png", size=(30, 7), mode="L")
    result = models.run_varrt("explain", "tiny.onnx", "gray.png", "--out", "out", "-q", "--no-overlays", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert np.load(workdir / "out" / "gray.npz")["attributions"].shape == (5, *models.SHAPE)


# --- Python API -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api_explainer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    onnx.save(models.tiny_cnn(), folder / "tiny.onnx")
    with Explainer(str(folder / "tiny.onnx"), method="gradient", classes="top2", backend="onnxruntime-cpu",
                   cache_dir=folder / "cache") as explainer:
        yield explainer


def _with(value: float) -> np.ndarray:
    images = models.images(3)
    images[1, 2, 3, 4] = value
    return images


API_CASES = [
    ("nan", lambda e: e(_with(np.nan)), ("NaN or Inf", "image 1")),
    ("inf", lambda e: e(_with(np.inf)), ("NaN or Inf", "image 1")),
    ("empty-batch", lambda e: e(np.zeros((0, *models.SHAPE), np.float32)), ("empty batch",)),
    ("not-a-batch", lambda e: e(models.images(1)[0]), ("[N, C, H, W]",)),
    ("integer-images", lambda e: e(np.zeros((1, *models.SHAPE), np.uint8)), ("float32", "uint8")),
    ("wrong-channels", lambda e: e(models.images(1, (4, 8, 8))), ("axis 1", "4")),
    ("wrong-size", lambda e: e(models.images(1, (3, 9, 8))), ("axis 2", "9")),
    ("class-id-out-of-range", lambda e: e(models.images(2), class_ids=[[0, 1], [2, 6]]), ("class id 6", "6")),
    ("class-ids-rows", lambda e: e(models.images(2), class_ids=[[0, 1]]), ("1 rows", "2 images")),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_error(case, api_explainer):
    _, call, words = case
    with pytest.raises(UsageError) as info:
        call(api_explainer)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(method="nope"), UsageError, ("nope",)),
        (dict(bogus=1), UsageError, ("bogus",)),
        (dict(classes="top9"), UsageError, ("top9", "6")),
        (dict(classes=[0, 6]), UsageError, ("class id 6",)),
        (dict(batch_size=0), UsageError, ("batch_size",)),
        (dict(tau=float("inf")), UsageError, ("tau",)),
        (dict(backend="nope"), UsageError, ("nope",)),
    ],
    ids=["method", "option", "k-too-large", "id-out-of-range", "batch-size", "tau", "backend"],
)
def test_api_constructor_error(kwargs, error, words, tmp_path):
    onnx.save(models.tiny_cnn(), tmp_path / "tiny.onnx")
    kwargs = {"method": "gradient", "backend": "onnxruntime-cpu", **kwargs}
    with pytest.raises(error) as info:
        Explainer(str(tmp_path / "tiny.onnx"), cache_dir=tmp_path / "cache", **kwargs)
    for word in words:
        assert word in str(info.value)


def test_api_model_errors_are_model_errors(tmp_path):
    model = _edited(_no_rule)
    with pytest.raises(UnsupportedOpError, match=NO_RULE):
        Explainer(model, method="gradient", backend="onnxruntime-cpu", cache_dir=tmp_path)
    with pytest.raises(ModelError, match="missing.onnx"):
        Explainer(str(tmp_path / "missing.onnx"), method="gradient", backend="onnxruntime-cpu", cache_dir=tmp_path)


def test_missing_rule_names_the_file_node_and_op(tmp_path):
    from varrt.export import explain_graph

    path = tmp_path / "no_rule.onnx"
    onnx.save(_edited(_no_rule), path)
    with pytest.raises(UnsupportedOpError) as info:
        explain_graph(str(path), method="gradient")
    message = str(info.value)
    assert message.startswith(f"{path}: no gradient rule for op {NO_RULE}") and "node '" in message
