"""Strided-conv cotangents carried as stride phases (export/passes/phases.py) against torch.autograd.

Each model puts a stride-2 convolution in front of the rules that take phases (activation masks,
1x1 Convs, Add) and of rules that make the driver interleave them (a 3x3 Conv, a widening 1x1
Conv, a sum with a whole tensor), then compares the vector-Jacobian products of K random
cotangents with torch, plain and guided. Opset 9 is in the grid because there the phase masks
cannot use Slice steps.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from varrt.export.vjp import vjp_model

torch = pytest.importorskip("torch", reason="the references are torch models")

import torch_models as tm  # noqa: E402
from torch import nn  # noqa: E402

K = 3
SHAPE = (16, 12, 10)  # 16 channels: the dense strided conv takes the phase form too


class GuidedLeakyReLU(torch.autograd.Function):
    """LeakyReLU (slope 0: ReLU) whose backward passes only positive cotangents (Springenberg et al.)."""

    @staticmethod
    def forward(ctx, x, slope):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.slope = slope
        return torch.where(x > 0, x, slope * x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g.clamp(min=0) * torch.where(x > 0, 1.0, ctx.slope), None


class Act(nn.Module):
    """ReLU6 / ReLU / LeakyReLU / Sigmoid; all but Sigmoid follow the guided flag."""

    guided = False

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu6":
            if Act.guided:  # ReLU6 = min(ReLU(x), 6): guided at 0, plain at 6
                return torch.minimum(GuidedLeakyReLU.apply(x, 0.0), torch.full_like(x, 6.0))
            return nn.functional.relu6(x)
        if self.kind == "relu":
            return GuidedLeakyReLU.apply(x, 0.0) if Act.guided else torch.relu(x)
        if self.kind == "leaky":
            return GuidedLeakyReLU.apply(x, 0.1) if Act.guided else nn.functional.leaky_relu(x, 0.1)
        return torch.sigmoid(x)


class Inverted(nn.Module):
    """MobileNet/EfficientNet block: 1x1 expand, act, strided depthwise, act, 1x1 project."""

    def __init__(self, act: str, kernel: int = 3, residual_before: bool = False, widen_after: bool = False) -> None:
        super().__init__()
        c = SHAPE[0]
        self.pre = nn.Conv2d(c, c, 3, 1, 1) if residual_before else None
        self.expand = nn.Conv2d(c, 4 * c, 1)
        self.act1, self.act2 = Act(act), Act(act)
        self.depthwise = nn.Conv2d(4 * c, 4 * c, kernel, 2, kernel // 2, groups=4 * c)
        self.project = nn.Conv2d(4 * c, 6, 1)
        # a 1x1 conv in front of the block narrows forward, so its VJP widens: the driver interleaves
        self.narrow = nn.Conv2d(2 * c, c, 1) if widen_after else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.narrow is not None:
            x = self.narrow(torch.cat([x, -x], 1))
        if self.pre is not None:
            x = x + self.pre(x)  # the phases reach an Add, then a 3x3 conv and a sum
        return self.project(self.act2(self.depthwise(self.act1(self.expand(x)))))


class TwoBranches(nn.Module):
    """Two strided branches of one input: its cotangent sums two phased parts phase by phase."""

    def __init__(self) -> None:
        super().__init__()
        c = SHAPE[0]
        self.a = nn.Conv2d(c, c, 3, 2, 1, groups=c)
        self.b = nn.Conv2d(c, c, 5, 2, 2)
        self.act_a, self.act_b = Act("relu6"), Act("relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_a(self.a(x)) * self.act_b(self.b(x))


MODELS = {
    "relu6": lambda: Inverted("relu6"),
    "relu-5x5": lambda: Inverted("relu", kernel=5),
    "leaky": lambda: Inverted("leaky"),
    "sigmoid": lambda: Inverted("sigmoid"),
    "residual": lambda: Inverted("relu6", residual_before=True),
    "widening": lambda: Inverted("relu6", widen_after=True),
    "two-branches": TwoBranches,
}


def _vjps(model: nn.Module, x: np.ndarray, cotangents: np.ndarray, opset: int, guided: bool) -> tuple:
    proto = vjp_model(tm.export_torchscript(model, SHAPE, opset=opset), modified_backward="guided" if guided else None,
                      target="onnxruntime-cpu")
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = session.run(["grad_input"], {"input": x, "cotangent_output": cotangents})[0]
    Act.guided = guided
    try:
        inputs = torch.from_numpy(x).requires_grad_(True)
        out = model(inputs)
        theirs = np.stack([
            torch.autograd.grad(out, inputs, torch.from_numpy(c), retain_graph=True)[0].numpy() for c in cotangents
        ])
    finally:
        Act.guided = False
    return ours, theirs, proto


@pytest.mark.parametrize("opset", [9, 17])
@pytest.mark.parametrize("guided", [False, True], ids=["plain", "guided"])
@pytest.mark.parametrize("name", list(MODELS))
def test_phased_cotangents_match_torch(name: str, guided: bool, opset: int) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *SHAPE)).astype(np.float32) * 2
    with torch.no_grad():
        out_shape = model(torch.from_numpy(x)).shape
    cotangents = rng.standard_normal((K, *out_shape)).astype(np.float32)
    ours, theirs, proto = _vjps(model, x, cotangents, opset, guided)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(np.abs(theirs).max()))
    # the path under test was taken: masks cut into phases by SpaceToDepth; two phased parts
    # summed phase by phase and interleaved once (an interleave is 3 Concats of Unsqueezed phases)
    ops = [node.op_type for node in proto.graph.node]
    producers = {out: node.op_type for node in proto.graph.node for out in node.output}
    stacking = [n for n in proto.graph.node if n.op_type == "Concat"
                and all(producers.get(i) == "Unsqueeze" for i in n.input)]
    if name == "two-branches":
        assert "SpaceToDepth" not in ops and len(stacking) == 3
    else:
        assert "SpaceToDepth" in ops
