"""Fuzzing: mutated ONNX models never crash export or explain; every failure is a VarrtError.

Each case takes a real model (tiny ones built here, a torch export, and two weight-free
Caffe2-era zoo graphs shipped inside the onnx package), applies one mutation (truncated or
flipped bytes, dropped or duplicated nodes, changed dims or dtypes, a cycle, renamed inputs,
unknown ops...), then runs ``explain_graph`` and, for tiny models, an ``Explainer`` on the CPU
over a two-image batch. Anything but success or a one-line VarrtError fails the test, naming the
model, mutation and seed. All randomness comes from fixed seeds.
"""

from __future__ import annotations

import random
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import testbed as models
from onnx import TensorProto, helper
from varrt.core.errors import VarrtError
from varrt.explainer import Explainer
from varrt.export import explain_graph

Mutation = Callable[[bytes, random.Random], bytes]


# --- mutations: bytes in, bytes out -----------------------------------------------------------------
def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, len(data))]


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 2, 4, 16))):
        out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
    return bytes(out)


def _structural(edit: Callable[[onnx.ModelProto, random.Random], None]) -> Mutation:
    def mutate(data: bytes, rng: random.Random) -> bytes:
        model = onnx.load_from_string(data)
        edit(model, rng)
        return model.SerializeToString()

    mutate.__name__ = edit.__name__
    return mutate


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def _drop_node(model, rng):
    del model.graph.node[rng.randrange(len(model.graph.node))]


def _duplicate_node(model, rng):
    node = model.graph.node[rng.randrange(len(model.graph.node))]
    copy = model.graph.node.add()
    copy.CopyFrom(node)
    if rng.random() < 0.5:  # same outputs twice (SSA violation), or fresh outputs feeding nothing
        for i, name in enumerate(copy.output):
            copy.output[i] = f"{name}_dup"


def _swap_nodes(model, rng):
    nodes = model.graph.node
    i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
    a, b = onnx.NodeProto(), onnx.NodeProto()
    a.CopyFrom(nodes[i])
    b.CopyFrom(nodes[j])
    nodes[i].CopyFrom(b)
    nodes[j].CopyFrom(a)


def _cycle_edge(model, rng):
    nodes = model.graph.node
    if len(nodes) < 2:
        return
    i = rng.randrange(len(nodes) - 1)
    j = rng.randrange(i + 1, len(nodes))
    if nodes[i].input and nodes[j].output:
        nodes[i].input[rng.randrange(len(nodes[i].input))] = nodes[j].output[0]


def _self_loop(model, rng):
    node = model.graph.node[rng.randrange(len(model.graph.node))]
    if node.input and node.output:
        node.input[0] = node.output[0]


def _change_input_dims(model, rng):
    value = _real_inputs(model)[0]
    dims = value.type.tensor_type.shape.dim
    choice = rng.random()
    if choice < 0.2 and dims:
        del dims[rng.randrange(len(dims))]
    elif choice < 0.35:
        dims.add().dim_value = rng.choice((1, 3))
    elif dims:
        dim = dims[rng.randrange(len(dims))]
        if rng.random() < 0.2:
            dim.dim_param = "D"
        else:
            dim.dim_value = rng.choice((0, 1, 2, 5, 7, 64, 10**6))


def _change_initializer_dims(model, rng):
    if model.graph.initializer:
        init = model.graph.initializer[rng.randrange(len(model.graph.initializer))]
        if init.dims:
            init.dims[rng.randrange(len(init.dims))] = rng.choice((0, 1, 2, 3, 1000))
        else:
            init.dims.append(rng.choice((0, 2)))


_DTYPES = (TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32, TensorProto.UINT8,
           TensorProto.BOOL, TensorProto.STRING, TensorProto.BFLOAT16, TensorProto.UNDEFINED, 999)


def _change_dtype(model, rng):
    target = rng.random()
    if target < 0.4:
        _real_inputs(model)[0].type.tensor_type.elem_type = rng.choice(_DTYPES)
    elif target < 0.6:
        model.graph.output[0].type.tensor_type.elem_type = rng.choice(_DTYPES)
    elif model.graph.initializer:
        model.graph.initializer[rng.randrange(len(model.graph.initializer))].data_type = rng.choice(_DTYPES)


