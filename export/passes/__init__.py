"""Graph passes after the backward, each for the target it was measured on.

The rules write one portable graph (export/rules/). A target adds the rewrites that were measured
to help its runtime; every pass says what it rewrites and why, and tests/export/test_passes.py
runs each graph before and after and compares the outputs.

    "portable"         no passes: the graph for TensorRT, CUDA and any other runtime
    "onnxruntime-cpu"  ONNX Runtime's CPU provider (channel-blocked NCHWc convolutions)
"""

from __future__ import annotations

import onnx_ir as ir
from varrt.export.passes.bias_masks import GuidedMasksAsBias
from varrt.export.passes.phases import StridePhases
from varrt.export.passes.rows import SinkReshapes

TARGETS: dict[str, tuple[type[ir.passes.InPlacePass], ...]] = {
    "portable": (),
    # phases before the masks: the bias form cuts each phase of the activation in its first conv
    "onnxruntime-cpu": (SinkReshapes, StridePhases, SinkReshapes, GuidedMasksAsBias, SinkReshapes),
}


def optimize(model: ir.Model, target: str) -> None:
    """Run ``target``'s passes on ``model`` in place."""
    for pass_type in TARGETS[target]:
        pass_type()(model)


__all__ = ["TARGETS", "GuidedMasksAsBias", "SinkReshapes", "StridePhases", "optimize"]
