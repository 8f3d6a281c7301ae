"""timm models with random weights, exported by torch.onnx (TorchScript or dynamo), checked
against torch.autograd in float64.

Every use (export, float32 and float64 gradients) gets a fresh module loaded from one state dict:
in eval mode some timm models cache attention biases on the first forward, and a module holding
them can be neither deep-copied nor traced again.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from varrt.bench.zoo.harness import jitter_gain
from varrt.bench.zoo.torchvision_stand_in import import_timm

EXPORTERS = ("torchscript", "dynamo")
_OPSET = 17  # TorchScript exporter; dynamo uses its own default
_CALIBRATION_IMAGES = 8


def realistic(model: nn.Module, image_shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Zero-initialised gains jittered, BatchNorm running statistics those of random images."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            replacement = jitter_gain(name, param.detach().numpy(), rng)
            if replacement is not None:
                param.copy_(torch.from_numpy(replacement))
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one pass, that pass's batch statistics
        model.train()
        generator = torch.Generator().manual_seed(seed)
        model(torch.rand((_CALIBRATION_IMAGES, *image_shape), generator=generator) * 2 - 1)
    return model.eval()


class TimmSubject:
    """A timm classifier (``timm.create_model(name)``) at its default input size, or at ``size``
    (ViTs are built for it with ``img_size``; convolutional models take any size)."""

    def __init__(self, name: str, exporter: str, size: int | None = None) -> None:
        if exporter not in EXPORTERS:
            raise ValueError(f"unknown torch exporter {exporter!r}")
        self.name, self.exporter = name, exporter
        self._timm = import_timm()
        self._kwargs: dict[str, Any] = {}
        torch.manual_seed(0)
        if size is not None:
            try:
                model = self._timm.create_model(name, pretrained=False, img_size=size)
                self._kwargs = {"img_size": size}
            except TypeError:  # a convolutional model: no img_size argument, any size works
                model = self._timm.create_model(name, pretrained=False)
        else:
            model = self._timm.create_model(name, pretrained=False)
        channels = model.pretrained_cfg["input_size"][0]
        self.image_shape: tuple[int, ...] = (
            tuple(model.pretrained_cfg["input_size"]) if size is None else (channels, size, size)
        )
        self.num_classes: int = model.num_classes
        self._state = realistic(model, self.image_shape).state_dict()

    def _fresh(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        model = self._timm.create_model(self.name, pretrained=False, **self._kwargs)
        model.load_state_dict(self._state)
        return model.to(dtype).eval()

    def export(self, form: str) -> onnx.ModelProto:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _EXPORT[self.exporter](self._fresh(), self.image_shape, form)

    def logits(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self._fresh()(torch.from_numpy(x)).numpy()

    def gradients(self, x: np.ndarray, class_ids: np.ndarray, double: bool) -> np.ndarray:
        """The K classes on the batch axis, class-major ([K*N, ...]): one backward for all. The
        harness always passes two or more images, so no batch of one reaches torch's CPU BatchNorm
        backward (wrong there in 2.13 for some strides, tests/export/torch_models.py)."""
        dtype = torch.float64 if double else torch.float32
        n, k = class_ids.shape
        batch = torch.from_numpy(np.concatenate([x] * k)).to(dtype).requires_grad_(True)
        rows = torch.from_numpy(np.ascontiguousarray(class_ids.T).reshape(-1, 1))
        self._fresh(dtype)(batch).gather(1, rows).sum().backward()
        assert batch.grad is not None
        g = batch.grad.numpy().reshape(k, n, *x.shape[1:])
        return np.ascontiguousarray(g.swapaxes(0, 1))


# ------------------------------------------------------------------------------------- exporters
_DYNAMIC_AXES = {"static": {}, "dynamic-batch": {0: "N"}, "dynamic-hw": {0: "N", 2: "H", 3: "W"}}


def _example(image_shape: tuple[int, ...], form: str) -> torch.Tensor:
    """Two images where the batch is dynamic, so that the tracer does not specialise it to one."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand((1 if form == "static" else 2, *image_shape), generator=generator)


def export_torchscript(model: nn.Module, image_shape: tuple[int, ...], form: str) -> onnx.ModelProto:
    axes = _DYNAMIC_AXES[form]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        torch.onnx.export(
            model, (_example(image_shape, form),), path, dynamo=False, opset_version=_OPSET,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": axes, "output": {0: "N"} if axes else {}},
        )  # fmt: skip
        return onnx.load(path)


def export_dynamo(model: nn.Module, image_shape: tuple[int, ...], form: str) -> onnx.ModelProto:
    dims: dict[int, Any] = {}
    if form != "static":
        dims[0] = torch.export.Dim("N", min=1, max=1024)
    if form == "dynamic-hw":
        dims[2], dims[3] = torch.export.Dim("H", min=32, max=2048), torch.export.Dim("W", min=32, max=2048)
    program = torch.onnx.export(
        model, (_example(image_shape, form),), dynamo=True, input_names=["input"], output_names=["output"],
        dynamic_shapes=(dims,) if dims else None, verbose=False,
    )  # fmt: skip
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    return program.model_proto


_EXPORT: dict[str, Callable[[nn.Module, tuple[int, ...], str], onnx.ModelProto]] = {
    "torchscript": export_torchscript,
    "dynamo": export_dynamo,
}
