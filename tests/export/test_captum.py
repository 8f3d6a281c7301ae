"""The explanation methods against Captum's implementations of the same methods.

guided_backprop, deconvolution, gradcam and guided_gradcam on a ReLU CNN defined here (Captum's GuidedBackprop
overrides nn.ReLU modules, so the net uses them); input_x_gradient and integrated_gradients on
EfficientNet-Lite0 with its real weights.
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

REL_TOL = 1e-4


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, onnx.ModelProto]:
    return tm.relu_cnn()


def _per_class(attribute, x: np.ndarray, ids: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Captum attributions [N, K, ...], one call per class slot (targets differ per image)."""
    xt = torch.from_numpy(x)
    return np.stack([attribute(xt, target=torch.from_numpy(ids[:, k])).detach().numpy() for k in range(ids.shape[1])],
                    axis=1)  # fmt: skip


def _compare(graph: onnx.ModelProto, x: np.ndarray, ids: np.ndarray, expected: np.ndarray, label: str,
             tol: float = REL_TOL) -> None:  # fmt: skip
    out = tm.run_explanation(graph, x, ids)
    assert out["attributions"].shape == expected.shape, (out["attributions"].shape, expected.shape)
    err = tm.rel_errors(out["attributions"], expected)
    tm.record("methods vs Captum: max relative error", label, "captum", err.max())
    assert err.max() < tol, f"{label}: per (image, class) relative errors\n{err}"


def _layer_value(proto: onnx.ModelProto, module_name: str) -> str:
    """The ONNX value the TorchScript exporter wrote for the output of module ``module_name`` (a ReLU)."""
    return next(n.output[0] for n in proto.graph.node if n.op_type == "Relu" and n.name.startswith(f"/{module_name}/"))


def test_guided_backprop(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=2)
    expected = _per_class(captum_attr.GuidedBackprop(model).attribute, x, ids)
    _compare(explain_graph(proto, method="guided_backprop"), x, ids, expected, "cnn guided_backprop")


def test_deconvolution(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=3)
    expected = _per_class(captum_attr.Deconvolution(model).attribute, x, ids)
    _compare(explain_graph(proto, method="deconvolution"), x, ids, expected, "cnn deconvolution")


