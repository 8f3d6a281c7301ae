"""Backends: the shared input checks, ONNX Runtime on the CPU, the CUDA binding plan, selection.

The explanation graphs here come from the real exporter, for the linear classifier of
tests/testbed.py, whose outputs are known exactly: logits = flatten(x) @ W + b and
d logit_k / d x = W[:, k].
"""

import importlib.util
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import testbed
from varrt.backends import BACKENDS, choose_backend, create_backend
from varrt.backends.base import TensorSpec, resolve_output_shapes, tensor_specs
from varrt.backends.onnxruntime import (
    Binding,
    OnnxRuntimeCPUBackend,
    binding_plan,
    cpu_session_options,
    cuda_provider_options,
    cuda_unavailable_reason,
    physical_cores,
)
from varrt.backends.select import parse_device
from varrt.core.errors import UsageError
from varrt.export import explain_graph

SHAPE = (3, 4, 4)  # C, H, W
NUM_CLASSES = 7
WEIGHTS, BIAS = testbed.linear_weights(SHAPE, NUM_CLASSES)


def explanation_graph(classes=None):
    """The exporter's gradient graph of the linear classifier (``class_ids`` an input, or chosen by
    the rule ``classes`` inside the graph)."""
    return explain_graph(testbed.linear_classifier(WEIGHTS, BIAS, SHAPE), "gradient", classes=classes)


def reference_outputs(images, class_ids):
    logits = images.reshape(len(images), -1).astype(np.float64) @ WEIGHTS + BIAS
    attributions = WEIGHTS.T[class_ids].reshape(*class_ids.shape, *SHAPE)
    return logits, attributions


def run_backend_against_reference(name, graph, batch=3):
    """Run backend ``name`` on ``graph`` (class_ids input) and compare with NumPy."""
    rng = np.random.default_rng(1)
    images = rng.normal(size=(batch, *SHAPE)).astype(np.float32)
    ids = rng.integers(0, NUM_CLASSES, size=(batch, 4))
    with create_backend(name, graph, batch_size=8) as backend:
        outputs = backend.run({"input": images, "class_ids": ids})
        to_numpy = (lambda a: a.get()) if backend.on_device else np.asarray
        logits, attributions = reference_outputs(images, ids)
        np.testing.assert_allclose(to_numpy(outputs["logits"]), logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(to_numpy(outputs["attributions"]), attributions, rtol=1e-6)


# --- the shared base class -------------------------------------------------------------------------


def test_tensor_specs_read_dims():
    specs = tensor_specs(explanation_graph().graph.input)
    assert specs == [
        TensorSpec("input", np.dtype(np.float32), ("N", *SHAPE)),
        TensorSpec("class_ids", np.dtype(np.int64), ("N", "K")),
    ]


def test_cpu_backend_matches_numpy():
    run_backend_against_reference("onnxruntime-cpu", explanation_graph())


def test_feeds_are_checked_before_running():
    backend = OnnxRuntimeCPUBackend(explanation_graph())
    good = {"input": np.zeros((2, *SHAPE), np.float32), "class_ids": np.zeros((2, 3), np.int64)}
    with pytest.raises(UsageError, match=r"missing \['class_ids'\]"):
        backend.run({"input": good["input"]})
    with pytest.raises(UsageError, match=r"unexpected \['extra'\]"):
        backend.run({**good, "extra": good["input"]})
    with pytest.raises(UsageError, match="'input' must be float32, got float64"):
        backend.run({**good, "input": good["input"].astype(np.float64)})
    with pytest.raises(UsageError, match="'input' must have 4 dimensions"):
        backend.run({**good, "input": good["input"][0]})
    with pytest.raises(UsageError, match=r"size 5 on axis 2, the graph wants 4 \(shape \[N, 3, 4, 4\]\)"):
        backend.run({**good, "input": np.zeros((2, 3, 5, 4), np.float32)})
    with pytest.raises(UsageError, match="'input' must be an array, got memoryview"):
        backend.run({**good, "input": memoryview(good["input"])})
    assert backend.timings == []  # nothing ran
    backend.run(good)
    assert len(backend.timings) == 1 and backend.timings[0] > 0


def test_context_manager_loads_and_closes():
    with OnnxRuntimeCPUBackend(explanation_graph()) as backend:
        assert backend._session is not None
    assert backend._session is None
    with pytest.raises(UsageError, match="closed"):
        backend.run({"input": np.zeros((1, *SHAPE), np.float32), "class_ids": np.zeros((1, 2), np.int64)})


def test_cpu_backend_is_thread_safe():
    backend = OnnxRuntimeCPUBackend(explanation_graph(), threads=1)
    results, errors = {}, []

    def work(seed):
        rng = np.random.default_rng(seed)
        images = rng.normal(size=(2, *SHAPE)).astype(np.float32)
        ids = rng.integers(0, NUM_CLASSES, size=(2, 3))
        try:
            for _ in range(20):
                out = backend.run({"input": images, "class_ids": ids})
            results[seed] = (out, reference_outputs(images, ids))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for out, (logits, attributions) in results.values():
        np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out["attributions"], attributions)
    assert len(backend.timings) == 80


