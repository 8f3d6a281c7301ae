"""The framework-agnostic part of the zoo sweep: one model, every form, against its framework.

A framework module (torch_zoo, keras_zoo, paddle_zoo) hands the harness a ``Subject``: the model's
image shape, its ONNX export in each form, and its own autodiff's gradients in float64 and
float32. The harness explains each export with ``explain_graph``, runs it on ONNX Runtime and
compares the attributions with the float64 reference, one ``Record`` per (form, method).

Forms (how users export): ``static`` (every size fixed, batch 1), ``dynamic-batch`` (batch axis
dynamic, checked with two images), ``dynamic-hw`` (batch, height and width dynamic; explained with
``input_shape=`` fixing them to one image at the model's size).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
from varrt.core.errors import VarrtError
from varrt.export import explain_graph

FORMS = ("static", "dynamic-batch", "dynamic-hw")
METHODS = ("gradient", "input_x_gradient")
# The bar: relative error < 1e-2 per (image, class). The graph runs in float32 and the
# reference in float64; on 224x224 inputs through 20-100 layers float32 rounding alone gives
# 1e-7..1e-5, and a ReLU/max-pool decision that flips near a tie costs up to ~1e-3 on some inputs
# (the framework's own float32 gradient then differs as much: see framework_f32_error). A wrong
# rule, a lost broadcast or a permuted layout gives O(1).
REL_TOL = 1e-2
N_IMAGES, K_CLASSES = 2, 2
# The exported file against the framework's own forward, both float32: rounding gives ~1e-6; an
# exporter that baked the batch into a Reshape or mis-converted an op gives O(1).
LOGITS_TOL = 1e-3
# "imprecise": above the tolerance, where the framework's own float32 gradient is at least half the
# tolerance off its float64 one and varrt's error is within 3x of that: the random-weight model is
# too ill-conditioned for float32, not a wrong rule.
STATUSES = ("ok", "imprecise", "wrong", "refused", "crashed", "export-failed", "export-wrong", "no-reference",
            "build-failed", "timeout")  # fmt: skip


class Subject(Protocol):
    """One model of one framework, as the harness needs it."""

    image_shape: tuple[int, ...]  # one image in the model's layout: (C, H, W) or (H, W, C)
    num_classes: int

    def export(self, form: str) -> onnx.ModelProto:
        """The model exported in ``form`` by the framework's exporter."""
        ...

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The framework's float32 logits for ``x`` [N, num_classes]."""
        ...

    def gradients(self, x: np.ndarray, class_ids: np.ndarray, double: bool) -> np.ndarray:
        """d logit[n, class_ids[n, k]] / d x[n] by the framework's autodiff, [N, K, *image_shape]."""
        ...


@dataclass
class Record:
    """One cell of the compatibility matrix."""

    exporter: str
    model: str
    family: str
    form: str
    method: str
    status: str
    error: float | None = None  # max relative error per (image, class) vs the float64 reference
    framework_f32_error: float | None = None  # the framework's own float32 gradient vs its float64
    reason: str = ""
    seconds: float = 0.0
    image: str = ""  # the image shape checked, e.g. "3x224x224" (NCHW) or "224x224x3" (NHWC)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def one_line(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(error).__name__}: {first}"[:240]


def rel_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / ||b|| per leading (image, class) pair: a, b shaped [N, K, ...]."""
    a64 = a.reshape(a.shape[0], a.shape[1], -1).astype(np.float64)
    b64 = b.reshape(b.shape[0], b.shape[1], -1).astype(np.float64)
    return np.linalg.norm(a64 - b64, axis=-1) / np.maximum(np.linalg.norm(b64, axis=-1), 1e-300)


def random_inputs(image_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N_IMAGES images uniform in [-1, 1] and K_CLASSES distinct class ids per image."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(N_IMAGES, *image_shape)).astype(np.float32)
    ids = np.stack([rng.choice(num_classes, size=K_CLASSES, replace=False) for _ in range(N_IMAGES)])
    return x, ids.astype(np.int64)


def jitter_gain(name: str, value: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A realistic replacement for a zero-initialised gain, or None to keep ``value``.

    Constant parameters near zero that are not biases are gains switched off at init (layer scale
    1e-5/1e-6, the last BatchNorm gamma of a residual block, skip-init scalars, zero heads): with
    them the residual branches vanish from the gradient and the check tests only the shortcut.
    Gains become U[0.5, 1.5]; zero matrices N(0, 1/fan_in)."""
    leaf = name.replace(":", ".").replace("/", ".").split(".")[-1].lower()
    if "bias" in leaf or "beta" in leaf or "mean" in leaf or "var" in leaf or value.size == 0:
        return None
    flat = value.reshape(-1)
    if not np.issubdtype(value.dtype, np.floating) or np.abs(flat).max() >= 1e-3 or np.ptp(flat) > 0:
        return None
    if value.ndim <= 1:
        return rng.uniform(0.5, 1.5, value.shape).astype(value.dtype)
    fan_in = int(np.prod(value.shape[1:]))
    return (rng.standard_normal(value.shape) / np.sqrt(fan_in)).astype(value.dtype)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _attributions(model: onnx.ModelProto, method: str, form: str, image_shape: tuple[int, ...],
                  x: np.ndarray, ids: np.ndarray) -> np.ndarray:  # fmt: skip
    shape = (len(x), *image_shape) if form == "dynamic-hw" else None
    graph = explain_graph(model, method=method, input_shape=shape)
    image = next(i.name for i in graph.graph.input if i.name != "class_ids")
    return _session(graph).run(["attributions"], {image: x, "class_ids": ids})[0]


