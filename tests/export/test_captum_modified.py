"""deeplift and lrp (each rule) against Captum's DeepLift and LRP on the same weights.

DeepLIFT: CNNs with a MaxPool and the activations DeepLIFT rescales (ReLU, LeakyReLU at 1e-4;
Tanh, ELU, Sigmoid, Softplus at 1e-2, see SMOOTH), no two of Captum's hooked modules adjacent:
Captum 0.9's hooks then read a stale output gradient (captum#1104, fixed upstream by captum#1843),
and its MaxPool fallback uses the first image's gradient for all (captum#1276, fixed by
captum#1847); varrt computes the rules those fixes restore. EfficientNet-Lite0 with its real
weights: Captum does not list nn.ReLU6, so the test adds it to Captum's table with Captum's own
rescale function, and gives each call of the model's shared ReLU6 modules its own module (Captum's
hooks need one module per call).

LRP: a ReLU CNN of the module types Captum's LRP has rules for (Conv2d, MaxPool2d,
AdaptiveAvgPool2d, Linear; ReLU). The chosen rule goes on Conv2d and Linear, the epsilon rule on
the pools, as varrt assigns them. The gamma and z+ rules divide by z' of the reweighted layer, which
can come close to 0 where the original activation is positive: float32 results then differ in the
4th digit between any two implementations (Captum's float32 result is 5.6e-4 away from its own
float64 one), so the reference is Captum in float64. An MLP (Linear, ReLU, Tanh) runs every rule in
float64 end to end, where ONNX Runtime has the kernels, to 1e-6 (measured <= 2e-13); DeepLIFT's
rescale of Tanh and Sigmoid is checked the same way. Captum's LRP refuses EfficientNet-Lite0
(no rule for its Conv2dStaticSamePadding, ZeroPad2d or ReLU6 modules): that is checked too.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from varrt.core.errors import ModelError
from varrt.export import explain_graph

torch = pytest.importorskip("torch", reason="PyTorch and Captum are the reference")
captum_attr = pytest.importorskip("captum.attr", reason="Captum is the reference")
import torch_models as tm  # noqa: E402
from captum.attr._core import deep_lift  # noqa: E402
from captum.attr._utils import lrp_rules  # noqa: E402
from torch import nn  # noqa: E402

REL_TOL = 1e-4


class DeepLiftCNN(nn.Module):
    """conv-maxpool, then a conv before each activation, global pool, linear."""

    def __init__(self, acts: list[nn.Module]) -> None:
        super().__init__()
        self.conv1, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2)
        self.body = nn.Sequential(*[m for act in acts for m in (nn.Conv2d(8, 8, 3, padding=1), act)])
        self.fc = nn.Linear(8, tm.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.pool(self.conv1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class LrpCNN(nn.Module):
    """conv-relu-maxpool, conv-relu, adaptive average pool (a module: Captum gives it a rule), linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.avg = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, tm.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avg(x), 1))


def _build(cls: Callable[[], nn.Module], seed: int) -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(seed)
    model = cls().eval()
    return model, tm.export_torchscript(model, tm.TOY_INPUT)


def _per_class(attribute, x: np.ndarray, ids: np.ndarray, dtype=None) -> np.ndarray:  # noqa: ANN001
    """Captum attributions [N, K, ...], one call per class slot (targets differ per image)."""
    xt = torch.from_numpy(x).to(dtype or torch.float32)
    return np.stack([attribute(xt, target=torch.from_numpy(ids[:, k])).detach().double().numpy()
                     for k in range(ids.shape[1])], axis=1)  # fmt: skip


def _compare(graph: onnx.ModelProto, x: np.ndarray, ids: np.ndarray, expected: np.ndarray, label: str,
             tol: float = REL_TOL) -> None:  # fmt: skip
    out = tm.run_explanation(graph, x, ids)
    assert out["attributions"].shape == expected.shape, (out["attributions"].shape, expected.shape)
    err = tm.rel_errors(out["attributions"], expected)
    tm.record("modified backwards vs Captum: max relative error", label, "captum", err.max())
    assert err.max() < tol, f"{label}: per (image, class) relative errors\n{err}"


