"""timm's LeViT-128S and EfficientFormer-L1 (random weights, nothing downloaded), explained with
method="gradient" and checked against torch.autograd in float64 (issue 11).

Both turn a convolutional stem into tokens with ``x.flatten(2).transpose(1, 2)`` (a Reshape whose
shape the exporters compute with Shape, then a Transpose) after four or five stride-2 convolutions,
and go on with attention (learned biases gathered by constant indices), BatchNorm on tokens (LeViT)
or pooling and LayerNorm blocks (EfficientFormer). Both exporters; the model's dynamic batch with
N=2, K=2 and N=1, K=1; and the batch fixed to 1 (the CPU Explainer's graphs).

timm is imported beside a stand-in torchvision where the real one cannot load
(varrt.bench.zoo.torchvision_stand_in, shared with the zoo sweep).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="the timm models need torch")
if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed (the test extra pins it: pip install -e '.[test]')", allow_module_level=True)

import torch_models as tm  # noqa: E402
from varrt.bench.zoo.torchvision_stand_in import import_timm  # noqa: E402
from varrt.export import explain_graph  # noqa: E402

INPUT = (3, 224, 224)
NUM_CLASSES = 1000
# As for the toy models. Measured on these seeds: at most 7e-7 (float32 graph vs float64 torch). A
# float32 ReLU mask that flips near 0 can cost ~1e-3 on some inputs (EfficientFormer's stem; torch's
# own float32 gradient then differs as much); a wrong rule gives O(1).
REL_TOL = 1e-4
MODELS = ["levit_128s", "efficientformer_l1"]


timm = import_timm()


# ----------------------------------------------------------------------------------- the models
def _model(name: str) -> torch.nn.Module:
    """Seeded random weights, non-trivial BatchNorm/LayerNorm statistics, eval mode. Layer scales
    (EfficientFormer initialises them to 1e-5) are drawn from [0.5, 1.5], so the residual branches
    count in the gradient. A fresh module each time: in eval mode timm caches attention biases on
    the first forward, and deepcopy (torch_gradients' float64 copy) refuses a module holding them."""
    torch.manual_seed(0)
    model = tm._randomise(timm.create_model(name, pretrained=False), 0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("gamma"):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
    return model.eval()


_exports: dict[tuple[str, str], onnx.ModelProto] = {}
_references: dict[tuple[str, int, int], np.ndarray] = {}


def _export(name: str, exporter: str) -> onnx.ModelProto:
    if (name, exporter) not in _exports:
        _exports[(name, exporter)] = tm.EXPORTERS[exporter](_model(name), INPUT)
    return _exports[(name, exporter)]


def _inputs(name: str, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, class ids, and torch's float64 gradients for them."""
    x, ids = tm.random_inputs(INPUT, n=n, num_classes=NUM_CLASSES, k=k, seed=n * 10 + k)
    if (name, n, k) not in _references:
        _references[(name, n, k)] = tm.torch_gradients(_model(name), x, ids, dtype=torch.float64)
    return x, ids, _references[(name, n, k)]


def _check(name: str, graph: onnx.ModelProto, label: str, sizes: list[tuple[int, int]]) -> None:
    session = tm.ort_session(graph)
    input_name = graph.graph.input[0].name
    for n, k in sizes:
        x, ids, reference = _inputs(name, n, k)
        attributions = session.run(["attributions"], {input_name: x, "class_ids": ids})[0]
        assert attributions.shape == (n, k, *INPUT)
        err = tm.rel_errors(attributions, reference)
        tm.record("timm models, gradient vs float64 torch.autograd: max relative error", name, label, err.max())
        assert err.max() < REL_TOL, f"N={n}, K={k}: relative errors per (image, class):\n{err}"


@pytest.mark.slow
@pytest.mark.parametrize("exporter", list(tm.EXPORTERS))
@pytest.mark.parametrize("name", MODELS)
def test_gradient_matches_torch(name: str, exporter: str) -> None:
    """The model's dynamic batch: N=2, K=2, and N=1, K=1 (every cotangent a single row)."""
    graph = explain_graph(_export(name, exporter), method="gradient")
    _check(name, graph, exporter, [(2, 2), (1, 1)])


@pytest.mark.slow
@pytest.mark.parametrize("exporter", list(tm.EXPORTERS))
@pytest.mark.parametrize("name", MODELS)
def test_fixed_batch_of_one(name: str, exporter: str) -> None:
    """explain_graph(batch=1): every shape static, the tokeniser's Shape-computed Reshape folded."""
    graph = explain_graph(_export(name, exporter), method="gradient", batch=1)
    _check(name, graph, f"{exporter}, batch 1", [(1, 2), (1, 1)])