def _exported_logits_error(model: onnx.ModelProto, subject: Subject, x: np.ndarray) -> float:
    """max ||onnx - framework|| / ||framework|| over the images, both in float32."""
    session = _session(model)
    theirs = session.run(None, {session.get_inputs()[0].name: x})[0].reshape(len(x), 1, -1)
    ours = subject.logits(x).reshape(len(x), 1, -1)
    return float(rel_errors(theirs, ours).max())


def _batch(form: str, x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Static and dynamic-H/W files are checked at batch 1, dynamic-batch ones with every image."""
    return (x, ids) if form == "dynamic-batch" else (x[:1], ids[:1])


def _verdict(error: float, framework_f32_error: float) -> dict[str, str]:
    if error < REL_TOL:
        return {"status": "ok", "reason": ""}
    if framework_f32_error >= REL_TOL / 2 and error <= 3 * framework_f32_error:
        return {"status": "imprecise", "reason": f"max relative error {error:.1e}; the framework's own float32 "
                f"gradient is off by {framework_f32_error:.1e}"}  # fmt: skip
    return {"status": "wrong", "reason": f"max relative error {error:.1e} >= {REL_TOL:g}"}


def check(subject: Subject, base: Record, forms: Sequence[str], methods: Sequence[str],
          emit: Callable[[Record], None]) -> None:  # fmt: skip
    """Checks ``subject`` in every form and method, emitting one Record per cell as it is done."""

    def record(form: str, method: str, started: float, **fields: Any) -> None:
        emit(Record(**{**base.to_json(), "form": form, "method": method,
                       "seconds": round(time.perf_counter() - started, 2), **fields}))  # fmt: skip

    base = Record(**{**base.to_json(), "image": "x".join(map(str, subject.image_shape))})
    started = time.perf_counter()
    x, ids = random_inputs(subject.image_shape, subject.num_classes)
    try:
        reference = subject.gradients(x, ids, double=True)
        f32 = float(rel_errors(subject.gradients(x, ids, double=False), reference).max())
        if not np.all(np.linalg.norm(reference.reshape(N_IMAGES * K_CLASSES, -1), axis=1) > 0):
            raise ValueError("the reference gradient is zero for some class")
    except Exception as error:  # the framework's own autodiff failed: nothing to compare with
        for form in forms:
            for method in methods:
                record(form, method, started, status="no-reference", reason=one_line(error))
        return
    expected = {"gradient": reference, "input_x_gradient": reference * x[:, None].astype(np.float64)}
    for form in forms:
        started = time.perf_counter()
        try:
            model = subject.export(form)
        except Exception as error:
            for method in methods:
                record(form, method, started, status="export-failed", reason=one_line(error), framework_f32_error=f32)
            continue
        xb, idsb = _batch(form, x, ids)
        try:
            mismatch = _exported_logits_error(model, subject, xb)
        except Exception as error:
            mismatch, reason = np.inf, one_line(error)
        else:
            reason = f"the exported file's logits are off the framework's by {mismatch:.1e}"
        if not mismatch < LOGITS_TOL:  # the exporter's graph computes another function: nothing to explain
            for method in methods:
                record(form, method, started, status="export-wrong", reason=reason, framework_f32_error=f32)
            continue
        for method in methods:
            started = time.perf_counter()
            try:
                maps = _attributions(model, method, form, subject.image_shape, xb, idsb)
            except VarrtError as error:
                record(form, method, started, status="refused", reason=one_line(error), framework_f32_error=f32)
                continue
            except Exception as error:
                record(form, method, started, status="crashed", reason=one_line(error), framework_f32_error=f32)
                continue
            want = expected[method][: len(xb)]
            if maps.shape != want.shape:
                record(
                    form,
                    method,
                    started,
                    status="wrong",
                    framework_f32_error=f32,
                    reason=f"attributions shaped {list(maps.shape)}, the reference {list(want.shape)}",
                )
                continue
            err = float(rel_errors(maps, want).max())
            record(form, method, started, error=err, framework_f32_error=f32, **_verdict(err, f32))