# ----------------------------------------------------------------------------------------- DeepLIFT
RECTIFIERS = (lambda: DeepLiftCNN([nn.ReLU(), nn.LeakyReLU(0.1), nn.ReLU()]), 1e-4)
# ONNX Runtime's float32 Sigmoid and Elu are not PyTorch's (measured on 1e5 points: Sigmoid up to
# 2e5 ulps apart in its tails, Elu 2.7e3 ulps near 0, Tanh and Softplus <= 5); the rescale
# multiplier (y - y_ref) / (x - x_ref) divides their difference by a small delta, which turns those
# ulps into a few 1e-3 of the map through four layers (measured 2.7e-3; Captum's own float32 map is
# 1.7e-2 from its float64 one on a deeper stack). The float64 MLP below checks the same rule tightly.
SMOOTH = (lambda: DeepLiftCNN([nn.Tanh(), nn.ELU(), nn.Sigmoid(), nn.Softplus()]), 1e-2)


@pytest.mark.parametrize(("net", "baseline"), [(RECTIFIERS, 0.0), (RECTIFIERS, 0.3), (SMOOTH, 0.0)],
                         ids=["rectifiers-0", "rectifiers-0.3", "smooth-0"])
def test_deeplift_cnn(net: tuple[Callable[[], nn.Module], float], baseline: float) -> None:
    model, proto = _build(net[0], 12)
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=21)
    dl = captum_attr.DeepLift(model)
    expected = _per_class(lambda xt, target: dl.attribute(xt, baselines=baseline, target=target), x, ids)
    _compare(explain_graph(proto, method="deeplift", baseline=baseline), x, ids, expected,
             f"cnn deeplift {type(model.body[1]).__name__}... baseline={baseline}", net[1])


def test_deeplift_smooth_activations_in_float64() -> None:
    """Tanh and Sigmoid rescaled in float64, where ONNX Runtime has kernels for every op of an MLP
    (not for Conv, Elu or Softplus): 1e-6 to Captum in float64 (measured 1.6e-8)."""
    torch.manual_seed(3)
    widths = [int(np.prod(tm.TOY_INPUT)), 32, 32, 32, 32]
    acts = [nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(0.1), nn.ReLU()]
    layers = [m for i, act in enumerate(acts) for m in (nn.Linear(widths[i], widths[i + 1]), act)]
    model = nn.Sequential(nn.Flatten(), *layers, nn.Linear(32, tm.NUM_CLASSES)).double().eval()
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=24)
    dl = captum_attr.DeepLift(model)
    expected = _per_class(lambda xt, target: dl.attribute(xt, baselines=0.1, target=target), x, ids, torch.float64)
    _compare_float64(explain_graph(_export_float64(model), method="deeplift", baseline=0.1), x, ids, expected,
                     "mlp deeplift float64")  # fmt: skip


def _export_float64(model: nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, *tm.TOY_INPUT, dtype=torch.float64),), buf, dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


def _compare_float64(graph: onnx.ModelProto, x: np.ndarray, ids: np.ndarray, expected: np.ndarray, label: str) -> None:
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["attributions"], {"input": x.astype(np.float64), "class_ids": ids})[0]
    err = tm.rel_errors(got, expected).max()
    tm.record("modified backwards vs Captum: max relative error", label, "captum", err)
    assert err < 1e-6, f"{label}: {err}"


def test_deeplift_is_not_the_gradient_times_input() -> None:
    """The multipliers matter: on the same net, input x gradient is far from DeepLIFT."""
    _, proto = _build(RECTIFIERS[0], 12)
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=2, seed=22)
    deeplift = tm.run_explanation(explain_graph(proto, method="deeplift"), x, ids)["attributions"]
    ixg = tm.run_explanation(explain_graph(proto, method="input_x_gradient"), x, ids)["attributions"]
    assert tm.rel_errors(deeplift, ixg).min() > 1e-2


class _OneModulePerCall(nn.Module):
    """A shared activation module whose calls each go through their own copy, in call order."""

    def __init__(self, module: nn.Module, calls: int) -> None:
        super().__init__()
        self.copies, self.calls, self.next = nn.ModuleList(copy.deepcopy(module) for _ in range(calls)), calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self.copies[self.next % self.calls]
        self.next += 1
        return module(x)


