"""Each graph pass against the graph it rewrites: the same outputs before and after.

Every rule-test graph (tests/export/test_rules.py, plain and guided) and the model graphs (the toy
torch models' explanation graphs, the bundled EfficientNet-Lite0) go through the
``onnxruntime-cpu`` target's passes one at a time; after each pass the graph is run on the same
random inputs as before it. Passes that claim exactness (SinkReshapes, GuidedMasksAsBias) must
give bit-identical outputs; StridePhases sums a ConvTranspose's taps in another order and is held
to float32 rounding. ONNX Runtime runs without its graph optimisations here, so its own fusions
(a Conv that accumulates into an Add's buffer) do not blur what the pass did.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from test_rules import CASES, Case, _model
from varrt import export
from varrt.data import demo_model_path
from varrt.export.passes import TARGETS, GuidedMasksAsBias, SinkReshapes, StridePhases
from varrt.export.vjp import vjp_model

EXACT = {SinkReshapes: True, GuidedMasksAsBias: True, StridePhases: False}
K = 2

def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)

def _feeds(proto: onnx.ModelProto, rng: np.random.Generator, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The given inputs, and K random cotangents for each cotangent input."""
    feeds = dict(given)
    for value in proto.graph.input:
        if value.name.startswith("cotangent_"):
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
            feeds[value.name] = rng.standard_normal((K, *dims)).astype(np.float32)
    return feeds

def _check_each_pass(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> set[type]:
    """Run the target's passes one by one, comparing outputs after each; the passes that changed
    the graph."""
    model = ir.serde.deserialize_model(proto)
    before = _run(proto, feeds)
    changed = set()
    for pass_type in TARGETS["onnxruntime-cpu"]:
        if not pass_type()(model).modified:
            continue
        changed.add(pass_type)
        rewritten = ir.serde.serialize_model(model)
        onnx.checker.check_model(rewritten, full_check=True)
        after = _run(rewritten, feeds)
        for b, a in zip(before, after):
            if EXACT[pass_type]:
                np.testing.assert_array_equal(a, b, err_msg=pass_type.__name__)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(float(np.abs(b).max()), 1.0),
                                           err_msg=pass_type.__name__)
        before = after
    return changed

@pytest.mark.parametrize("guided", [None, "guided"], ids=["plain", "guided"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_passes_keep_every_rule_graph(case: Case, guided: str | None) -> None:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    model, feeds = _model(case, rng, np.float32)
    proto = vjp_model(model, modified_backward=guided)
    _check_each_pass(proto, _feeds(proto, rng, feeds))

def test_passes_take_effect_on_the_rule_graphs() -> None:
    """The comparisons above are not vacuous: strided grouped Convs get phases."""
    changed = set()
    for case in CASES:
        if case.op == "Conv" and case.attrs.get("strides", [1])[0] > 1 and case.attrs.get("group", 1) > 1:
            rng = np.random.default_rng(0)
            model, feeds = _model(case, rng, np.float32)
            proto = vjp_model(model)
            changed |= _check_each_pass(proto, _feeds(proto, rng, feeds))
    assert StridePhases in changed

@pytest.mark.slow
def test_passes_keep_the_bundled_model() -> None:
    proto = export.explain_graph(str(demo_model_path()), "guided_backprop", classes="top4+min", batch=1)
    image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    assert _check_each_pass(proto, {"input": image}) == set(EXACT)

def test_passes_keep_the_toy_models() -> None:
    pytest.importorskip("torch")
    import torch_models as tm

    for name, make in tm.TOY_MODELS.items():
        onnx_model = tm.export_torchscript(make(), tm.input_shape(name))
        x, ids = tm.random_inputs(tm.input_shape(name), n=1)
        for method in ("gradient", "guided_backprop"):
            proto = export.explain_graph(onnx_model, method, batch=1)
            _check_each_pass(proto, {proto.graph.input[0].name: x, "class_ids": ids})


def test_cli_export_target(tmp_path) -> None:
    """`varrt export --target onnxruntime-cpu --batch 1` writes the tuned graph: the passes ran
    (phase convs, bias-form masks) and the attributions are the portable graph's."""
    from varrt.cli import main

    model = str(demo_model_path())
    for target in TARGETS:
        assert main(["export", model, "-o", str(tmp_path / f"{target}.onnx"), "-m", "guided_backprop",
                     "--batch", "1", "--classes", "top4+min", "--target", target]) == 0
    portable, tuned = (onnx.load(str(tmp_path / f"{t}.onnx")) for t in ("portable", "onnxruntime-cpu"))
    assert [o.name for o in tuned.graph.output] == [o.name for o in portable.graph.output]
    count = lambda proto, op: sum(n.op_type == op for n in proto.graph.node)  # noqa: E731
    assert count(portable, "ConvTranspose") > count(tuned, "ConvTranspose")
    assert count(tuned, "Clip") > count(portable, "Clip")  # the bias form's clipped convs
    image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    expected, ours = (ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
                      .run(["class_ids", "attributions"], {"input": image}) for p in (portable, tuned))
    np.testing.assert_array_equal(ours[0], expected[0])
    np.testing.assert_allclose(ours[1], expected[1], rtol=1e-4, atol=1e-5 * float(np.abs(expected[1]).max()))
