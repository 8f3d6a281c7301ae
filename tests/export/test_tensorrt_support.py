"""The explanation graphs stay inside what the ONNX-TensorRT parser documents as supported, and the
checker that says so catches graphs TensorRT cannot parse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from varrt.core.errors import ModelError
from varrt.export import METHODS, explain_graph
from varrt.export.methods import METHOD_TABLE
from varrt.export.tensorrt_support import SUPPORTED, UNSUPPORTED, tensorrt_problems

FAST_OPTIONS = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 4}, "gradient_shap": {"samples": 4},
                "occlusion": {"window": 8, "stride": 8}, "rise": {"samples": 8}}
# (model, method) -> the op its one-line refusal names: DeepLIFT and LRP define no rule for these.
REFUSED = {("mobilenetv3-torchscript", "lrp"): "HardSwish", ("convnext-dynamo", "deeplift"): "LayerNormalization",
           ("convnext-dynamo", "lrp"): "LayerNormalization", ("vit-torchscript", "deeplift"): "LayerNormalization",
           ("vit-torchscript", "lrp"): "LayerNormalization"}  # fmt: skip


def _torch_models():
    """tests/export/torch_models.py, imported only by the tests that run explanation graphs: it
    imports torch, and the checker tests above them must run without it."""
    pytest.importorskip("torch", reason="torch_models (models and ONNX Runtime helpers) imports torch")
    import torch_models

    return torch_models


# ------------------------------------------------------------------------ the checker on bad graphs
def _model(
    nodes: list[onnx.NodeProto],
    opset: int = 17,
    inits: dict[str, np.ndarray] | None = None,
    inputs: tuple[str, ...] = ("x",),
    domains: dict[str, int] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    return helper.make_model(graph, opset_imports=opsets)


def _i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


BAD = {
    "maxpool-indices": (
        _model([helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])]),
        "Indices output",
    ),
    "maxpool-dilations": (
        _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])]),
        "dilations",
    ),
    "maxunpool": (
        _model([helper.make_node("MaxUnpool", ["x", "i"], ["y"], kernel_shape=[2, 2])], inputs=("x", "i")),
        "MaxUnpool is not supported",
    ),
    "com.microsoft": (
        _model(
            [helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft")], domains={"com.microsoft": 1}
        ),
        "custom domain 'com.microsoft'",
    ),
    "training-gradient": (
        _model(
            [helper.make_node("Gradient", ["x"], ["y"], domain="ai.onnx.preview.training", xs=["x"], y="x")],
            domains={"ai.onnx.preview.training": 1},
        ),
        "custom domain 'ai.onnx.preview.training'",
    ),
    "reducesum-runtime-axes": (
        _model(
            [
                helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node("Cast", ["s"], ["a"], to=7),
                helper.make_node("ReduceSum", ["x", "a"], ["y"]),
            ]
        ),
        "axes input 'a' is computed at run time",
    ),
    "reducemean-18-axes-input": (
        _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"])], opset=18, inputs=("x", "axes")),
        "axes input 'axes'",
    ),
    "unsqueeze-runtime-axes": (
        _model([helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], inputs=("x", "axes")),
        "axes input",
    ),
    "slice-runtime-axes": (
        _model(
            [helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"])],
            inputs=("x", "ax"),
            inits={"st": _i64(0), "en": _i64(1)},
        ),
        "axes input 'ax'",
    ),
    "resize-cubic": (
        _model(
            [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="cubic")],
            inits={"sc": np.array([1, 1, 2, 2], np.float32)},
        ),
        "mode 'cubic'",
    ),
    "resize-crop": (
        _model(
            [
                helper.make_node(
                    "Resize",
                    ["x", "roi", "sc"],
                    ["y"],
                    mode="linear",
                    coordinate_transformation_mode="tf_crop_and_resize",
                )
            ],
            inits={"sc": np.array([1, 1, 2, 2], np.float32), "roi": np.zeros(8, np.float32)},
        ),
        "tf_crop_and_resize",
    ),
    "resize-antialias": (
        _model(
            [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", antialias=1)],
            opset=18,
            inits={"sc": np.array([1, 1, 0.5, 0.5], np.float32)},
        ),
        "antialias",
    ),
    "topk-unsorted": (
        _model([helper.make_node("TopK", ["x", "k"], ["y", "i"], sorted=0)], inits={"k": _i64(3)}),
        "sorted=0",
    ),
    "topk-large-k": (_model([helper.make_node("TopK", ["x", "k"], ["y", "i"])], inits={"k": _i64(5000)}), "K = 5000"),
    "scatterelements-add": (
        _model([helper.make_node("ScatterElements", ["x", "i", "x"], ["y"], reduction="add")], inputs=("x", "i")),
        "ScatterElements plugin",
    ),
    "scatternd-add": (
        _model([helper.make_node("ScatterND", ["x", "i", "x"], ["y"], reduction="add")], inputs=("x", "i")),
        "reduction='add' unsupported",
    ),
    "cast-double": (_model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)]), "DOUBLE"),
    "double-initializer": (
        _model([helper.make_node("Add", ["x", "w"], ["y"])], inits={"w": np.ones(3)}),
        "initializer 'w' is DOUBLE",
    ),
    "opset-8": (_model([helper.make_node("Relu", ["x"], ["y"])], opset=8), "opset 8 is outside"),
    "not-in-table": (
        _model([helper.make_node("Attention", ["x", "x", "x"], ["y"])], opset=24),
        "not in the ONNX-TensorRT",
    ),
    "layernorm-mean-output": (
        _model([helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean"])], inputs=("x", "s")),
        "only Y",
    ),
    "onehot-runtime-depth": (
        _model(
            [helper.make_node("OneHot", ["x", "d", "v"], ["y"])],
            inputs=("x", "d"),
            inits={"v": np.array([0, 1], np.float32)},
        ),
        "depth input 'd'",
    ),
    "nested-in-if": (
        _model(
            [
                helper.make_node(
                    "If",
                    ["c"],
                    ["y"],
                    then_branch=helper.make_graph(
                        [helper.make_node("MaxUnpool", ["x", "x"], ["t"], kernel_shape=[2])],
                        "t",
                        [],
                        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
                    ),
                    else_branch=helper.make_graph(
                        [helper.make_node("Identity", ["x"], ["e"])],
                        "e",
                        [],
                        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
                    ),
                )
            ],
            inputs=("x", "c"),
        ),
        "node 0.then_branch.0 (MaxUnpool)",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_checker_catches(name: str) -> None:
    model, expected = BAD[name]
    problems = tensorrt_problems(model)
    assert any(expected in p for p in problems), problems


def test_checker_accepts_constant_operands() -> None:
    """Axes from initializers or Constant nodes, Resize linear/nearest, MaxPool without Indices pass."""
    nodes = [
        helper.make_node("Constant", [], ["ax"], value=numpy_helper.from_array(_i64(2, 3))),
        helper.make_node("ReduceSum", ["x", "ax"], ["r"], keepdims=1),
        helper.make_node("Unsqueeze", ["r", "ax0"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax0"], ["q"]),
        helper.make_node("Resize", ["x", "", "sc"], ["z"], mode="linear"),
        helper.make_node("Resize", ["z", "", "sc"], ["z2"], mode="nearest", nearest_mode="floor"),
        helper.make_node("MaxPool", ["z2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Slice", ["p", "st", "en", "ax0"], ["s"]),
        helper.make_node("TopK", ["s", "k"], ["t", "ti"]),
        helper.make_node("ScatterElements", ["t", "ti", "t"], ["se"], axis=-1),
        helper.make_node("Add", ["se", "q"], ["y"]),
    ]
    inits = {"ax0": _i64(0), "sc": np.array([1, 1, 2, 2], np.float32), "st": _i64(0), "en": _i64(1), "k": _i64(2)}
    assert tensorrt_problems(_model(nodes, inits=inits)) == []


def test_tables_are_disjoint_and_cover_the_basics() -> None:
    assert not set(SUPPORTED) & UNSUPPORTED
    assert {"Conv", "ConvTranspose", "Relu", "Gemm", "MatMul", "Softmax", "Resize", "MaxPool"} <= set(SUPPORTED)
    assert {"MaxUnpool", "Unique", "SequenceAt"} <= UNSUPPORTED


# ---------------------------------------------------------------- the explanation graphs themselves
def _explain_all(model: onnx.ModelProto, label: str, x: np.ndarray, layer: str | None = None) -> None:
    """Every method's graph: no TensorRT problems, and it runs with the contract's output shapes.
    ``layer``: the CAMs' feature map (token models have no default)."""
    n, k = x.shape[0], 2
    ids = np.tile(np.arange(k, dtype=np.int64), (n, 1))
    failures = []
    for method in METHODS:
        if (label, method) in REFUSED:
            with pytest.raises(ModelError, match=f"{REFUSED[label, method]} node .*: {method}: "):
                explain_graph(model, method=method)
            continue
        options = dict(FAST_OPTIONS.get(method, {}), **({"layer": layer} if METHOD_TABLE[method].cam else {}))
        graph = explain_graph(model, method=method, **options)
        problems = tensorrt_problems(graph)
        if problems:
            failures.append(f"{label} / {method}:\n  " + "\n  ".join(problems))
            continue
        out = _torch_models().run_explanation(graph, x, ids, input_name=model.graph.input[0].name)
        spatial = x.shape[2:] if METHOD_TABLE[method].pixel_map else x.shape[1:]
        assert out["attributions"].shape == (n, k, *spatial), (label, method, out["attributions"].shape)
        assert np.isfinite(out["attributions"]).all(), (label, method)
    assert not failures, "\n".join(failures)


