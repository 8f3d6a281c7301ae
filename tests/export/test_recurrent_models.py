"""nn.LSTM and nn.GRU inside tiny image classifiers, exported by torch.onnx (TorchScript exporter),
explained with method="gradient" and checked against torch.autograd in float64 (issue 12).

The classifiers read an image's rows as a sequence (as Sequencer2D's row LSTMs do): a convolution,
the rows as time steps [H, N, C*W], a recurrent layer, the hidden states averaged over time, a
linear head. Forward and bidirectional, one and two layers; the batch axis stays dynamic.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the recurrent models need torch")

import torch_models as tm  # noqa: E402
from torch import nn  # noqa: E402
from varrt.export import explain_graph  # noqa: E402

INPUT = (3, 6, 5)  # six rows: six time steps
NUM_CLASSES = 7
# float32 graph vs float64 torch; measured at most ~3e-7 on these seeds; a wrong gate gives O(1)
REL_TOL = 1e-4


class RowRecurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], bidirectional: bool, layers: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.rnn = cell(4 * INPUT[2], 6, num_layers=layers, bidirectional=bidirectional)
        self.head = nn.Linear(6 * (2 if bidirectional else 1), NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))  # [N, C, H, W]
        seq = y.permute(2, 0, 1, 3).flatten(2)  # [H, N, C*W]
        out, _ = self.rnn(seq)
        return self.head(out.mean(0))


CASES = {
    "lstm": (nn.LSTM, False, 1),
    "lstm-bidirectional-2-layers": (nn.LSTM, True, 2),
    "gru": (nn.GRU, False, 1),
    "gru-bidirectional": (nn.GRU, True, 1),
}


def _model(name: str) -> nn.Module:
    torch.manual_seed(3)
    cell, bidirectional, layers = CASES[name]
    model = RowRecurrent(cell, bidirectional, layers).eval()
    with torch.no_grad():  # larger weights than the default init, so the gates saturate unevenly
        for param in model.rnn.parameters():
            param.mul_(3.0)
    return model


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_torch(name: str) -> None:
    model = _model(name)
    graph = explain_graph(tm.export_torchscript(model, INPUT), method="gradient")
    assert any(node.op_type in ("LSTM", "GRU") for node in graph.graph.node)
    x, ids = tm.random_inputs(INPUT, n=3, num_classes=NUM_CLASSES, k=2, seed=5)
    attributions = tm.run_explanation(graph, x, ids)["attributions"]
    reference = tm.torch_gradients(model, x, ids, dtype=torch.float64)
    err = tm.rel_errors(attributions, reference)
    tm.record("recurrent models, gradient vs float64 torch.autograd: max relative error", name, "torchscript",
              err.max())
    assert np.all(np.isfinite(attributions))
    assert err.max() < REL_TOL, f"relative errors per (image, class):\n{err}"
