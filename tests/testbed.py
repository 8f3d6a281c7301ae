"""Tiny ONNX classifiers, inputs for them and the `varrt` command: shared by the runtime, bench and
reliability tests (tests/conftest.py puts this folder on sys.path).

Built with onnx.helper, so they need no torch, and small enough that the real exporter and the
real Explainer run on them in milliseconds. Several are chosen so that their attributions are
known in closed form, which is what the tests compare varrt with:

- ``linear_classifier``: logits = flatten(x) @ W + b, so d logit_k / d x = W[:, k];
  with ``square=True``, logits = flatten(x * x) @ W + b, so d logit_k / d x = 2 x W[:, k].
- ``colour_classifier``: an identity 1x1 Conv, ReLU, global average pool and a Gemm, so its
  Grad-CAM map is ReLU(sum_c fc[k, c] relu(x_c)) / (H W).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

SHAPE = (3, 8, 8)  # C, H, W of tiny_cnn and tiny_mlp by default
CLASSES = 6


def classifier(
    nodes: list[onnx.NodeProto],
    initializers: dict[str, np.ndarray],
    *,
    name: str,
    input_shape: tuple[int, ...],
    classes: int,
    input_name: str = "input",
    output_name: str = "logits",
    batch: str | int = "N",
    opset: int = 17,
    preset: str | None = None,
) -> onnx.ModelProto:
    """A checked model from ``input_name`` [batch, *input_shape] to ``output_name`` [batch, classes].

    IR version 8 (the opset 17 era): newer onnx would default to an IR version onnxruntime cannot
    load yet. ``preset`` goes to the ``varrt.preset`` metadata the preprocessing reads.
    """
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, *input_shape])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(np.asarray(value, np.float32), key) for key, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if preset is not None:
        helper.set_model_props(model, {"varrt.preset": preset})
    onnx.checker.check_model(model)
    return model


def linear_weights(shape: tuple[int, ...] = SHAPE, classes: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded W [prod(shape), classes] and b [classes], float32."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(int(np.prod(shape)), classes)).astype(np.float32)
    return weights, rng.normal(size=classes).astype(np.float32)


def linear_classifier(
    weights: np.ndarray,
    bias: np.ndarray,
    shape: tuple[int, ...] = SHAPE,
    *,
    square: bool = False,
    softmax: bool = False,
    batch: str | int = "N",
    preset: str | None = None,
) -> onnx.ModelProto:
    """logits = flatten(x) @ W + b (``square``: flatten(x * x) @ W + b); ``softmax`` appends a
    Softmax, whose input is then the logits varrt reports."""
    nodes = [helper.make_node("Mul", ["input", "input"], ["squared"], name="square")] if square else []
    nodes += [
        helper.make_node("Flatten", ["squared" if square else "input"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["scores" if softmax else "logits"], name="fc"),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["logits"], name="softmax", axis=1))
    return classifier(nodes, {"fc.w": weights, "fc.b": bias}, name="linear", input_shape=shape,
                      classes=weights.shape[1], batch=batch, preset=preset)


def linear_job(folder: Path, weights: np.ndarray, bias: np.ndarray, shape: tuple[int, ...],
               photos: int) -> tuple[Path, Path, list[Path]]:
    """What a `varrt explain` run needs, in ``folder``: the linear classifier (preset 'none'), a
    labels file ("thing i" per class), and ``photos`` PNGs of other sizes than the model's."""
    model = folder / "linear.onnx"
    onnx.save(linear_classifier(weights, bias, shape, preset="none"), model)
    labels = folder / "labels.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(len(bias))))
    pngs = [write_png(folder / f"photo{i}.png", size=(12 + i, 10), seed=i) for i in range(photos)]
    return model, labels, pngs


