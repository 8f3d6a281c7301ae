"""A tiny ONNX classifier for the benchmark tests: Conv-Relu-Conv-Relu-GAP-Gemm, 16x16 input."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

TINY_SIZE = 16
TINY_CLASSES = 6


def tiny_classifier(size: int = TINY_SIZE, classes: int = TINY_CLASSES, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.5):
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)

    initializers = [
        init("conv1.w", 8, 3, 3, 3),
        init("conv1.b", 8, scale=0.1),
        init("conv2.w", 8, 8, 3, 3, scale=0.3),
        init("conv2.b", 8, scale=0.1),
        init("fc.w", classes, 8),
        init("fc.b", classes, scale=0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"varrt.preset": "none"})
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def tiny_model():
    return tiny_classifier()


@pytest.fixture
def tiny_model_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(), path)
    return path