TORCH_CASES = [
    ("resnet", "torchscript"),
    ("vgg", "dynamo"),
    ("densenet", "torchscript"),
    ("mobilenetv3", "torchscript"),
    ("convnext", "dynamo"),
    ("vit", "torchscript"),
]


@pytest.mark.parametrize("name,exporter", TORCH_CASES, ids=[f"{m}-{e}" for m, e in TORCH_CASES])
def test_explanation_graphs_parse_in_tensorrt(name: str, exporter: str) -> None:
    tm = _torch_models()
    proto = tm.EXPORTERS[exporter](tm.TOY_MODELS[name](), tm.TOY_INPUT)
    assert tensorrt_problems(proto) == []  # the model itself is fine: any problem below is varrt's
    x, _ = tm.random_inputs(tm.TOY_INPUT, n=2)
    # the ViT's tokens [N, 1 + 8*8, C] at its last block's norm1, as pytorch-grad-cam advises
    layer = [n.output[0] for n in proto.graph.node if "/norm1/" in n.name][-1] if name == "vit" else None
    _explain_all(proto, f"{name}-{exporter}", x, layer)


@pytest.mark.parametrize("softmax", [False, True])
def test_opset9_explanation_graphs_parse_in_tensorrt(softmax: bool) -> None:
    _torch_models()
    from test_foreign_models import IMAGE, quirky_cnn

    proto = quirky_cnn("N", softmax)
    assert tensorrt_problems(proto) == []
    x = np.random.default_rng(0).normal(size=(2, *IMAGE)).astype(np.float32)
    _explain_all(proto, f"opset9-softmax={softmax}", x)


@pytest.mark.slow
def test_efficientnet_explanation_graphs_parse_in_tensorrt(effnet_onnx_path: Path) -> None:
    """Every method on EfficientNet-Lite0, explained from its file path (the CLI's way in)."""
    assert tensorrt_problems(onnx.load(effnet_onnx_path)) == []
    for method in METHODS:
        graph = explain_graph(str(effnet_onnx_path), method=method, **FAST_OPTIONS.get(method, {}))
        assert tensorrt_problems(graph) == [], method
