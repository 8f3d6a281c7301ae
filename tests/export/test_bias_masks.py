"""Guided ReLU masks in the bias form (export/passes/bias_masks.py), taken with a batch fixed to 1.

References: masks computed by hand at the values where an inexact form would slip (0, the smallest
denormal, just below and at the ReLU6 cap); torch autograd with a guided ReLU/ReLU6; the Mul form
of the same graph with a dynamic batch, on the bundled EfficientNet-Lite0.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from varrt import export
from varrt.core.errors import UsageError
from varrt.export.vjp import vjp_model

torch = pytest.importorskip("torch", reason="the references are torch models")

import torch_models as tm  # noqa: E402
from torch import nn  # noqa: E402

SCALE = 2.0**100  # the weight of the scaling convolutions, which marks the bias form in a graph


def _bias_form_convs(proto: onnx.ModelProto) -> int:
    weights = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    def scaling(weight: np.ndarray) -> bool:  # all 2^100, or one-hot 2^100 kernels that pick a phase
        return np.abs(weight).max() == SCALE and set(np.unique(np.abs(weight))) <= {0.0, SCALE}

    return sum(1 for node in proto.graph.node
               if node.op_type == "Conv" and node.input[1] in weights and scaling(weights[node.input[1]]))


def _fixed_batch(proto: onnx.ModelProto) -> onnx.ModelProto:
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    del proto.graph.value_info[:]
    return proto


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], name: str) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], feeds)[0]


def test_edge_values_give_exactly_the_hand_computed_mask() -> None:
    """x -> identity 1x1 Conv -> Clip(0, 6) -> identity 1x1 Conv: the guided input gradient is
    relu(g) * (0 < x < 6), bit for bit, at 0, 6, the smallest denormal and the float below 6."""
    channels = 4
    below_six = np.nextafter(np.float32(6), np.float32(0))
    tiny = np.float32(2.0**-149)
    special = np.array([0.0, 6.0, tiny, below_six, -tiny, 7.0, 1e-30, 3.0], np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate([special, rng.normal(scale=4, size=channels * 5 * 5 - special.size)]).astype(np.float32)
    x = x.reshape(1, channels, 5, 5)
    eye = numpy_helper.from_array(np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1), "eye")
    low = numpy_helper.from_array(np.array(0, np.float32), "low")
    high = numpy_helper.from_array(np.array(6, np.float32), "high")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "eye"], ["a"]), helper.make_node("Clip", ["a", "low", "high"], ["y"]),
         helper.make_node("Conv", ["y", "eye"], ["output"])],
        "edge", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, 5, 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, 5, 5])], [eye, low, high])
    proto = vjp_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                      modified_backward="guided", target="onnxruntime-cpu")
    assert _bias_form_convs(proto) == 3  # the path under test: two for "y > 0", one for "y < 6"

    g = rng.normal(size=(3, *x.shape)).astype(np.float32)
    g[:, 0, 0, :] = np.abs(g[:, 0, 0, :]) + 1  # positive cotangents at the special values, so masks show
    ours = _run(proto, {"input": x, "cotangent_output": g}, "grad_input")
    expected = np.maximum(g, 0) * ((x > 0) & (x < 6))
    np.testing.assert_array_equal(ours, expected)


class _GuidedReLU6(torch.autograd.Function):
    """clip(x, 0, cap) whose backward passes only positive cotangents, inside (0, cap)."""

    @staticmethod
    def forward(ctx, x, cap):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.cap = cap
        return x.clamp(0, cap)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g.clamp(min=0) * ((x > 0) & (x < ctx.cap)), None


class _Block(nn.Module):
    """1x1 expand, ReLU6 (its cotangent comes from the strided depthwise as phases), strided
    depthwise, ReLU, 1x1 project, ReLU6, 3x3 head."""

    guided = False

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(16, 64, 1)
        self.depthwise = nn.Conv2d(64, 64, 3, 2, 1, groups=64)
        self.project = nn.Conv2d(64, 16, 1)
        self.head = nn.Conv2d(16, 16, 3, padding=1)

    def act(self, x: torch.Tensor, cap: float) -> torch.Tensor:
        if _Block.guided:
            return _GuidedReLU6.apply(x, cap)
        return x.clamp(0, cap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.act(self.depthwise(self.act(self.expand(x), 6.0)), float("inf")))
        return self.head(self.act(y, 6.0))


def test_guided_block_with_batch_one_matches_torch() -> None:
    torch.manual_seed(0)
    model = _Block().eval()
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((1, 16, 12, 12)) * 2).astype(np.float32)
    proto = vjp_model(_fixed_batch(tm.export_torchscript(model, (16, 12, 12))), modified_backward="guided",
                      target="onnxruntime-cpu")
    # scaling convs: 3 per ReLU6 (2 for y > 0, 1 for y < 6), 2 per uncapped ReLU. Backward order:
    # the project's ReLU6, the depthwise's ReLU, then expand's ReLU6 once per stride phase (its
    # cotangent comes from the strided depthwise as 4 phases)
    assert _bias_form_convs(proto) == 3 + 2 + 4 * 3
    with torch.no_grad():
        out_shape = model(torch.from_numpy(x)).shape
    cotangents = rng.standard_normal((3, *out_shape)).astype(np.float32)
    ours = _run(proto, {"input": x, "cotangent_output": cotangents}, "grad_input")
    _Block.guided = True
    try:
        inputs = torch.from_numpy(x).requires_grad_(True)
        out = model(inputs)
        theirs = np.stack([torch.autograd.grad(out, inputs, torch.from_numpy(c), retain_graph=True)[0].numpy()
                           for c in cotangents])
    finally:
        _Block.guided = False
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(np.abs(theirs).max()))


@pytest.fixture(scope="module")
def demo_graphs() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    from varrt.data import demo_model_path

    model = str(demo_model_path())
    return (export.explain_graph(model, "guided_backprop", classes="top4+min"),
            export.explain_graph(model, "guided_backprop", classes="top4+min", batch=1, target="onnxruntime-cpu"))


def test_bundled_effnet_bias_form_equals_mul_form(demo_graphs) -> None:
    dynamic, single = demo_graphs
    assert _bias_form_convs(dynamic) == 0 and _bias_form_convs(single) > 0
    assert single.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    expected = [_run(dynamic, {"input": image}, name) for name in ("class_ids", "attributions")]
    ours = [_run(single, {"input": image}, name) for name in ("class_ids", "attributions")]
    np.testing.assert_array_equal(ours[0], expected[0])
    np.testing.assert_allclose(ours[1], expected[1], rtol=1e-5, atol=1e-6 * float(np.abs(expected[1]).max()))


def _reorders(proto: onnx.ModelProto, path) -> int:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path)
    options.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sum(node.op_type == "ReorderOutput" for node in onnx.load(str(path), load_external_data=False).graph.node)


def test_bundled_effnet_masks_stay_in_onnx_runtimes_blocked_layout(demo_graphs, tmp_path) -> None:
    """What the bias form is for: ONNX Runtime stops reordering the cotangents around each mask."""
    dynamic, single = demo_graphs
    before, after = _reorders(dynamic, tmp_path / "dynamic.onnx"), _reorders(single, tmp_path / "single.onnx")
    if before == 0:
        pytest.skip("this CPU gets no NCHWc layout from ONNX Runtime (no AVX2/AVX-512)")
    assert after < 0.4 * before, (before, after)


def test_batch_option_is_checked() -> None:
    from varrt.data import demo_model_path

    with pytest.raises(UsageError, match="integrated_gradients runs its steps along the batch axis"):
        export.explain_graph(str(demo_model_path()), "integrated_gradients", batch=1)
    with pytest.raises(UsageError, match="--batch must be a positive integer"):
        export.explain_graph(str(demo_model_path()), "gradient", batch=0)
    model = tm.export_torchscript(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval(), (3, 5, 5))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    with pytest.raises(UsageError, match="batch axis of input 'input' is fixed to 8, not 1"):
        export.explain_graph(model, "gradient", batch=1)
