"""A real Keras model converted by tf2onnx (input [N, H, W, C], tf2onnx's own transposes), explained
by varrt and checked against TensorFlow's own autodiff (tf.GradientTape): the gradient, Grad-CAM at the
last feature map (computed channels-last in TensorFlow, upsampled by tf.image.resize), and
``varrt explain`` end to end (.npz and PNG). Skipped where TensorFlow or tf2onnx is not installed
(the ``keras`` test extra)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow", reason="needs TensorFlow (pip install '.[keras]')")
tf2onnx = pytest.importorskip("tf2onnx", reason="needs tf2onnx (pip install '.[keras]')")
keras = pytest.importorskip("keras")

import onnxruntime as ort  # noqa: E402
from varrt import cli, data  # noqa: E402
from varrt.export import explain_graph  # noqa: E402
from varrt.images import load_image, preprocessing_for  # noqa: E402

HEIGHT, WIDTH, CLASSES = 24, 32, 5


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    """(features, head, the ONNX file): Conv-BN-Conv(stride 2)-DepthwiseConv-ReLU6 = the feature map,
    then GlobalAveragePooling-Dense; BatchNorm with random statistics so it is not the identity."""
    keras.utils.set_random_seed(0)
    image = keras.Input((HEIGHT, WIDTH, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    norm = keras.layers.BatchNormalization()
    x = norm(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    maps = keras.layers.ReLU(6.0)(x)
    features = keras.Model(image, maps)
    head_input = keras.Input(maps.shape[1:])
    head = keras.Model(head_input, keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(head_input)))
    rng = np.random.default_rng(0)
    norm.set_weights([0.5 + rng.random(8), 0.2 * rng.standard_normal(8), 0.2 * rng.standard_normal(8),
                      0.5 + rng.random(8)])
    model = keras.Model(image, head(features(image)))
    spec = (tf.TensorSpec((None, HEIGHT, WIDTH, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: model(x, training=False)),
                                             input_signature=spec, opset=17)
    path = tmp_path_factory.mktemp("keras") / "keras.onnx"
    path.write_bytes(proto.SerializeToString())
    return features, head, path


def _tape_gradients(features, head, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """d logit[n, ids[n, k]] / d x[n] by tf.GradientTape: [N, K, H, W, C]."""
    rows = []
    for k in range(ids.shape[1]):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            picked = tf.reduce_sum(head(features(xt)) * tf.one_hot(ids[:, k], CLASSES))
        rows.append(tape.gradient(picked, xt).numpy())
    return np.stack(rows, axis=1)


def _tape_gradcam(features, head, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Grad-CAM at the ReLU6 map [N, h, w, C] in TensorFlow, bilinearly resized: [N, K, H, W]."""
    maps = features(tf.constant(x))
    cams = []
    for k in range(ids.shape[1]):
        with tf.GradientTape() as tape:
            tape.watch(maps)
            picked = tf.reduce_sum(head(maps) * tf.one_hot(ids[:, k], CLASSES))
        grad = tape.gradient(picked, maps)
        weights = tf.reduce_mean(grad, axis=(1, 2), keepdims=True)
        cams.append(tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1)))
    cam = tf.stack(cams, axis=-1)  # [N, h, w, K]
    up = tf.image.resize(cam, (HEIGHT, WIDTH), method="bilinear")  # half-pixel centres, no antialias
    return np.transpose(up.numpy(), (0, 3, 1, 2))


def _run(graph, x, ids):
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["attributions"], {"image": x, "class_ids": ids})[0]


def _inputs():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, HEIGHT, WIDTH, 3)).astype(np.float32)
    return x, np.array([[0, 3, 1], [4, 2, 0]], np.int64)


def _relative(a, b):
    error = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    print(f"relative error vs TensorFlow: {error:.2e}")
    return error


def test_gradient_equals_gradient_tape(keras_model):
    features, head, path = keras_model
    x, ids = _inputs()
    out = _run(explain_graph(str(path), "gradient"), x, ids)
    expected = _tape_gradients(features, head, x, ids)
    assert out.shape == expected.shape == (2, 3, HEIGHT, WIDTH, 3)
    assert _relative(out, expected) < 1e-4


def test_gradcam_equals_tensorflow_gradcam(keras_model):
    features, head, path = keras_model
    x, ids = _inputs()
    out = _run(explain_graph(str(path), "gradcam"), x, ids)
    expected = _tape_gradcam(features, head, x, ids)
    assert out.shape == expected.shape == (2, 3, HEIGHT, WIDTH)
    assert _relative(out, expected) < 1e-4


def test_varrt_explain_on_the_keras_model(keras_model, tmp_path):
    features, head, path = keras_model
    photo = data.demo_images()[1]
    out = tmp_path / "out"
    assert cli.main(["explain", str(path), str(photo), "--out", str(out), "--method", "gradient",
                     "--classes", "3", "--backend", "onnxruntime-cpu", "--quiet"]) == 0
    saved = np.load(out / f"{photo.stem}.npz")
    assert str(saved["layout"]) == "nhwc" and (out / f"{photo.stem}.png").is_file()
    x = load_image(photo, preprocessing_for(path))[None]
    expected = _tape_gradients(features, head, x, saved["class_ids"][None])[0]
    assert saved["attributions"].shape == (3, HEIGHT, WIDTH, 3)
    assert _relative(saved["attributions"], expected) < 1e-4
