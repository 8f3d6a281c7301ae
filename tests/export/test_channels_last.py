"""Channels-last models (Keras/TensorFlow through tf2onnx, TFLite conversions): input [N, H, W, C].

The models are built here as a Keras model is: a PyTorch module that takes [N, H, W, C] and permutes
to channels-first at its start, exported by torch's real ONNX exporter with that NHWC input. One
keeps its maps channels-first to the end (the permute is the graph's first op); the other permutes
back to channels-last after the convolutions and ends like a Keras head (LayerNorm over channels,
mean over H and W), so Grad-CAM's feature map is itself [N, h, w, C]. H != W everywhere, so a
swapped axis cannot pass. References: torch.autograd on the same module.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the references are computed with torch")
tm = pytest.importorskip("torch_models")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from varrt.core.errors import UsageError  # noqa: E402
from varrt.export import explain_graph  # noqa: E402

HEIGHT, WIDTH = 24, 32
SHAPE = (HEIGHT, WIDTH, 3)


class Permuted(nn.Module):
    """ResNet-like body, NHWC in; ``head="nchw"`` pools the NCHW map, ``"nhwc"`` permutes back first."""

    def __init__(self, head: str, channels: int = 3) -> None:
        super().__init__()
        base = tm.ResNetish()
        self.stem, self.layers, self.fc, self.head = base.stem, base.layers, base.fc, head
        if channels != 3:  # e.g. RGB + near infrared
            self.stem = nn.Sequential(nn.Conv2d(channels, 3, 1), *self.stem)
        self.norm = nn.LayerNorm(32)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The map Grad-CAM uses: [N, C, h, w] for the NCHW head, [N, h, w, C] for the NHWC one."""
        maps = self.layers(self.stem(x.permute(0, 3, 1, 2)))
        return maps if self.head == "nchw" else self.norm(maps.permute(0, 2, 3, 1))

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        return self.fc(maps.mean(dim=(2, 3) if self.head == "nchw" else (1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


@pytest.fixture(scope="module", params=["nchw", "nhwc"])
def model(request):
    torch.manual_seed(0)
    module = tm._randomise(Permuted(request.param), 0)
    return module, tm.export_torchscript(module, SHAPE)


def _inputs(n: int = 2, k: int = 3):
    return tm.random_inputs(SHAPE, n=n, k=k)


def test_input_is_detected_channels_last(model):
    _, proto = model
    dims = [d.dim_value or None for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [None, HEIGHT, WIDTH, 3]
    graph = explain_graph(proto, "gradient")
    assert {p.key: p.value for p in graph.metadata_props}["varrt.layout"] == "nhwc"


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_input_space_maps_are_nhwc_and_match_torch(model, method):
    module, proto = model
    x, ids = _inputs()
    out = tm.run_explanation(explain_graph(proto, method), x, ids)["attributions"]
    expected = tm.torch_gradients(module, x, ids) * (x[:, None] if method == "input_x_gradient" else 1)
    assert out.shape == (2, 3, HEIGHT, WIDTH, 3) == expected.shape
    errors = tm.rel_errors(out, expected)
    tm.record("channels-last vs torch", method, module.head, errors.max())
    assert errors.max() < 1e-4


def test_integrated_gradients_match_torch(model):
    module, proto = model
    x, ids = _inputs()
    steps = 4
    out = tm.run_explanation(explain_graph(proto, "integrated_gradients", steps=steps), x, ids)["attributions"]
    alphas = [1.0] + [s / steps for s in range(1, steps)]  # the exporter's points on the path
    mean = np.mean([tm.torch_gradients(module, (a * x).astype(np.float32), ids) for a in alphas], axis=0)
    errors = tm.rel_errors(out, mean * x[:, None])
    tm.record("channels-last vs torch", "integrated_gradients", module.head, errors.max())
    assert out.shape == (2, 3, HEIGHT, WIDTH, 3) and errors.max() < 1e-4


def test_smoothgrad_without_noise_is_the_gradient(model):
    module, proto = model
    x, ids = _inputs()
    out = tm.run_explanation(explain_graph(proto, "smoothgrad", samples=2, noise=0.0), x, ids)["attributions"]
    assert tm.rel_errors(out, tm.torch_gradients(module, x, ids)).max() < 1e-4


def _torch_gradcam(module: Permuted, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Grad-CAM at ``module.features`` in torch, upsampled bilinearly (half-pixel) to [N, K, H, W]."""
    maps = module.features(torch.from_numpy(x)).detach().requires_grad_(True)
    channel_last = module.head == "nhwc"
    cams = []
    for k in range(ids.shape[1]):
        (grad,) = torch.autograd.grad(module.classify(maps).gather(1, torch.from_numpy(ids[:, k:k + 1])).sum(), maps)
        spatial, channel = ((1, 2), 3) if channel_last else ((2, 3), 1)
        weights = grad.mean(dim=spatial, keepdim=True)
        cams.append(F.relu((weights * maps).sum(dim=channel)))
    cam = torch.stack(cams, dim=1)  # [N, K, h, w]
    up = F.interpolate(cam, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
    return up.detach().numpy()


def test_gradcam_matches_torch(model):
    module, proto = model
    x, ids = _inputs()
    out = tm.run_explanation(explain_graph(proto, "gradcam"), x, ids)["attributions"]
    expected = _torch_gradcam(module, x, ids)
    assert out.shape == (2, 3, HEIGHT, WIDTH) == expected.shape
    errors = tm.rel_errors(out, expected)
    tm.record("channels-last vs torch", "gradcam", module.head, errors.max())
    assert errors.max() < 1e-4


class _GuidedRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _Guided(nn.Module):
    def forward(self, x):
        return _GuidedRelu.apply(x)


def _guided_copy(module: Permuted) -> Permuted:
    """The module with every ReLU's backward passing only positive signals to positive inputs."""
    import copy

    guided = copy.deepcopy(module)
    for parent in guided.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _Guided())
    return guided


def test_guided_gradcam_broadcasts_over_the_last_axis(model):
    module, proto = model
    x, ids = _inputs()
    out = tm.run_explanation(explain_graph(proto, "guided_gradcam"), x, ids)["attributions"]
    expected = tm.torch_gradients(_guided_copy(module), x, ids) * _torch_gradcam(module, x, ids)[..., None]
    assert out.shape == (2, 3, HEIGHT, WIDTH, 3)
    errors = tm.rel_errors(out, expected)
    tm.record("channels-last vs torch", "guided_gradcam", module.head, errors.max())
    assert errors.max() < 1e-4


def test_layout_override(model):
    _, proto = model
    with pytest.raises(UsageError, match="--layout must be one of nchw, nhwc"):
        explain_graph(proto, "gradient", layout="chw")
    # Read channels-first, the image's width would reach the first Conv's channel axis: refused, not explained.
    with pytest.raises(UsageError, match=r"Conv node .* takes channels on axis 1 of its input, which is the image's "
                       r"width if the image is channels-first \[N, C, H, W\]: its layout must be nhwc"):
        explain_graph(proto, "gradcam", layout="nchw")


def test_wrong_override_on_a_channels_first_model_is_refused():
    torch.manual_seed(2)
    proto = tm.export_torchscript(tm._randomise(tm.ResNetish(), 2), (3, 3, 3))  # [N, 3, 3, 3]: nchw by the rule
    explain_graph(proto, "gradcam")
    with pytest.raises(UsageError, match="which is the image's height if the image is channels-last"):
        explain_graph(proto, "gradcam", layout="nhwc")


def test_four_band_model_needs_the_override():
    """[N, H, W, 4] does not look channels-last (4 is no image channel count): layout="nhwc" says it."""
    torch.manual_seed(1)
    module = tm._randomise(Permuted("nchw", channels=4), 1)
    proto = tm.export_torchscript(module, (HEIGHT, WIDTH, 4))
    x, ids = tm.random_inputs((HEIGHT, WIDTH, 4), n=2, k=2)
    graph = explain_graph(proto, "gradcam", layout="nhwc")
    assert {p.key: p.value for p in graph.metadata_props}["varrt.layout"] == "nhwc"
    out = tm.run_explanation(graph, x, ids)["attributions"]
    assert tm.rel_errors(out, _torch_gradcam(module, x, ids)).max() < 1e-4