def _rename_input(model, rng):
    value = _real_inputs(model)[0]
    if rng.random() < 0.5:
        value.name = "renamed_input"  # nodes still read the old name
    else:
        old, value.name = value.name, "renamed_input"
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = value.name
        if rng.random() < 0.5:
            value.name = "class_ids"  # collides with varrt's reserved input


def _rename_output(model, rng):
    model.graph.output[0].name = rng.choice(("missing", "logits", "attributions", model.graph.node[0].output[0]))


def _change_op(model, rng):
    node = model.graph.node[rng.randrange(len(model.graph.node))]
    node.op_type = rng.choice(("NoSuchOp", "Relu", "Erf", "Mod", "TopK", "NonZero", "Loop", "Where"))


def _custom_domain(model, rng):
    node = model.graph.node[rng.randrange(len(model.graph.node))]
    node.domain = rng.choice(("com.example", "com.microsoft", "ai.onnx.ml"))
    if rng.random() < 0.7:
        model.opset_import.append(helper.make_opsetid(node.domain, 1))


def _change_attribute(model, rng):
    candidates = [n for n in model.graph.node if n.attribute]
    if not candidates:
        return
    attr = rng.choice(candidates).attribute
    chosen = attr[rng.randrange(len(attr))]
    if rng.random() < 0.3:
        attr.remove(chosen)
    elif chosen.ints:
        chosen.ints[rng.randrange(len(chosen.ints))] = rng.choice((-3, 0, 7, 100))
    else:
        chosen.i = rng.choice((-5, 0, 3, 99))


def _change_opset(model, rng):
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = rng.choice((1, 7, 8, 10, 11, 18, 21, 26, 99))


def _extra_input(model, rng):
    kind = rng.choice((TensorProto.FLOAT, TensorProto.INT64))
    model.graph.input.append(helper.make_tensor_value_info("extra", kind, ["N", 3]))


def _remove_input(model, rng):
    value = _real_inputs(model)[0]
    model.graph.input.remove(value)


def _ir_version(model, rng):
    model.ir_version = rng.choice((0, 1, 3, 99))


def _empty_graph(model, rng):
    del model.graph.node[:]


MUTATIONS: dict[str, Mutation] = {
    "truncate": truncate,
    "flip_bytes": flip_bytes,
    **{
        name.lstrip("_"): _structural(fn)
        for name, fn in [
            ("_drop_node", _drop_node), ("_duplicate_node", _duplicate_node), ("_swap_nodes", _swap_nodes),
            ("_cycle_edge", _cycle_edge), ("_self_loop", _self_loop), ("_change_input_dims", _change_input_dims),
            ("_change_initializer_dims", _change_initializer_dims), ("_change_dtype", _change_dtype),
            ("_rename_input", _rename_input), ("_rename_output", _rename_output), ("_change_op", _change_op),
            ("_custom_domain", _custom_domain), ("_change_attribute", _change_attribute),
            ("_change_opset", _change_opset), ("_extra_input", _extra_input), ("_remove_input", _remove_input),
            ("_ir_version", _ir_version), ("_empty_graph", _empty_graph),
        ]
    },
}


# --- the runner -------------------------------------------------------------------------------------
def _image_shape(data: bytes, fallback: tuple[int, ...]) -> tuple[int, ...]:
    """The (C, H, W) the mutated model says it takes, when it says something usable."""
    try:
        model = onnx.load_from_string(data)
        dims = _real_inputs(model)[0].type.tensor_type.shape.dim
        shape = tuple(d.dim_value for d in dims)[1:]
        if len(shape) == 3 and all(0 < s <= 256 for s in shape):
            return shape
    except Exception:
        pass
    return fallback