def _gradcam(model: nn.Module, layer: nn.Module, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    cam = captum_attr.LayerGradCam(model, layer)

    def attribute(xt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a = cam.attribute(xt, target=target, relu_attributions=True)
        return captum_attr.LayerAttribution.interpolate(a, tuple(xt.shape[2:]), "bilinear")[:, 0]

    return _per_class(attribute, x, ids)


def test_gradcam_default_layer(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    """The default layer is the last spatial feature map on the path to the logits: relu3's output."""
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=3)
    expected = _gradcam(model, model.relu3, x, ids)
    assert expected.shape == (2, 3, 32, 32)
    _compare(explain_graph(proto, method="gradcam"), x, ids, expected, "cnn gradcam")


def test_gradcam_named_layer(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    """layer= picks another feature map (relu2's output, 16x16, upsampled 2x)."""
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=2, seed=4)
    expected = _gradcam(model, model.relu2, x, ids)
    graph = explain_graph(proto, method="gradcam", layer=_layer_value(proto, "relu2"))
    _compare(graph, x, ids, expected, "cnn gradcam layer=relu2")


def test_guided_gradcam(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=5)
    ggc = captum_attr.GuidedGradCam(model, model.relu3)
    expected = _per_class(lambda xt, target: ggc.attribute(xt, target=target, interpolate_mode="bilinear"), x, ids)
    _compare(explain_graph(proto, method="guided_gradcam"), x, ids, expected, "cnn guided_gradcam")


# ------------------------------------------------------------------------------ EfficientNet-Lite0
def _effnet_inputs() -> tuple[np.ndarray, np.ndarray]:
    x, _ = tm.random_inputs(tm.EFFICIENTNET_INPUT, n=2, seed=6)
    return x, np.array([[1, 500], [999, 42]], np.int64)


@pytest.mark.slow
def test_input_x_gradient_efficientnet(effnet: nn.Module, effnet_onnx: onnx.ModelProto) -> None:
    x, ids = _effnet_inputs()
    expected = _per_class(captum_attr.InputXGradient(effnet).attribute, x, ids)
    # 1e-2, not 1e-4: float32 ReLU6 mask flips in this 224x224 net (see test_torch_models.DEEP_TOL).
    _compare(explain_graph(effnet_onnx, method="input_x_gradient"), x, ids, expected, "effnet input_x_gradient", 1e-2)


@pytest.mark.slow
def test_integrated_gradients_efficientnet(effnet: nn.Module, effnet_onnx: onnx.ModelProto) -> None:
    x, ids = _effnet_inputs()
    ig = captum_attr.IntegratedGradients(effnet)
    steps = 8

    def attribute(xt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ig.attribute(xt, baselines=0.0, target=target, n_steps=steps, method="riemann_right")

    expected = _per_class(attribute, x, ids)
    # IG sums `steps` gradients at interpolated images; each is subject to the ReLU6 mask flips of the
    # gradient test (bound 1e-2 there), and the average over steps does not make them cancel.
    _compare(explain_graph(effnet_onnx, method="integrated_gradients", steps=steps), x, ids, expected,
             "effnet integrated_gradients (8 steps)", 1e-2)  # fmt: skip


def test_integrated_gradients_small_cnn(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    """The same IG definition at 1e-4 on a net small enough for float32 to be exact: any slip in the
    alphas (right Riemann rule), the baseline or the final (x - baseline) factor shows here."""
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=2, seed=7)
    ig = captum_attr.IntegratedGradients(model)
    for baseline in (0.0, 0.3):

        def attribute(xt: torch.Tensor, target: torch.Tensor, b: float = baseline) -> torch.Tensor:
            return ig.attribute(xt, baselines=b, target=target, n_steps=8, method="riemann_right")

        expected = _per_class(attribute, x, ids)
        graph = explain_graph(proto, method="integrated_gradients", steps=8, baseline=baseline)
        _compare(graph, x, ids, expected, f"cnn integrated_gradients baseline={baseline}")


def test_input_x_gradient_small_cnn(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=8)
    expected = _per_class(captum_attr.InputXGradient(model).attribute, x, ids)
    _compare(explain_graph(proto, method="input_x_gradient"), x, ids, expected, "cnn input_x_gradient")


def test_smoothgrad_statistics(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    """SmoothGrad is stochastic: check what must hold whatever the noise. With noise=0 it is the
    gradient; with noise it is finite, differs from the gradient, and its mean over samples sits between
    the gradient and a Captum NoiseTunnel estimate in correlation (both estimate the same expectation)."""
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=2, seed=9)
    gradient = tm.run_explanation(explain_graph(proto, method="gradient"), x, ids)["attributions"]
    zero = tm.run_explanation(explain_graph(proto, method="smoothgrad", samples=4, noise=0.0), x, ids)
    assert tm.rel_errors(zero["attributions"], gradient).max() < REL_TOL

    smooth = tm.run_explanation(explain_graph(proto, method="smoothgrad", samples=64, noise=0.15), x, ids)
    a = smooth["attributions"]
    assert np.isfinite(a).all() and tm.rel_errors(a, gradient).min() > 1e-3

    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
    torch.manual_seed(0)
    stdev = float(0.15 * (x.max() - x.min()))  # per image in varrt; these images share their range
    expected = _per_class(lambda xt, target: nt.attribute(xt, nt_type="smoothgrad", nt_samples=64, stdevs=stdev,
                                                          target=target, abs=False), x, ids)  # fmt: skip
    for n in range(2):
        for k in range(2):
            corr = np.corrcoef(a[n, k].ravel(), expected[n, k].ravel())[0, 1]
            assert corr > 0.5, (n, k, corr)