def tiny_cnn(
    seed: int = 0, batch: str | int = "N", opset: int = 13, size: int = SHAPE[1], preset: str | None = None
) -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax,
    input ``x`` [batch, 3, size, size], CLASSES classes; three layers with weights."""
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return rng.normal(scale=0.5, size=shape)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits_raw"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits_raw"], ["prob"], name="softmax", axis=1),
    ]
    weights = {"w1": weight(4, 3, 3, 3), "b1": weight(4), "w2": weight(5, 4, 3, 3), "b2": weight(5),
               "wf": weight(CLASSES, 5), "bf": weight(CLASSES)}
    return classifier(nodes, weights, name="tiny_cnn", input_shape=(SHAPE[0], size, size), classes=CLASSES,
                      input_name="x", output_name="prob", batch=batch, opset=opset, preset=preset)


def tiny_mlp(seed: int = 1) -> onnx.ModelProto:
    """Flatten -> MatMul -> Add -> Sigmoid -> MatMul: a second, differently shaped graph."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.normal(size=(int(np.prod(SHAPE)), 7)) * 0.1, "b1": rng.normal(size=(7,)),
               "w2": rng.normal(size=(7, CLASSES))}
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
        helper.make_node("Sigmoid", ["hb"], ["s"], name="sig"),
        helper.make_node("MatMul", ["s", "w2"], ["y"], name="mm2"),
    ]
    return classifier(nodes, weights, name="tiny_mlp", input_shape=SHAPE, classes=CLASSES, input_name="x",
                      output_name="y")


COLOUR_SCALE = 10.0
COLOUR_FC = COLOUR_SCALE * np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [-1, -1, -1]], np.float32)
COLOUR_BIAS = np.array([0, 0, 0, 0.5 * COLOUR_SCALE], np.float32)


def colour_classifier(size: int = 16) -> onnx.ModelProto:
    """Classes by mean colour of 0..1 pixels: 0 red, 1 green, 2 blue, 3 black (preset 'none').

    Conv 1x1 (identity) -> Relu -> GlobalAveragePool -> Flatten -> Gemm, so photos of solid
    colours are classified with near certainty and every explanation method has a path to follow.
    """
    weights = {"mix.w": np.eye(3).reshape(3, 3, 1, 1), "mix.b": np.zeros(3), "fc.w": COLOUR_FC,
               "fc.b": COLOUR_BIAS}
    nodes = [
        helper.make_node("Conv", ["input", "mix.w", "mix.b"], ["mixed"], name="mix"),
        helper.make_node("Relu", ["mixed"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    return classifier(nodes, weights, name="colours", input_shape=(3, size, size), classes=4, batch="batch",
                      preset="none")


# --- inputs ------------------------------------------------------------------------------------------
def images(count: int, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, *shape)).astype(np.float32)


def write_png(path: Path, size: tuple[int, int] = (12, 12), seed: int = 0, mode: str = "RGB") -> Path:
    """Random pixels, ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(path)
    return path


# --- references -----------------------------------------------------------------------------------
def var_reference(attributions: np.ndarray, temperature: float = 10.0, tau: float = 0.01) -> np.ndarray:
    """The paper's VAR step over axis 1 (the classes), in float64, written out independently of
    varrt.kernels: M = softmax(T |A|), VAR = A M [M - 1/K > tau]."""
    a = np.asarray(attributions, np.float64)
    scaled = temperature * np.abs(a)
    e = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    m = e / e.sum(axis=1, keepdims=True)
    return a * m * (m - 1.0 / a.shape[1] > tau)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def top_and_min(logits: np.ndarray, top: int, with_min: bool = True) -> np.ndarray:
    """The class rule "topK+min" (or "topK") computed with NumPy."""
    ranked = np.argsort(-logits, axis=1, kind="stable")
    return np.concatenate([ranked[:, :top], ranked[:, -1:]], axis=1) if with_min else ranked[:, :top]


def runnable_backends() -> list[str]:
    """The backends that can run here, decided without varrt: TensorRT importable and a CUDA device
    CuPy sees; ONNX Runtime with its CUDAExecutionProvider and a device; the CPU always."""
    import onnxruntime

    try:
        import cupy

        device = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, or no driver
        device = False
    usable = []
    if device and importlib.util.find_spec("tensorrt") is not None:
        usable.append("tensorrt")
    if device and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        usable.append("onnxruntime-cuda")
    return [*usable, "onnxruntime-cpu"]


# --- the command line --------------------------------------------------------------------------------
def varrt_command() -> list[str]:
    script = Path(sys.executable).parent / "varrt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "varrt.cli"]


def run_varrt(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`varrt ARGS` in a subprocess, with its graph cache inside ``cwd``."""
    env = dict(os.environ, VARRT_CACHE_DIR=str(cwd / ".varrt-cache"))
    return subprocess.run([*varrt_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)
