"""Keras applications (``keras.applications``) with random weights, exported by tf2onnx from a
``tf.function`` (NHWC input, as TensorFlow models are), checked against ``tf.GradientTape`` in
float64 (the same architecture built with floatx float64, the float32 weights copied in)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from typing import Any  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from varrt.bench.zoo.harness import jitter_gain  # noqa: E402

_OPSET = 17
_CALIBRATION_IMAGES = 8
_DEFAULT_SIZE = 224
_DYNAMIC = {"static": (), "dynamic-batch": (0,), "dynamic-hw": (0, 1, 2)}  # NHWC


def _layers(model: Any) -> list[Any]:
    """Every layer, nested models' included."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found += _layers(layer)
    return found


def _build(name: str, side: int, floatx: str) -> Any:
    """Layers take the global dtype policy, which Keras fixes from floatx at its first use: both set."""
    previous, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(floatx)
    try:
        keras.utils.set_random_seed(0)
        return getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3), classes=1000,
                                                 classifier_activation=None)  # fmt: skip
    finally:
        keras.config.set_floatx(previous)
        keras.config.set_dtype_policy(policy)


def realistic(model: Any, image_shape: tuple[int, ...], seed: int = 0) -> Any:
    """Zero-initialised gains jittered, BatchNorm moving statistics those of random images."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        replacement = jitter_gain(variable.path, np.asarray(variable.numpy()), rng)
        if replacement is not None:
            variable.assign(replacement)
    norms = [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # moving = momentum * moving + (1 - momentum) * batch: the batch's statistics
    images = rng.uniform(-1, 1, (_CALIBRATION_IMAGES, *image_shape)).astype(np.float32)
    model(images, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    return model


class KerasSubject:
    """``keras.applications.<name>(weights=None)`` at 224x224x3 (or ``size``), logits out."""

    def __init__(self, name: str, size: int | None = None) -> None:
        side = size or _DEFAULT_SIZE
        self.name = name
        self.image_shape: tuple[int, ...] = (side, side, 3)
        self.num_classes = 1000
        self._model = realistic(_build(name, side, "float32"), self.image_shape)
        self._double = _build(name, side, "float64")
        self._double.set_weights([w.astype(np.float64) for w in self._model.get_weights()])

    def export(self, form: str) -> onnx.ModelProto:
        shape: list[int | None] = [1, *self.image_shape]
        for axis in _DYNAMIC[form]:
            shape[axis] = None
        model = self._model
        function = tf.function(lambda x: model(x, training=False))
        spec = [tf.TensorSpec(shape, tf.float32, name="input")]
        proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=_OPSET)
        return proto

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._model(x, training=False))

    def gradients(self, x: np.ndarray, class_ids: np.ndarray, double: bool) -> np.ndarray:
        model, dtype = (self._double, tf.float64) if double else (self._model, tf.float32)
        n, k = class_ids.shape
        batch = tf.constant(np.concatenate([x] * k), dtype=dtype)
        rows = tf.constant(np.ascontiguousarray(class_ids.T).reshape(-1, 1))
        with tf.GradientTape() as tape:
            tape.watch(batch)
            score = tf.reduce_sum(tf.gather(model(batch, training=False), rows, batch_dims=1))
        g = tape.gradient(score, batch).numpy().reshape(k, n, *x.shape[1:])
        return np.ascontiguousarray(g.swapaxes(0, 1))
