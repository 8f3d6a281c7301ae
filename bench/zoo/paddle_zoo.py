"""Paddle vision models (``paddle.vision.models``) with random weights, exported by paddle2onnx
(``paddle.jit.save`` then ``paddle2onnx.export``), checked against Paddle's autodiff in float64.

paddle2onnx's optimiser (polygraphy) is off: the sweep checks the graph Paddle writes, and
paddle2onnx 2.1 pins onnx<=1.17 and polygraphy, which the zoo-paddle extra installs without
(see pyproject.toml)."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx
import paddle
import paddle2onnx
from varrt.bench.zoo.harness import jitter_gain

_OPSET = 17
_CALIBRATION_IMAGES = 8
_DEFAULT_SIZE = 224
# The batch and spatial axes each form leaves dynamic (None in Paddle's InputSpec: "?" in the ONNX file).
_DYNAMIC = {"static": (), "dynamic-batch": (0,), "dynamic-hw": (0, 2, 3)}


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _build(name: str, dtype: str) -> Any:
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        return getattr(paddle.vision.models, name)(num_classes=1000)
    finally:
        paddle.set_default_dtype(previous)


def realistic(model: Any, image_shape: tuple[int, ...], seed: int = 0) -> Any:
    """Zero-initialised gains jittered, BatchNorm running statistics those of random images."""
    rng = np.random.default_rng(seed)
    for name, param in model.named_parameters():
        replacement = jitter_gain(name, param.numpy(), rng)
        if replacement is not None:
            param.set_value(replacement)
    norms = [m for m in model.sublayers() if isinstance(m, paddle.nn.layer.norm._BatchNormBase)]
    for m in norms:
        m._momentum = 0.0  # running = momentum * running + (1 - momentum) * batch: the batch's statistics
    model.train()
    images = rng.uniform(-1, 1, (_CALIBRATION_IMAGES, *image_shape)).astype(np.float32)
    with paddle.no_grad():
        model(paddle.to_tensor(images))
    for m in norms:
        m._momentum = 0.9
    model.eval()
    return model


class PaddleSubject:
    """``paddle.vision.models.<name>(num_classes=1000)`` at 224x224 (or ``size``), NCHW."""

    def __init__(self, name: str, size: int | None = None) -> None:
        paddle.set_device("cpu")
        paddle.seed(0)
        self.name = name
        side = size or _DEFAULT_SIZE
        self.image_shape: tuple[int, ...] = (3, side, side)
        self.num_classes = 1000
        self._model = realistic(_build(name, "float32"), self.image_shape)
        double = _build(name, "float64")
        double.set_state_dict({k: v.astype("float64") if v.dtype == paddle.float32 else v
                               for k, v in self._model.state_dict().items()})  # fmt: skip
        self._double = double.eval()

    def export(self, form: str) -> onnx.ModelProto:
        shape: list[int | None] = [1, *self.image_shape]
        for axis in _DYNAMIC[form]:
            shape[axis] = None
        spec = [paddle.static.InputSpec(shape=shape, dtype="float32", name="x")]
        with tempfile.TemporaryDirectory() as folder:
            prefix = os.path.join(folder, "model")
            paddle.jit.save(self._model, prefix, input_spec=spec)
            program = next(f for f in os.listdir(folder) if f.endswith((".json", ".pdmodel")))
            with _quiet_stdout():  # paddle2onnx's C++ side prints progress lines on fd 1
                data = paddle2onnx.export(os.path.join(folder, program), prefix + ".pdiparams",
                                          opset_version=_OPSET, enable_optimize=False)  # fmt: skip
        return onnx.load_from_string(data)

    def logits(self, x: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return self._model(paddle.to_tensor(x)).numpy()

    def gradients(self, x: np.ndarray, class_ids: np.ndarray, double: bool) -> np.ndarray:
        model, dtype = (self._double, "float64") if double else (self._model, "float32")
        n, k = class_ids.shape
        batch = paddle.to_tensor(np.concatenate([x] * k).astype(dtype), stop_gradient=False)
        rows = paddle.to_tensor(np.ascontiguousarray(class_ids.T).reshape(-1, 1))
        paddle.take_along_axis(model(batch), rows, axis=1).sum().backward()
        g = batch.grad.numpy().reshape(k, n, *x.shape[1:])
        return np.ascontiguousarray(g.swapaxes(0, 1))
