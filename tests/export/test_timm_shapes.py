"""Models whose exports compute sizes from Shape, explained once that arithmetic is folded (issue 12,
item 2), against torch.autograd in float64: random weights, small inputs, the TorchScript exporter.

- tf_efficientnet_lite0: TensorFlow-style "same" padding, pads computed from each input's Shape;
- Swin (a one-block-per-stage variant): window partition and reverse, padding to the window;
- a ShuffleNetV2-style net (channel split with chunk, channel shuffle with view(n, g, c/g, h, w)),
  built here since torchvision cannot import beside this torch;
- CaiT (two blocks): the class token expanded to the batch, so with a dynamic batch every token
  count after it was unknown;
- Twins-SVT (one block per stage): locally-grouped attention, Pad and Slice bounds from shapes.
The static forms are exported with batch 1 (all sizes fixed), the dynamic ones with a dynamic
batch axis, which must not block the folding of the other sizes. More models, and the forms
checked once, are in the issue's closing note.
"""

from __future__ import annotations

import io
import warnings

import onnx
import pytest

torch = pytest.importorskip("torch", reason="the timm models need torch")

import torch_models as tm  # noqa: E402
from test_timm_models import timm  # noqa: E402  (imported against a stand-in torchvision where needed)
from torch import nn  # noqa: E402
from varrt.export import explain_graph  # noqa: E402

NUM_CLASSES = 1000
REL_TOL = 1e-4  # as test_timm_models.py: float32 graph vs float64 torch; measured below 3e-6


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class _ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: stride 1 splits the channels and transforms one half; stride 2 transforms
    both paths; the halves are concatenated and shuffled."""

    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        half = c // 2
        cin = c if stride == 2 else half
        self.branch = nn.Sequential(
            nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
        )  # fmt: skip
        self.side = nn.Sequential(
            nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False), nn.BatchNorm2d(c),
            nn.Conv2d(c, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
        ) if stride == 2 else None  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.side is None:
            kept, changed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch(changed)), 1)
        else:
            out = torch.cat((self.side(x), self.branch(x)), 1)
        return _channel_shuffle(out, 2)


class ShuffleNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.units = nn.Sequential(_ShuffleUnit(8, 2), _ShuffleUnit(8, 1), _ShuffleUnit(8, 1))
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.units(self.stem(x)).mean([2, 3]))


# name: (timm model and its options, or a module class; input size)
MODELS: dict[str, tuple[object, dict, int]] = {
    "tf_efficientnet_lite0": ("tf_efficientnet_lite0", {}, 32),
    "swin": ("swin_tiny_patch4_window7_224",
             dict(img_size=64, window_size=4, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)), 64),
    "shufflenet": (ShuffleNetish, {}, 16),
    "cait": ("cait_xxs24_224", dict(img_size=32, depth=2), 32),
    "twins_svt": ("twins_svt_small", dict(img_size=64, depths=(1, 1, 1, 1)), 64),
}
CHECKS = [("tf_efficientnet_lite0", "static"), ("swin", "static"), ("swin", "dynamic"), ("shufflenet", "static"),
          ("shufflenet", "dynamic"), ("cait", "dynamic"), ("twins_svt", "dynamic")]


def _model(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """Seeded random weights, non-trivial BatchNorm/LayerNorm statistics, layer scales from [0.5, 1.5]."""
    source, options, size = MODELS[name]
    torch.manual_seed(0)
    module = timm.create_model(source, pretrained=False, **options) if isinstance(source, str) else source()  # type: ignore[operator]
    model = tm._randomise(module, 0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith(("gamma", "gamma_1", "gamma_2")):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
    return model.eval(), (3, size, size)


def _export(model: nn.Module, shape: tuple[int, int, int], form: str) -> onnx.ModelProto:
    """TorchScript exporter; "static": batch 1, every size fixed; "dynamic": a dynamic batch axis."""
    if form == "dynamic":
        return tm.export_torchscript(model, shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"])
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.slow
@pytest.mark.parametrize("name,form", CHECKS, ids=[f"{n}-{f}" for n, f in CHECKS])
def test_gradient_matches_torch(name: str, form: str) -> None:
    model, shape = _model(name)
    graph = explain_graph(_export(model, shape, form), method="gradient")
    n = 2 if form == "dynamic" else 1
    x, ids = tm.random_inputs(shape, n=n, num_classes=NUM_CLASSES, k=2, seed=7)
    attributions = tm.run_explanation(graph, x, ids)["attributions"]
    err = tm.rel_errors(attributions, tm.torch_gradients(model, x, ids, dtype=torch.float64))
    tm.record("sizes from shapes, gradient vs float64 torch.autograd: max relative error", name, form, err.max())
    assert err.max() < REL_TOL, f"relative errors per (image, class):\n{err}"
