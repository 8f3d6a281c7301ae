"""Backends: the shared input checks, ONNX Runtime on the CPU, the CUDA binding plan, selection.

The explanation graphs here are built by hand with onnx.helper and follow the graph contract
(inputs: the model's input + ``class_ids``, or in-graph class choice; outputs: ``logits``,
``attributions``, ``class_ids``), for a linear classifier whose attributions are known exactly:
d logit_k / d x = W[:, k].
"""

import os
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
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

SHAPE = (3, 4, 4)  # C, H, W
NUM_CLASSES = 7


def linear_weights(seed=0, shape=SHAPE, num_classes=NUM_CLASSES):
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return rng.normal(size=(size, num_classes)).astype(np.float32), rng.normal(size=num_classes).astype(
        np.float32
    )


def linear_classifier(weights, bias, shape=SHAPE, batch="N"):
    """logits = flatten(x) @ W + b, as an ONNX classifier with a dynamic batch."""
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, weights.shape[1]])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def linear_explanation_graph(weights=None, bias=None, shape=SHAPE, classes=None, batch="N"):
    """The explanation graph of ``linear_classifier`` for the gradient method.

    ``classes`` None: ``class_ids`` is an input; "topK" / "topK+min": chosen in the graph (TopK,
    ArgMin) and returned as an output.
    """
    if weights is None:
        weights, bias = linear_weights()
    num_classes = weights.shape[1]
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *shape])]
    init = [
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(bias, "b"),
        numpy_helper.from_array(np.ascontiguousarray(weights.T), "WT"),
        numpy_helper.from_array(np.array([0, 0, *shape], dtype=np.int64), "attr_shape"),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])]
    if classes is None:
        inputs.append(helper.make_tensor_value_info("class_ids", TensorProto.INT64, [batch, "K"]))
        k = "K"
    else:
        top = int(classes[3:].split("+")[0])
        k = top + int(classes.endswith("+min"))
        init.append(numpy_helper.from_array(np.array([top], dtype=np.int64), "top"))
        nodes.append(helper.make_node("TopK", ["logits", "top"], ["top_values", "top_ids"], axis=1, sorted=1))
        if classes.endswith("+min"):
            nodes.append(helper.make_node("ArgMin", ["logits"], ["min_id"], axis=1, keepdims=1))
            nodes.append(helper.make_node("Concat", ["top_ids", "min_id"], ["class_ids"], axis=1))
        else:
            nodes.append(helper.make_node("Identity", ["top_ids"], ["class_ids"]))
        outputs.append(helper.make_tensor_value_info("class_ids", TensorProto.INT64, [batch, k]))
    nodes += [
        helper.make_node("Gather", ["WT", "class_ids"], ["rows"], axis=0),  # [N, K, D]
        helper.make_node("Reshape", ["rows", "attr_shape"], ["attributions"]),
    ]
    outputs.insert(1, helper.make_tensor_value_info("attributions", TensorProto.FLOAT, [batch, k, *shape]))
    graph = helper.make_graph(nodes, "linear_explained", inputs, outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def reference_outputs(images, class_ids, weights, bias, shape=SHAPE):
    logits = images.reshape(len(images), -1) @ weights + bias
    attributions = weights.T[class_ids].reshape(*class_ids.shape, *shape)
    return logits, attributions


def run_backend_against_reference(name, graph, batch=3):
    """Run backend ``name`` on ``graph`` (class_ids input) and compare with NumPy."""
    weights, bias = linear_weights()
    rng = np.random.default_rng(1)
    images = rng.normal(size=(batch, *SHAPE)).astype(np.float32)
    ids = rng.integers(0, NUM_CLASSES, size=(batch, 4))
    with create_backend(name, graph, batch_size=8) as backend:
        outputs = backend.run({"input": images, "class_ids": ids})
        to_numpy = (lambda a: a.get()) if backend.on_device else np.asarray
        logits, attributions = reference_outputs(images, ids, weights, bias)
        np.testing.assert_allclose(to_numpy(outputs["logits"]), logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(to_numpy(outputs["attributions"]), attributions, rtol=1e-6)


# --- the shared base class -------------------------------------------------------------------------


def test_tensor_specs_read_dims():
    specs = tensor_specs(linear_explanation_graph().graph.input)
    assert specs == [
        TensorSpec("input", np.dtype(np.float32), ("N", *SHAPE)),
        TensorSpec("class_ids", np.dtype(np.int64), ("N", "K")),
    ]


def test_cpu_backend_matches_numpy():
    run_backend_against_reference("onnxruntime-cpu", linear_explanation_graph())


def test_feeds_are_checked_before_running():
    backend = OnnxRuntimeCPUBackend(linear_explanation_graph())
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
    with OnnxRuntimeCPUBackend(linear_explanation_graph()) as backend:
        assert backend._session is not None
    assert backend._session is None
    with pytest.raises(UsageError, match="closed"):
        backend.run({"input": np.zeros((1, *SHAPE), np.float32), "class_ids": np.zeros((1, 2), np.int64)})


def test_cpu_backend_is_thread_safe():
    weights, bias = linear_weights()
    backend = OnnxRuntimeCPUBackend(linear_explanation_graph(), threads=1)
    results, errors = {}, []

    def work(seed):
        rng = np.random.default_rng(seed)
        images = rng.normal(size=(2, *SHAPE)).astype(np.float32)
        ids = rng.integers(0, NUM_CLASSES, size=(2, 3))
        try:
            for _ in range(20):
                out = backend.run({"input": images, "class_ids": ids})
            results[seed] = (out, reference_outputs(images, ids, weights, bias))
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
    graph = linear_explanation_graph()
    ins, outs = tensor_specs(graph.graph.input), tensor_specs(graph.graph.output)
    shapes = resolve_output_shapes(ins, {"input": (2, *SHAPE), "class_ids": (2, 5)}, outs)
    assert shapes == {"logits": (2, NUM_CLASSES), "attributions": (2, 5, *SHAPE)}


def test_binding_plan_preallocates_known_outputs():
    graph = linear_explanation_graph(classes="top4+min")
    ins, outs = tensor_specs(graph.graph.input), tensor_specs(graph.graph.output)
    plan = binding_plan(ins, outs, {"input": (3, *SHAPE)})
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    assert plan == [
        Binding("input", "input", f32, (3, *SHAPE)),
        Binding("logits", "output", f32, (3, NUM_CLASSES)),
        Binding("attributions", "output", f32, (3, 5, *SHAPE)),
        Binding("class_ids", "output", i64, (3, 5)),
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
    run_backend_against_reference("onnxruntime-cuda", linear_explanation_graph())
    run_backend_against_reference("onnxruntime-cuda", linear_explanation_graph(batch=None))


# --- selection --------------------------------------------------------------------------------------


def test_auto_falls_back_to_cpu_here():
    expected = "onnxruntime-cpu" if cuda_unavailable_reason() else "onnxruntime-cuda"
    from varrt.backends.tensorrt import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is None:  # pragma: no cover - GPU machines
        expected = "tensorrt"
    assert choose_backend("auto", "auto") == expected
    assert choose_backend("auto", "cpu") == "onnxruntime-cpu"
    assert choose_backend("onnxruntime", "cpu") == "onnxruntime-cpu"
    assert choose_backend("cpu") == "onnxruntime-cpu"
    assert set(BACKENDS) == {"tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"}


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="a CUDA onnxruntime is installed here")
def test_explicit_gpu_backends_name_what_is_missing():
    with pytest.raises(UsageError, match="backend tensorrt is not available: TensorRT not installed"):
        choose_backend("tensorrt")
    with pytest.raises(UsageError, match="onnxruntime-cuda is not available: .*CUDAExecutionProvider"):
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
