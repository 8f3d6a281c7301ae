"""deeplift and lrp rule by rule: every case of test_rules.py, run through ``vjp_model`` with the
modified backward, against the method's definition composed in NumPy from the op's forward and its
plain VJP (which test_rules.py checks against finite differences).

DeepLIFT pairs the batch: row i of the first half is the image, row i of the second its baseline.
Rescaled families (rectifiers, activations, squashes): c * (y - y_ref) / (x - x_ref), the plain
VJP where |x - x_ref| < 1e-10; MaxPool: Captum's rule; refused: normalisations, constant ops, other
selections; every other op: its plain VJP. LRP with epsilon 0.1 (large enough to show): layers with
weights and fixed linear maps: a * VJP'(c / (z' + eps * sign(z'))), with the weights reweighted for
gamma and zplus; rectifiers and squashes: the cotangent unchanged; refused: smooth activations,
normalisations, constant ops, products of two inputs.
"""

from __future__ import annotations

import copy
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_rules import CASES, Case, _model
from varrt.core.errors import ModelError
from varrt.export.rules.table import lookup
from varrt.export.vjp import vjp_model

EPSILON, GAMMA = 0.1, 0.25
RESCALED = ("rectifier", "activation", "squash")


def _family(case: Case) -> str:
    row = lookup(case.op, case.opset)
    assert row is not None
    return row.family.name


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _swapped(v: np.ndarray) -> np.ndarray:
    return v.reshape(2, -1)[::-1].reshape(v.shape)


def _signed(v: np.ndarray) -> np.ndarray:
    return (v.reshape(2, -1) * np.array([[1.0], [-1.0]], v.dtype)).reshape(v.shape)


def _setup(case: Case) -> tuple[np.random.Generator, onnx.ModelProto, dict, ort.InferenceSession, dict, list[str]]:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    model, feeds = _model(case, rng, np.float32)
    plain = _session(vjp_model(model))
    cotangents = {i.name: rng.standard_normal([2, *i.shape[1:]]).astype(np.float32)
                  for i in plain.get_inputs() if i.name.startswith("cotangent_")}
    grads = [o.name for o in plain.get_outputs() if o.name.startswith("grad_")]
    return rng, model, feeds, plain, cotangents, grads


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_deeplift_rule(case: Case) -> None:
    family = _family(case)
    _, model, feeds, plain, cotangents, grads = _setup(case)
    if family in ("normalization", "constant", "recurrent") or (family == "selection" and case.op != "MaxPool"):
        with pytest.raises(ModelError, match="deeplift: DeepLIFT's rules"):
            vjp_model(model, modified_backward="deeplift")
        return
    x = feeds["in0"]
    if (family in RESCALED or case.op == "MaxPool") and x.shape[0] % 2:
        pytest.skip("DeepLIFT pairs the batch (image, baseline): this case's batch is odd")
    ours = _session(vjp_model(model, modified_backward="deeplift")).run(grads, {**feeds, **cotangents})
    gradient = plain.run(grads, {**feeds, **cotangents})
    if family not in RESCALED and case.op != "MaxPool":
        for a, b in zip(ours, gradient):
            np.testing.assert_array_equal(a, b)
        return
    (name, c), = cotangents.items()
    y = _session(model).run(None, feeds)[0]
    if case.op == "MaxPool":  # Captum's maxpool
        gained = _signed(np.maximum(y, _swapped(y)) - _swapped(y))
        routed = plain.run(grads, {**feeds, name: c * gained})[0]
        numerator = routed + np.stack([_swapped(r) for r in routed])
        delta_in = _signed(x - _swapped(x))
    else:
        numerator, delta_in = c * (y - _swapped(y)), x - _swapped(x)
    tiny = np.abs(delta_in) < 1e-10
    expected = np.where(tiny, gradient[0], numerator / np.where(tiny, 1, delta_in))
    np.testing.assert_allclose(ours[0], expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def _refused_by_lrp(case: Case, model: onnx.ModelProto) -> bool:
    family = _family(case)
    if family in ("activation", "normalization", "constant", "recurrent"):
        return True
    constant = [v is not None and v.active is False for v in case.inputs]
    if family == "elementwise":
        return not ((case.op == "Mul" and any(constant)) or (case.op == "Div" and constant[1:] == [True]))
    if family == "affine":
        operands = constant[:2] if case.op != "Einsum" else constant
        return operands.count(False) != 1
    return False


def _reweighted(case: Case, model: onnx.ModelProto, rule: str) -> onnx.ModelProto:
    """The case's model with the weights of its layer changed by the gamma or z+ rule."""
    changed = copy.deepcopy(model)
    positions = range(2) if case.op != "Einsum" else range(len(case.inputs))
    names = {f"in{i}" for i in positions}
    for init in changed.graph.initializer:
        if init.name in names:
            w = onnx.numpy_helper.to_array(init)
            w = w + GAMMA * np.maximum(w, 0) if rule == "gamma" else np.maximum(w, 0)
            init.CopyFrom(onnx.numpy_helper.from_array(w.astype(w.dtype), init.name))
    return changed


LRP_CASES = [(case, "epsilon") for case in CASES] + [
    (case, rule) for case in CASES for rule in ("gamma", "zplus") if _family(case) == "affine"]


@pytest.mark.parametrize(("case", "rule"), LRP_CASES, ids=[f"{c.id}-{r}" for c, r in LRP_CASES])
def test_lrp_rule(case: Case, rule: str) -> None:
    family = _family(case)
    _, model, feeds, plain, cotangents, grads = _setup(case)
    settings = {"rule": rule, "epsilon": EPSILON, "gamma": GAMMA}
    if _refused_by_lrp(case, model):
        with pytest.raises(ModelError, match="lrp: LRP's rules"):
            vjp_model(model, modified_backward="lrp", settings=settings)
        return
    ours = _session(vjp_model(model, modified_backward="lrp", settings=settings)).run(grads, {**feeds, **cotangents})
    if family == "shape":
        for a, b in zip(ours, plain.run(grads, {**feeds, **cotangents})):
            np.testing.assert_array_equal(a, b)
        return
    (name, c), = cotangents.items()
    if family in ("rectifier", "squash"):
        np.testing.assert_array_equal(ours[0], c)
        return
    forward, stability = model, EPSILON
    if family == "affine" and rule != "epsilon":
        forward, stability = _reweighted(case, model, rule), 1e-9
    z = _session(forward).run(None, feeds)[0]
    share = c / (z + np.where(z < 0, -stability, stability)).astype(np.float32)
    expected = _session(vjp_model(forward)).run(grads, {**feeds, name: share})
    for grad, a, b in zip(grads, ours, expected):
        relevance = b * feeds[grad.removeprefix("grad_")]
        np.testing.assert_allclose(a, relevance, rtol=1e-5, atol=1e-6 * np.abs(relevance).max())
