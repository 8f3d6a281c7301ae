"""Graph normalisation before differentiation: Pad folded into Conv (TensorFlow-style padding)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
from varrt.export import explain_graph

torch = pytest.importorskip("torch", reason="torch is the autograd reference")


@pytest.mark.parametrize("opset", [9, 13])
def test_zero_pad_before_conv_is_folded_and_exact(opset):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((5, 4 * 4 * 4)).astype(np.float32)  # conv output [4, 4, 4]
    bias = rng.standard_normal(5).astype(np.float32)
    pads = [0, 0, 0, 1, 0, 0, 2, 1]  # asymmetric, as TensorFlow's "same" leaves it
    inits = [onnx.numpy_helper.from_array(weight, "w"), onnx.numpy_helper.from_array(fc, "fc"),
             onnx.numpy_helper.from_array(bias, "b")]
    if opset >= 11:
        inits.append(onnx.numpy_helper.from_array(np.array(pads, np.int64), "pads"))
        pad = oh.make_node("Pad", ["x", "pads"], ["p"], mode="constant")
    else:
        pad = oh.make_node("Pad", ["x"], ["p"], pads=pads, mode="constant")
    nodes = [pad, oh.make_node("Conv", ["p", "w"], ["c"], strides=[2, 2]), oh.make_node("Relu", ["c"], ["r"]),
             oh.make_node("Flatten", ["r"], ["f"]), oh.make_node("Gemm", ["f", "fc", "b"], ["y"], transB=1)]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 7, 7])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=7)

    explained = explain_graph(model, method="gradient")
    assert "Pad" not in {n.op_type for n in explained.graph.node}
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    ids = np.array([[0, 3], [4, 1]])
    session = ort.InferenceSession(explained.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, maps = session.run(None, {"x": x, "class_ids": ids})

    xt = torch.tensor(x, requires_grad=True)
    padded = torch.nn.functional.pad(xt, (1, 1, 0, 2))  # (W left, W right, H top, H bottom)
    features = torch.relu(torch.nn.functional.conv2d(padded, torch.tensor(weight), stride=2)).flatten(1)
    out = features @ torch.tensor(fc).T + torch.tensor(bias)
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-5, atol=1e-5)
    for n in range(2):
        for k in range(2):
            (grad,) = torch.autograd.grad(out[n, ids[n, k]], xt, retain_graph=True)
            np.testing.assert_allclose(maps[n, k], grad[n].numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("opset", [21, 25])  # onnx's checker refuses GroupNormalization-18 as deprecated
def test_group_normalization_before_a_conv_matches_torch(opset):
    """ONNX's shape inference leaves a GroupNormalization output without a shape (a function op);
    the loader gives it its input's, so the layers after it can be differentiated."""
    rng = np.random.default_rng(1)
    groups, channels = 2, 4
    per = channels  # scale and bias per channel from opset 21 on
    scale, shift = rng.uniform(0.5, 1.5, per).astype(np.float32), rng.standard_normal(per).astype(np.float32)
    weight = rng.standard_normal((3, channels, 3, 3)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(shift, "t"),
             onnx.numpy_helper.from_array(weight, "w")]
    nodes = [oh.make_node("GroupNormalization", ["x", "s", "t"], ["g"], num_groups=groups),
             oh.make_node("Conv", ["g", "w"], ["c"]), oh.make_node("Flatten", ["c"], ["y"])]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", channels, 5, 5])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 27])], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)

    explained = explain_graph(model, method="gradient")
    x = rng.standard_normal((2, channels, 5, 5)).astype(np.float32)
    ids = np.array([[0, 13], [26, 5]])
    session = ort.InferenceSession(explained.SerializeToString(), providers=["CPUExecutionProvider"])
    maps = session.run(["attributions"], {"x": x, "class_ids": ids})[0]

    xt = torch.from_numpy(x).double().requires_grad_(True)
    normed = torch.nn.functional.group_norm(xt, groups, torch.from_numpy(scale).double(),
                                            torch.from_numpy(shift).double(), eps=1e-5)
    out = torch.nn.functional.conv2d(normed, torch.from_numpy(weight).double()).flatten(1)
    for n in range(2):
        for k in range(2):
            (grad,) = torch.autograd.grad(out[n, ids[n, k]], xt, retain_graph=True)
            np.testing.assert_allclose(maps[n, k], grad[n].numpy(), rtol=1e-4, atol=1e-5)
