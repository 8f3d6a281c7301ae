"""The speed bench's references for occlusion and rise compute what varrt computes: the PyTorch
RISE loop (``speed_reference.RiseLoop``) and Captum's Occlusion as the bench calls it, against
varrt's graphs on the same small torch CNN exported to ONNX, through the reference flow's own
``reference_call`` (class choice, maps, VAR). So the speed table compares equal work."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from varrt.export import explain_graph
from varrt.kernels import var_maps

torch = pytest.importorskip("torch", reason="the reference flow is PyTorch")
pytest.importorskip("captum", reason="the occlusion reference is Captum's")
from torch import nn  # noqa: E402
from varrt.bench import speed_reference  # noqa: E402

SIZE = 24


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def _onnx(model: nn.Module) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), buffer, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def _varrt(graph: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x}), strict=True))


@pytest.mark.parametrize(("method", "options"), [
    ("rise", {"samples": 90, "mask_size": 4, "keep": 0.4, "seed": 2, "chunk": 16}),
    ("occlusion", {"window": 8, "stride": 4, "baseline": 0.0, "chunk": 10}),
])
def test_reference_flow_computes_what_varrt_computes(monkeypatch, method: str, options: dict) -> None:
    monkeypatch.setattr(speed_reference, "INPUT_SHAPE", (3, SIZE, SIZE))
    model = _cnn()
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, SIZE, SIZE)).astype(np.float32)
    attribute = speed_reference.captum_attributor(model, method, **options)
    reference = speed_reference.reference_call(model, attribute, torch.from_numpy(x), 3).numpy()
    out = _varrt(explain_graph(_onnx(model), method=method, classes="top2+min", **options), x)
    expected = var_maps(out["attributions"])
    assert reference.shape == expected.shape
    err = np.linalg.norm(reference - expected) / np.linalg.norm(expected)
    assert err < 1e-4, err
