"""Caffe2-era ONNX zoo classifiers as a new user meets them: the "light" models shipped inside
the onnx package (opset 9, weights made by ConstantOfShape, initializers listed as inputs,
final Softmax). Checked against central finite differences of the original model.

The light models' weights are one constant per tensor, large enough to push logits to 1e18,
where float32 finite differences mean nothing; ``_tame`` keeps the graphs as they are (the same
ConstantOfShape nodes) and only sets each constant to a fan-in-scaled value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from varrt.export import explain_graph

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["light_squeezenet.onnx", "light_shufflenet.onnx", "light_inception_v1.onnx", "light_densenet121.onnx",
          "light_resnet50.onnx"]
# With one constant per weight tensor these deep graphs have logits where float32 differences
# resolve nothing (Inception ~1e-6, DenseNet gradients ~1e-8, ResNet-50 logits quantised to 2^-8):
# they are checked for export, ONNX checker, runtime and logits only. Their real-weight
# counterparts are checked against torch.autograd in test_torch_models.py.
NO_FINITE_DIFFERENCES = {"light_inception_v1.onnx", "light_densenet121.onnx", "light_resnet50.onnx"}


def _tame(model: onnx.ModelProto) -> onnx.ModelProto:
    initial = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape":
            continue
        shape = [int(d) for d in initial[node.input[0]]]
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
        value = 1.0 / fan_in if fan_in else 0.5  # weights ~ 1/fan-in; biases and BN statistics 0.5
        for attribute in node.attribute:
            if attribute.name == "value":
                attribute.t.CopyFrom(onnx.numpy_helper.from_array(np.array([value], np.float32)))
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_gradient_matches_finite_differences(name: str):
    path = LIGHT / name
    if not path.is_file():
        pytest.skip(f"{path} is not shipped by this onnx version")
    original = _tame(onnx.load(str(path)))
    graph = explain_graph(original, method="gradient")
    onnx.checker.check_model(graph)

    data_name = graph.graph.input[0].name
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    classes = np.array([[3, 500, 999]])
    logits, maps = _session(graph).run(["logits", "attributions"], {data_name: x, "class_ids": classes})

    # the graph's logits are the model's output, or the input of its final Softmax
    reference = _session(original).run(None, {data_name: x})[0].reshape(1, -1)
    if any(node.op_type == "Softmax" for node in original.graph.node):
        shifted = np.exp(logits - logits.max())
        logits = shifted / shifted.sum()
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-6)
    if name in NO_FINITE_DIFFERENCES:
        return

    # Finite differences along each map's own direction: a well-conditioned check, since the
    # derivative there is the map's norm (random directions cancel to ~1% of it).
    session = _session(graph)
    eps = 3e-2
    for k, c in enumerate(classes[0]):
        norm = float(np.linalg.norm(maps[0, k]))
        direction = (maps[0, k] / norm)[None].astype(np.float32)
        plus = session.run(["logits"], {data_name: x + eps * direction, "class_ids": classes})[0]
        minus = session.run(["logits"], {data_name: x - eps * direction, "class_ids": classes})[0]
        numeric = (plus[0, c] - minus[0, c]) / (2 * eps)
        assert abs(numeric - norm) <= 3e-2 * norm, (name, c, numeric, norm)