@pytest.mark.slow
def test_deeplift_efficientnet(effnet: nn.Module, effnet_onnx: onnx.ModelProto,
                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    model = copy.deepcopy(effnet)
    model._swish = _OneModulePerCall(model._swish, 2)  # stem and head
    for block in model._blocks:
        block._swish = _OneModulePerCall(block._swish, 2 if block._block_args.expand_ratio != 1 else 1)
    monkeypatch.setitem(deep_lift.SUPPORTED_NON_LINEAR, nn.ReLU6, deep_lift.nonlinear)
    x, _ = tm.random_inputs(tm.EFFICIENTNET_INPUT, n=1, seed=6)
    ids = np.array([[500]], np.int64)  # one image, one class: Captum takes most of the time here
    dl = captum_attr.DeepLift(model)
    expected = _per_class(lambda xt, target: dl.attribute(xt, baselines=0.0, target=target), x, ids)
    _compare(explain_graph(effnet_onnx, method="deeplift"), x, ids, expected, "effnet deeplift")


def test_deeplift_refuses_normalisations() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(5)).eval()
    model(torch.zeros(1, *tm.TOY_INPUT))
    proto = tm.export_torchscript(model, tm.TOY_INPUT, opset=18)
    with pytest.raises(ModelError, match="deeplift: DeepLIFT's rules .* define no multiplier"):
        explain_graph(proto, method="deeplift")


# ---------------------------------------------------------------------------------------------- LRP
def _captum_lrp(model: nn.Module, x: np.ndarray, ids: np.ndarray, rule: str, epsilon: float,
                gamma: float) -> np.ndarray:  # fmt: skip
    reference = copy.deepcopy(model).double()
    weighted = {"epsilon": lambda: lrp_rules.EpsilonRule(epsilon), "gamma": lambda: lrp_rules.GammaRule(gamma),
                "zplus": lrp_rules.Alpha1_Beta0_Rule}[rule]  # fmt: skip

    def attribute(xt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        for layer in (reference.conv1, reference.conv2, reference.fc):
            layer.rule = weighted()
        for layer in (reference.pool, reference.avg):
            layer.rule = lrp_rules.EpsilonRule(epsilon)
        return captum_attr.LRP(reference).attribute(xt, target=target)

    return _per_class(attribute, x, ids, torch.float64)


# The gamma and z+ rules divide by z' of the reweighted layer (bias unchanged), which comes close to
# 0 at some positive activations: measured 2.5e-5 (gamma 0.25), 1.2e-4 (gamma 1) and 1.1e-4 (z+)
# from Captum in float64, where Captum's own float32 result is 5.6e-4 away on such a net.
@pytest.mark.parametrize(("rule", "epsilon", "gamma", "tol"), [
    ("epsilon", 1e-9, 0.25, REL_TOL), ("epsilon", 0.1, 0.25, REL_TOL),
    ("gamma", 1e-9, 0.25, 1e-3), ("gamma", 1e-9, 1.0, 1e-3), ("zplus", 1e-9, 0.25, 1e-3),
])  # fmt: skip
def test_lrp_cnn(rule: str, epsilon: float, gamma: float, tol: float) -> None:
    model, proto = _build(LrpCNN, 13)
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=23)
    expected = _captum_lrp(model, x, ids, rule, epsilon, gamma)
    graph = explain_graph(proto, method="lrp", lrp_rule=rule, epsilon=epsilon, gamma=gamma)
    _compare(graph, x, ids, expected, f"cnn lrp {rule} epsilon={epsilon:g} gamma={gamma:g}", tol)


class LrpMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu1 = nn.Linear(int(np.prod(tm.TOY_INPUT)), 32), nn.ReLU()
        self.fc2, self.tanh = nn.Linear(32, 32), nn.Tanh()
        self.fc3 = nn.Linear(32, tm.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.tanh(self.fc2(self.relu1(self.fc1(torch.flatten(x, 1))))))


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "zplus"])
def test_lrp_mlp_in_float64(rule: str) -> None:
    """Each rule on Linear layers with ReLU and Tanh between them, in float64 (ONNX Runtime has
    float64 Gemm, Relu and Tanh): 1e-6 to Captum in float64."""
    torch.manual_seed(14)
    model = LrpMLP().double().eval()
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=25)
    layers = {"epsilon": lambda: lrp_rules.EpsilonRule(0.01), "gamma": lambda: lrp_rules.GammaRule(0.5),
              "zplus": lrp_rules.Alpha1_Beta0_Rule}[rule]  # fmt: skip

    def attribute(xt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        for layer in (model.fc1, model.fc2, model.fc3):
            layer.rule = layers()
        return captum_attr.LRP(model).attribute(xt, target=target)

    expected = _per_class(attribute, x, ids, torch.float64)
    graph = explain_graph(_export_float64(model), method="lrp", lrp_rule=rule, epsilon=0.01, gamma=0.5)
    _compare_float64(graph, x, ids, expected, f"mlp lrp {rule} float64")


@pytest.mark.parametrize("name", ["resnet", "vgg", "densenet"])
def test_lrp_epsilon_is_input_x_gradient_on_piecewise_linear_nets(name: str) -> None:
    """With a vanishing epsilon, LRP on a net of ReLUs, max pools and affine maps is input x gradient
    (Kindermans et al. 2016; Ancona et al. 2018): the relevance of every value v is v * df/dv, since
    R_z / z is the gradient at each layer's output. The toy ResNet (residual Adds), VGG (MaxPool) and
    DenseNet (Concat, standalone BatchNormalization, AveragePool) exercise every family LRP uses."""
    proto = tm.export_torchscript(tm.TOY_MODELS[name](), tm.TOY_INPUT)
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=27)
    # epsilon 1e-20, not the default 1e-9: some of DenseNet's z are ~1e-5, where 1e-9 shows (1.1e-4)
    lrp = tm.run_explanation(explain_graph(proto, method="lrp", epsilon=1e-20), x, ids)["attributions"]
    ixg = tm.run_explanation(explain_graph(proto, method="input_x_gradient"), x, ids)["attributions"]
    err = tm.rel_errors(lrp, ixg).max()
    tm.record("modified backwards vs Captum: max relative error", f"{name} lrp-0 vs input x gradient", "identity",
              err)  # fmt: skip
    assert err < REL_TOL