def test_cpu_session_options():
    import onnxruntime as ort

    options = cpu_session_options()
    assert options.intra_op_num_threads == physical_cores()
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert cpu_session_options(threads=2).intra_op_num_threads == 2
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


# --- CUDA execution provider: the pure parts ---------------------------------------------------------


def test_output_shapes_resolve_from_inputs():
    graph = explanation_graph()
    ins, outs = tensor_specs(graph.graph.input), tensor_specs(graph.graph.output)
    shapes = resolve_output_shapes(ins, {"input": (2, *SHAPE), "class_ids": (2, 5)}, outs)
    assert shapes == {"logits": (2, NUM_CLASSES), "attributions": (2, 5, *SHAPE)}


def test_binding_plan_preallocates_known_outputs():
    graph = explanation_graph()
    ins, outs = tensor_specs(graph.graph.input), tensor_specs(graph.graph.output)
    plan = binding_plan(ins, outs, {"input": (3, *SHAPE), "class_ids": (3, 5)})
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    assert plan == [
        Binding("input", "input", f32, (3, *SHAPE)),
        Binding("class_ids", "input", i64, (3, 5)),
        Binding("logits", "output", f32, (3, NUM_CLASSES)),
        Binding("attributions", "output", f32, (3, 5, *SHAPE)),
    ]


def test_binding_plan_binds_unknown_outputs_to_the_device():
    f32 = np.dtype(np.float32)
    ins = [TensorSpec("input", f32, ("N", 3))]
    outs = [TensorSpec("logits", f32, ("N", None)), TensorSpec("attributions", f32, ("N", "K", 3))]
    plan = binding_plan(ins, outs, {"input": (2, 3)})
    assert [(b.name, b.role, b.shape) for b in plan] == [
        ("input", "input", (2, 3)),
        ("logits", "device_output", None),
        ("attributions", "device_output", None),
    ]


def test_cuda_provider_options_share_the_stream():
    assert cuda_provider_options(1, 0xABC) == {"device_id": "1", "user_compute_stream": str(0xABC)}
    with pytest.raises(UsageError, match="non-default"):
        cuda_provider_options(0, 0)


@pytest.mark.skipif(cuda_unavailable_reason() is not None, reason=str(cuda_unavailable_reason()))
def test_cuda_backend_runs_on_device():  # pragma: no cover - needs onnxruntime-gpu and a GPU
    run_backend_against_reference("onnxruntime-cuda", explanation_graph())


# --- selection --------------------------------------------------------------------------------------


def test_auto_picks_the_first_backend_that_can_run_here():
    # What can run is decided independently of varrt (imports and device counts, testbed).
    runnable = testbed.runnable_backends()
    assert choose_backend("auto", "auto") == runnable[0]
    gpu = [name for name in runnable if name != "onnxruntime-cpu"]
    assert choose_backend("onnxruntime", "auto") == ("onnxruntime-cuda" if "onnxruntime-cuda" in gpu else
                                                     "onnxruntime-cpu")
    assert choose_backend("auto", "cpu") == "onnxruntime-cpu"
    assert choose_backend("onnxruntime", "cpu") == "onnxruntime-cpu"
    assert choose_backend("cpu") == "onnxruntime-cpu"
    for name in gpu:
        assert choose_backend(name) == name
    assert BACKENDS == ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")  # the order "auto" tries


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_asked_for_without_tensorrt_names_what_is_missing():
    with pytest.raises(UsageError, match="backend tensorrt is not available: TensorRT not installed"):
        choose_backend("tensorrt")


@pytest.mark.skipif(testbed.runnable_backends() != ["onnxruntime-cpu"], reason="a GPU backend can run here")
def test_explicit_gpu_backends_name_what_is_missing():
    with pytest.raises(UsageError, match="onnxruntime-cuda is not available: "):
        choose_backend("onnxruntime-cuda")
    with pytest.raises(UsageError, match="device 'cuda' asked for, but no GPU backend can run"):
        choose_backend("auto", "cuda:0")


def test_bad_backend_and_device_requests():
    with pytest.raises(UsageError, match="unknown backend 'openvino'"):
        choose_backend("openvino")
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        choose_backend("auto", "tpu")
    with pytest.raises(UsageError, match="runs on a GPU, but device 'cpu'"):
        choose_backend("tensorrt", "cpu")
    with pytest.raises(UsageError, match="cannot run on device 'cuda'"):
        choose_backend("onnxruntime-cpu", "cuda")
    assert parse_device("cuda:2") == ("cuda", 2)
    assert parse_device(1) == ("cuda", 1)
    assert parse_device("CPU") == ("cpu", 0)


def test_importing_varrt_loads_no_backend_runtime():
    code = (
        "import sys, varrt, varrt.backends, varrt.backends.tensorrt, varrt.backends.onnxruntime; "
        "varrt.Explainer; "
        "print(sorted(m for m in ('onnxruntime', 'cupy', 'tensorrt', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
