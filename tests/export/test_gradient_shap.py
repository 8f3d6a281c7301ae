"""gradient_shap against Captum's GradientShap: exact where the method is deterministic (a linear
model without noise), statistically elsewhere (a ReLU CNN: the mean over many seeded runs matches
the mean over as many Captum calls, within a tolerance from the runs' own variance); seeded.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from varrt.export import explain_graph

torch = pytest.importorskip("torch", reason="PyTorch and Captum are the reference")
captum_attr = pytest.importorskip("captum.attr", reason="Captum is the reference")
import torch_models as tm  # noqa: E402
from torch import nn  # noqa: E402

NOISE = 0.1  # sigma as a fraction of each image's value range; Captum's stdevs = NOISE * (max - min)
SAMPLES = 8  # per run, varrt and Captum alike
RUNS = 100  # runs of each, for the means


class SmallReluCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())  # fmt: skip
        self.fc = nn.Linear(12, tm.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(21)
    model = SmallReluCNN().eval()
    return model, tm.export_torchscript(model, tm.TOY_INPUT)


def _captum_runs(model: nn.Module, x: np.ndarray, ids: np.ndarray, baseline: float, runs: int) -> np.ndarray:
    """[runs, N, K, ...]: Captum GradientShap maps; the runs are ``runs`` copies of an image in one call (each
    row draws its own samples), one call per image and class (stdevs are per call, sigma per image)."""
    shap = captum_attr.GradientShap(model)
    torch.manual_seed(0)
    np.random.seed(0)  # Captum draws the points between baseline and input with NumPy
    out = np.zeros((runs, *ids.shape, *x.shape[1:]), np.float32)
    for n in range(x.shape[0]):
        copies = torch.from_numpy(np.repeat(x[n:n + 1], runs, axis=0))
        stdev = NOISE * float(x[n].max() - x[n].min())
        for k in range(ids.shape[1]):
            out[:, n, k] = shap.attribute(copies, baselines=torch.full_like(copies[:1], baseline), n_samples=SAMPLES,
                                          stdevs=stdev, target=int(ids[n, k])).detach().numpy()  # fmt: skip
    return out


def _varrt_runs(graph: onnx.ModelProto, x: np.ndarray, ids: np.ndarray, runs: int) -> np.ndarray:
    """[runs, N, K, ...]: the graph's maps for ``runs`` copies of the batch in one run (each image draws anew)."""
    session = tm.ort_session(graph)
    name = next(i.name for i in session.get_inputs() if i.name != "class_ids")
    maps = session.run(["attributions"], {name: np.tile(x, (runs, 1, 1, 1)), "class_ids": np.tile(ids, (runs, 1))})[0]
    return maps.reshape(runs, x.shape[0], *maps.shape[1:])


def _mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    """||mean(a) - mean(b)||^2 over its expected value when both estimate one mean, sum(var_a + var_b) / R,
    per (image, class): about 1 when they do, the largest of them returned."""
    runs = a.shape[0]
    diff = ((a.mean(0) - b.mean(0)) ** 2).reshape(*a.shape[1:3], -1).sum(-1)
    expected = ((a.var(0, ddof=1) + b.var(0, ddof=1)) / runs).reshape(*a.shape[1:3], -1).sum(-1)
    return float((diff / expected).max())


def test_linear_model_without_noise_is_exact() -> None:
    """With a constant gradient W_k and no noise every sample gives W_k * (x - baseline), whatever u is."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(tm.TOY_INPUT)), tm.NUM_CLASSES)).eval()
    proto = tm.export_torchscript(model, tm.TOY_INPUT)
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=4)
    shap = captum_attr.GradientShap(model)
    xt = torch.from_numpy(x)
    for baseline in (0.0, 0.25):
        expected = np.stack([shap.attribute(xt, baselines=torch.full_like(xt[:1], baseline), n_samples=3,
                                            target=torch.from_numpy(ids[:, k])).detach().numpy()
                             for k in range(ids.shape[1])], axis=1)  # fmt: skip
        graph = explain_graph(proto, method="gradient_shap", samples=3, noise=0.0, baseline=baseline)
        got = tm.run_explanation(graph, x, ids)["attributions"]
        assert tm.rel_errors(got, expected).max() < 1e-5


def test_same_seed_same_map_other_seed_other_map(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    _, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=2, seed=5)
    maps = {seed: [tm.run_explanation(explain_graph(proto, method="gradient_shap", samples=4, noise=NOISE, seed=seed),
                                      x, ids)["attributions"] for _ in range(2)]  # fmt: skip
            for seed in (0, 1)}
    np.testing.assert_array_equal(maps[0][0], maps[0][1])
    np.testing.assert_array_equal(maps[1][0], maps[1][1])
    assert tm.rel_errors(maps[0][0], maps[1][0]).min() > 1e-3


def test_mean_matches_captum(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    """Means over RUNS runs of SAMPLES samples each agree within their own standard error; the same
    statistic tells integrated gradients (another expectation) apart, so the check can fail."""
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=2, seed=6)
    baseline = 0.2
    reference = _captum_runs(model, x, ids, baseline, RUNS)
    ours = _varrt_runs(explain_graph(proto, method="gradient_shap", samples=SAMPLES, noise=NOISE, baseline=baseline),
                       x, ids, RUNS)  # fmt: skip
    matched = _mean_difference(ours, reference)
    tm.record("gradient_shap vs Captum: ||mean difference||^2 / its expectation", "cnn", "captum", matched)
    assert matched < 2.0, matched
    # Power: smoothgrad (no (x - baseline) factor) is a different expectation and must be told apart.
    other = _varrt_runs(explain_graph(proto, method="smoothgrad", samples=SAMPLES, noise=NOISE), x, ids, RUNS)
    assert _mean_difference(other, reference) > 10.0
