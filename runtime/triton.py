"""Triton Inference Server: an explanation graph -> a model repository entry.

Triton serves the explanation graph as it is (it is an ordinary ONNX model), on its ONNX Runtime
backend: ``DIR/NAME/config.pbtxt`` and ``DIR/NAME/1/model.onnx``. The config is read off the graph
itself: every input and output with its Triton data type and dims (-1 where the graph leaves a
size open), so what Triton checks requests against is what ONNX Runtime will run.

Batching: with ``max_batch_size`` B > 0 (the default, 8) Triton owns the batch axis, so every
tensor's first dim must be the graph's dynamic batch and ``dims`` leave it out; requests are
batched by Triton's dynamic batcher. With B = 0 Triton does not batch, ``dims`` are the full
shapes, and a graph exported with a fixed batch (``--batch``) is served as it is. A fixed-batch
graph with B > 0 is refused: Triton would send it batches of any size up to B.

The text is written here, in protobuf text format, without tritonclient (not a runtime
dependency); the tests parse it with Triton's own schema (``tritonclient.grpc.model_config_pb2``).

>>> from varrt.export import explain_graph                                # doctest: +SKIP
>>> print(model_config(explain_graph("model.onnx", method="gradient"), "explain"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import onnx
from onnx import TensorProto
from varrt.core.errors import UsageError, VarrtError

#: What ``--triton-platform`` chooses: plain ONNX Runtime, or its TensorRT execution accelerator.
PLATFORMS = ("onnxruntime", "tensorrt")
#: Where Triton places the model's instances (``instance_group`` kind).
DEVICES = ("gpu", "cpu")
DEFAULT_MAX_BATCH_SIZE = 8
CONFIG_NAME = "config.pbtxt"
MODEL_FILE = "model.onnx"  # the ONNX Runtime backend's default_model_filename
VERSION = "1"

# ONNX element type -> Triton's DataType (model_config.proto); others have no Triton equivalent.
_DATA_TYPES: dict[int, str] = {
    TensorProto.BOOL: "TYPE_BOOL",
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.UINT16: "TYPE_UINT16",
    TensorProto.UINT32: "TYPE_UINT32",
    TensorProto.UINT64: "TYPE_UINT64",
    TensorProto.INT8: "TYPE_INT8",
    TensorProto.INT16: "TYPE_INT16",
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.STRING: "TYPE_STRING",
    TensorProto.BFLOAT16: "TYPE_BF16",
}
# A model name is a folder name in the repository: one path component, not hidden.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_options(name: str, max_batch_size: int, platform: str, device: str) -> None:
    """Raise a UsageError for options no repository can be written with (checked before the export)."""
    if not _NAME.fullmatch(name):
        raise UsageError(f"--name {name!r} is not a model name: use letters, digits, '_', '-' and '.' "
                         "(one folder name, not starting with '.')")
    if max_batch_size < 0:
        raise UsageError(f"--max-batch-size must be 0 (Triton does not batch) or more, got {max_batch_size}")
    if platform not in PLATFORMS:
        raise UsageError(f"--triton-platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    if device not in DEVICES:
        raise UsageError(f"--triton-device must be one of {', '.join(DEVICES)}, got {device!r}")
    if platform == "tensorrt" and device == "cpu":
        raise UsageError("--triton-platform tensorrt runs on GPUs: drop --triton-device cpu")


def model_config(
    model: onnx.ModelProto,
    name: str,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    platform: str = "onnxruntime",
    device: str = "gpu",
    comment: str = "",
) -> str:
    """Triton's ``config.pbtxt`` for serving ``model`` (an explanation graph) as ``name``.

    ``comment`` lines go on top as ``#`` comments (the command that wrote it, say).
    """
    check_options(name, max_batch_size, platform, device)
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"name: {_quote(name)}", 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}"]
    lines += _tensors("input", inputs, max_batch_size)
    lines += _tensors("output", graph.output, max_batch_size)
    if max_batch_size > 0:
        lines.append("dynamic_batching { }")
    lines += ["instance_group [", "  {", "    count: 1", f"    kind: KIND_{device.upper()}", "  }", "]"]
    if platform == "tensorrt":
        # The ONNX Runtime backend's TensorRT execution accelerator (onnxruntime_backend README);
        # FP32: FP16 graphs are an export option (casts in the graph), not a builder setting.
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator: [",
            "      {",
            '        name: "tensorrt"',
            '        parameters { key: "precision_mode" value: "FP32" }',
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _tensors(kind: str, values: Iterable[onnx.ValueInfoProto], max_batch_size: int) -> list[str]:
    """``input [ {...}, ... ]`` (or ``output``): each value's name, data type and dims."""
    entries = [
        f"  {{\n    name: {_quote(value.name)}\n    data_type: {_data_type(value)}\n"
        f"    dims: [ {', '.join(map(str, _dims(value, max_batch_size)))} ]\n  }}"
        for value in values
    ]
    return [f"{kind} [", ",\n".join(entries), "]"]