@pytest.mark.slow
def test_lrp_efficientnet_is_refused_by_captum_and_explained_by_varrt(effnet: nn.Module,
                                                                      effnet_onnx: onnx.ModelProto) -> None:
    """Captum's LRP has no rule for EfficientNet-Lite0's modules, so there is no reference; varrt
    explains it (ReLU6 is a rectifier: identity) with a finite map."""
    x, _ = tm.random_inputs(tm.EFFICIENTNET_INPUT, n=1, seed=6)
    with pytest.raises(TypeError, match="has no rule defined"):
        captum_attr.LRP(copy.deepcopy(effnet)).attribute(torch.from_numpy(x), target=1)
    out = tm.run_explanation(explain_graph(effnet_onnx, method="lrp"), x, np.array([[1]]))
    assert np.isfinite(out["attributions"]).all()


def test_lrp_refuses_layers_without_a_rule() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.LazyLinear(5)).eval()
    model(torch.zeros(1, *tm.TOY_INPUT))
    proto = tm.export_torchscript(model, tm.TOY_INPUT)
    with pytest.raises(ModelError, match="lrp: LRP's rules .* define no relevance propagation"):
        explain_graph(proto, method="lrp")


def test_lrp_options_are_checked() -> None:
    _, proto = _build(LrpCNN, 13)
    from varrt.core.errors import UsageError

    with pytest.raises(UsageError, match="unknown --lrp-rule 'alpha'"):
        explain_graph(proto, method="lrp", lrp_rule="alpha")
    with pytest.raises(UsageError, match="--epsilon must be > 0"):
        explain_graph(proto, method="lrp", epsilon=0.0)


# ------------------------------------------------------------------------------------------ targets
@pytest.mark.parametrize(("net", "method", "options"), [
    ("rectifiers", "deeplift", {}), ("lrp", "lrp", {"batch": 1}), ("lrp", "lrp", {"batch": 1, "lrp_rule": "zplus"}),
])  # fmt: skip
def test_onnxruntime_cpu_passes_keep_the_graphs(net: str, method: str, options: dict) -> None:
    """The CPU target's passes (stride phases, sunk reshapes, bias-form masks at batch 1), one by
    one, leave the deeplift and lrp graphs' outputs as they were (test_passes.py's check)."""
    from test_passes import _check_each_pass

    _, proto = _build(RECTIFIERS[0] if net == "rectifiers" else LrpCNN, 15)
    n = options.get("batch", 2)
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=n, k=2, seed=26)
    graph = explain_graph(proto, method=method, **options)
    assert _check_each_pass(graph, {"input": x, "class_ids": ids})  # some pass applied



@pytest.mark.parametrize("method", ["deeplift", "integrated_gradients", "smoothgrad"])
def test_graphs_that_batch_the_image_are_topologically_sorted(method: str) -> None:
    """The batching nodes are emitted after the forward that reads them; the graph is sorted before
    it is written (ONNX's checker and TensorRT's parser want producers first)."""
    _, proto = _build(RECTIFIERS[0], 15)
    onnx.checker.check_model(explain_graph(proto, method=method, steps=2, samples=2), full_check=True)
