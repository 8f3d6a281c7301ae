"""A model's vector-Jacobian product as a model: the autodiff without the explanation around it.

``vjp_model(model)`` returns a graph with the model's inputs, one extra input
``cotangent_<output>`` of shape [K, *output.shape] per float output, and outputs ``grad_<input>``
[K, *input.shape] for each float input: K vector-Jacobian products in one run, with the graph
passes of ``target`` applied; ``modified_backward`` and its ``settings`` as in
``varrt.export.autodiff.backward``. The rule tests check every rule through it against finite
differences, for every target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes
from varrt.export.autodiff import backward
from varrt.export.emitter import Emitter
from varrt.export.model_loading import fold_constants, fold_pads_into_convs, infer_shapes
from varrt.export.passes import optimize


def vjp_model(proto: onnx.ModelProto, *, modified_backward: str | None = None,
              settings: Mapping[str, Any] | None = None, target: str = "portable") -> onnx.ModelProto:
    model = ir.serde.deserialize_model(proto)
    ir_passes.RemoveInitializersFromInputsPass()(model)
    fold_constants(model.graph)
    fold_pads_into_convs(model.graph)
    infer_shapes(model, proto.graph.name or "model")
    graph = model.graph
    opset = graph.opset_imports.get("", 1)
    em = Emitter(graph, opset)
    wrt = [v for v in graph.inputs if v.dtype is not None and v.dtype.is_floating_point()]
    seeds = {}
    for out in graph.outputs:
        if out.dtype is None or not out.dtype.is_floating_point():
            continue
        cot = ir.Value(name=f"cotangent_{out.name}", type=out.type, shape=ir.Shape(["K", *(out.shape or [])]))
        graph.inputs.append(cot)
        seeds[out] = cot
    grads = backward(em, seeds, wrt, modified_backward=modified_backward, settings=settings)
    for value, grad in zip(wrt, grads):
        grad = em.Identity(grad)
        grad.name, grad.type = f"grad_{value.name}", value.type
        grad.shape = ir.Shape(["K", *value.shape])  # type: ignore[misc]
        graph.outputs.append(grad)
    ir_passes.RemoveUnusedNodesPass()(model)
    optimize(model, target)
    result = ir.serde.serialize_model(model)
    result.ir_version = max(result.ir_version, 7)
    return result