def _data_type(value: onnx.ValueInfoProto) -> str:
    if not value.type.HasField("tensor_type"):
        raise VarrtError(f"Triton serves tensors only; graph value {value.name!r} is not a tensor")
    element = value.type.tensor_type.elem_type
    if element not in _DATA_TYPES:
        raise VarrtError(f"graph value {value.name!r} has ONNX type {TensorProto.DataType.Name(element)}, "
                         "which Triton has no data type for")
    return _DATA_TYPES[element]


def _dims(value: onnx.ValueInfoProto, max_batch_size: int) -> list[int]:
    """The value's shape, -1 for every size the graph leaves open; without the batch axis when Triton batches."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        raise VarrtError(f"graph value {value.name!r} has no shape; Triton needs its rank")
    dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim]
    if max_batch_size == 0:
        return dims
    if not dims or dims[0] != -1:
        first = "no axes" if not dims else f"a fixed first axis of {dims[0]}"
        raise UsageError(f"graph value {value.name!r} has {first}, but Triton batching (--max-batch-size "
                         f"{max_batch_size}) needs a dynamic batch axis: export without --batch, or pass "
                         "--max-batch-size 0 to serve the fixed batch as it is")
    if len(dims) == 1:
        raise UsageError(f"graph value {value.name!r} is 1-D [batch]; with Triton batching its dims would be "
                         "empty: pass --max-batch-size 0")
    return dims[1:]


def _quote(text: str) -> str:
    """A protobuf text-format string literal: printable ASCII as is, quotes and backslashes escaped,
    every other byte of the UTF-8 as an octal escape (as protobuf's own printer does)."""
    escapes = {ord("\\"): "\\\\", ord('"'): '\\"'}
    body = "".join(escapes.get(b, chr(b) if 32 <= b < 127 else f"\\{b:03o}") for b in text.encode("utf-8"))
    return f'"{body}"'


# --- the repository folder -------------------------------------------------------------------------
def check_destination(repository: Path, name: str, force: bool) -> None:
    """Raise unless ``repository/name`` may be written: absent, an empty folder, or ``force``."""
    target = repository / name
    if repository.exists() and not repository.is_dir():
        raise VarrtError(f"cannot write the Triton repository {repository}: it is not a directory")
    if target.exists() and not target.is_dir():
        raise VarrtError(f"cannot write model {name!r}: {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise UsageError(f"{target} exists and is not empty: pass --force to replace it (all its versions), "
                         "or choose another --name")


def write_repository(
    repository: Path, name: str, config: str, write_model: Callable[[Path], None], force: bool = False
) -> Path:
    """Write ``repository/name/config.pbtxt`` and ``repository/name/1/model.onnx``; returns the folder.

    The folder is built beside its final place under a temporary name and renamed into place, so
    an error leaves nothing behind and a reader never sees half a model. ``write_model(path)``
    writes the ONNX file (with its external data, if any, beside it). With ``force`` an existing
    folder is replaced whole; without it, only an absent or empty one.
    """
    check_destination(repository, name, force)
    target = repository / name
    repository.mkdir(parents=True, exist_ok=True)
    staging = repository / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        (staging / VERSION).mkdir(parents=True)
        (staging / CONFIG_NAME).write_text(config, encoding="utf-8")
        write_model(staging / VERSION / MODEL_FILE)
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; a previous ``target`` is moved aside first, restored on failure."""
    if not target.exists():
        os.replace(staging, target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
