"""Tiny classifiers for the reliability tests, built with onnx.helper (and torch when present)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

SHAPE = (3, 8, 8)  # C, H, W of the tiny models
CLASSES = 6


def tiny_cnn(seed: int = 0, batch: str | int = "N", opset: int = 13, size: int = SHAPE[1]) -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(scale=0.5, size=shape).astype(np.float32), name)

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
    inits = [weight("w1", 4, 3, 3, 3), weight("b1", 4), weight("w2", 5, 4, 3, 3), weight("b2", 5),
             weight("wf", CLASSES, 5), weight("bf", CLASSES)]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, SHAPE[0], size, size])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_mlp(seed: int = 1) -> onnx.ModelProto:
    """Flatten -> MatMul -> Add -> Sigmoid -> MatMul: a second, differently shaped graph."""
    rng = np.random.default_rng(seed)
    features = int(np.prod(SHAPE))
    inits = [
        numpy_helper.from_array(rng.normal(size=(features, 7)).astype(np.float32) * 0.1, "w1"),
        numpy_helper.from_array(rng.normal(size=(7,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(7, CLASSES)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
        helper.make_node("Sigmoid", ["hb"], ["s"], name="sig"),
        helper.make_node("MatMul", ["s", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def torch_cnn(path: Path) -> onnx.ModelProto | None:
    """A small torch CNN (BatchNorm, ReLU6, AvgPool) exported with the TorchScript exporter."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU6(),
        torch.nn.AvgPool2d(2), torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.LeakyReLU(0.1),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, CLASSES),
    ).eval()
    torch.onnx.export(net, (torch.zeros(1, *SHAPE),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=13, dynamo=False)
    return onnx.load(str(path))


def light_zoo_model(name: str) -> onnx.ModelProto | None:
    """A weight-free Caffe2-era zoo graph shipped inside the onnx package (opset 9), or None."""
    path = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    return onnx.load(str(path)) if path.is_file() else None


def images(count: int, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, *shape)).astype(np.float32)


def varrt_command() -> list[str]:
    script = Path(sys.executable).parent / "varrt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "varrt.cli"]


def run_varrt(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VARRT_CACHE_DIR=str(cwd / ".varrt-cache"))
    return subprocess.run([*varrt_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def write_png(path: Path, size: tuple[int, int] = (12, 12), seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(path)
    return path