def run_case(data: bytes, workdir: Path, image_shape: tuple[int, ...], explain: bool, method: str) -> str:
    """Export and explain one (mutated) model; returns "ok" or "error: ..." and raises on a crash."""
    path = workdir / "case.onnx"
    path.write_bytes(data)
    try:
        explain_graph(str(path), method)
        if explain:
            explainer = Explainer(str(path), method=method, classes="top2", backend="onnxruntime-cpu",
                                  cache_dir=workdir / "cache", batch_size=2)
            with explainer:
                result = explainer(models.images(2, _image_shape(data, image_shape)))
            assert result.attributions.shape[:2] == (2, 2)
        return "ok"
    except VarrtError as error:
        message = str(error)
        assert message.strip() and "\n" not in message.strip(), f"not a one-line message: {message!r}"
        return f"error: {type(error).__name__}"


def fuzz(name: str, model: onnx.ModelProto, cases: int, seed: int, workdir: Path, *, explain_every: int,
         methods: tuple[str, ...] = ("gradient",)) -> dict[str, int]:
    """Run ``cases`` mutations of ``model``; fail naming every mutation that crashed."""
    data = model.SerializeToString()
    shape = tuple(d.dim_value for d in _real_inputs(model)[0].type.tensor_type.shape.dim)[1:]
    names = sorted(MUTATIONS)
    crashes, outcomes = [], {}
    for case in range(cases):
        rng = random.Random(f"{name}/{seed}/{case}")
        mutation = names[case % len(names)]
        try:
            mutated = MUTATIONS[mutation](data, rng)
        except Exception:
            continue  # the mutation itself does not apply to this model
        label = f"{name}/{mutation}/case {case}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcome = run_case(mutated, workdir, shape, explain=case % explain_every == 0,
                                   method=methods[case % len(methods)])
        except Exception as error:
            crashes.append(f"{label}: {type(error).__name__}: {str(error).strip().splitlines()[:1]}\n"
                           + "".join(traceback.format_tb(error.__traceback__)[-3:]))
            outcome = "crash"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert not crashes, f"{len(crashes)} of {cases} mutated models crashed:\n" + "\n".join(crashes)
    return outcomes


CASE_COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\nfuzz cases run: {sum(CASE_COUNTS.values())} {CASE_COUNTS}")


@pytest.mark.parametrize("which", ["cnn", "mlp", "cnn_opset9"])
def test_fuzz_tiny_models(which, tmp_path):
    model = {"cnn": models.tiny_cnn, "mlp": models.tiny_mlp, "cnn_opset9": lambda: models.tiny_cnn(opset=9)}[which]()
    start = time.perf_counter()
    outcomes = fuzz(which, model, 250, seed=0, workdir=tmp_path, explain_every=2,
                    methods=("gradient", "guided_backprop", "gradcam", "input_x_gradient"))
    CASE_COUNTS[which] = sum(outcomes.values())
    assert outcomes.get("ok", 0) > 0 and len(outcomes) > 1, outcomes  # the mutations hit both ways
    assert time.perf_counter() - start < 60


def torch_cnn(path: Path) -> onnx.ModelProto:
    """A small torch CNN (BatchNorm, ReLU6, AvgPool) exported with the TorchScript exporter."""
    torch = pytest.importorskip("torch", reason="the model is exported from torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU6(),
        torch.nn.AvgPool2d(2), torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.LeakyReLU(0.1),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, models.CLASSES),
    ).eval()
    torch.onnx.export(net, (torch.zeros(1, *models.SHAPE),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=13, dynamo=False)
    return onnx.load(str(path))


def test_fuzz_torch_export(tmp_path):
    model = torch_cnn(tmp_path / "torch_cnn.onnx")
    outcomes = fuzz("torch_cnn", model, 120, seed=1, workdir=tmp_path, explain_every=2)
    CASE_COUNTS["torch_cnn"] = sum(outcomes.values())


@pytest.mark.parametrize("name", ["light_squeezenet", "light_shufflenet"])
def test_fuzz_zoo_models(name, tmp_path):
    # A weight-free Caffe2-era zoo graph shipped inside the onnx package (opset 9).
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{name}.onnx is not in this onnx package")
    model = onnx.load(str(path))
    outcomes = fuzz(name, model, 12, seed=2, workdir=tmp_path, explain_every=1000)
    CASE_COUNTS[name] = sum(outcomes.values())
