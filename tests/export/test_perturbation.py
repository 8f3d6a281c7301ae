"""occlusion and rise (export/perturbation.py), against independent references.

occlusion: Captum's ``Occlusion`` on the same weights (a ReLU CNN defined in test_captum.py and
EfficientNet-Lite0 with its ImageNet weights), to relative error < 1e-4.

rise: on a linear model z = W x + b, whose expected map has a closed form. With M a RISE mask
(s x s cells kept with probability p, bilinear weights alpha_a(u) that sum to 1 at every pixel u,
random shifts), E[M(u)] = p and E[M(u) M(v)] = p^2 + p (1 - p) G(u, v), G(u, v) = E_shift[sum_a
alpha_a(u) alpha_a(v)]. With a_k(v) = sum_c W_k[c, v] x[c, v], z_k(x * M) = sum_v a_k(v) M(v) + b_k, so

    E[map_k(u)] = E[z_k(x * M) M(u)] / p = p sum_v a_k(v) + (1 - p) sum_v a_k(v) G(u, v) + b_k.

G is computed here from torch's own bilinear interpolation, not from varrt's tables; the sampled map
must lie within 5 standard errors (from the per-mask terms' variance) of it at every pixel.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from varrt.core.errors import UsageError
from varrt.export import explain_graph
from varrt.export.perturbation import RiseTables
from varrt.export.tensorrt_support import tensorrt_problems
from varrt.kernels import var_maps

REL_TOL = 1e-4


def _run(graph: onnx.ModelProto, x: np.ndarray, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x}
    if ids is not None:
        feeds["class_ids"] = ids
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


# ------------------------------------------------------------------------------------------ a linear model
SHAPE, CLASSES = (3, 16, 16), 4


def _linear_model(seed: int = 0, opset: int = 17) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((int(np.prod(SHAPE)), CLASSES)).astype(np.float32)
    bias = rng.standard_normal(CLASSES).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1), helper.make_node("Gemm", ["flat", "w", "b"], ["z"])],
        "linear", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, weights, bias


def _shift_kernel(size: int, cells: int) -> np.ndarray:
    """G along one axis, [size, size]: the mean over shifts d in [0, c) of U_d U_d^T, U_d the rows
    d .. d + size of the bilinear upsampling of ``cells`` values to (cells + 1) c (torch's)."""
    torch = pytest.importorskip("torch", reason="torch's interpolate is the independent upsampling")
    cell = -(-size // cells)
    basis = torch.eye(cells, dtype=torch.float64).reshape(cells, 1, cells)
    up = torch.nn.functional.interpolate(basis, size=(cells + 1) * cell, mode="linear", align_corners=False)
    up = up[:, 0].T.numpy()  # [(cells + 1) c, cells]
    return np.mean([up[d:d + size] @ up[d:d + size].T for d in range(cell)], axis=0)


def test_rise_matches_its_closed_form_on_a_linear_model() -> None:
    model, weights, bias = _linear_model()
    samples, cells, keep = 4000, 4, 0.5
    x = np.random.default_rng(1).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    ids = np.array([[0, 3], [2, 1]], np.int64)
    out = _run(explain_graph(model, method="rise", samples=samples, mask_size=cells, keep=keep, chunk=300, seed=5),
               x, ids)["attributions"]
    assert out.shape == (2, 2, 16, 16)

    h, w = SHAPE[1:]
    g = np.kron(_shift_kernel(h, cells), _shift_kernel(w, cells))  # [H*W, H*W], pixels row-major
    masks = RiseTables.make(h, w, samples, cells, keep, seed=5).masks(h, w).reshape(samples, -1).astype(np.float64)
    for n in range(2):
        for slot, k in enumerate(ids[n]):
            a = (weights[:, k].reshape(SHAPE) * x[n]).sum(0).reshape(-1).astype(np.float64)  # a_k(v)
            expected = keep * a.sum() + (1 - keep) * g @ a + bias[k]
            terms = (masks @ a + bias[k])[:, None] * masks / keep  # per mask: z_k(x * m_i) m_i(u) / p
            stderr = terms.std(0, ddof=1) / np.sqrt(samples)
            z = np.abs(out[n, slot].reshape(-1) - expected) / stderr
            assert z.max() < 5, f"image {n} class {k}: {z.max():.1f} standard errors from the closed form"
            # the sampled map is exactly the mean of those terms (the graph's plumbing, not statistics)
            np.testing.assert_allclose(out[n, slot].reshape(-1), terms.mean(0), rtol=1e-4, atol=1e-4)


def test_rise_seed_fixes_the_masks() -> None:
    model, _, _ = _linear_model()
    x = np.random.default_rng(2).uniform(-1, 1, (1, *SHAPE)).astype(np.float32)
    ids = np.array([[1, 2]], np.int64)
    maps = [_run(explain_graph(model, method="rise", samples=64, seed=seed), x, ids)["attributions"]
            for seed in (3, 3, 4)]
    np.testing.assert_array_equal(maps[0], maps[1])
    assert np.abs(maps[0] - maps[2]).max() > 1e-3


def test_rise_chunk_does_not_change_the_map() -> None:
    """The last chunk is padded with all-zero masks: any chunk size gives the same sum."""
    model, _, _ = _linear_model()
    x = np.random.default_rng(3).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    ids = np.array([[1, 2], [0, 3]], np.int64)
    a, b = (_run(explain_graph(model, method="rise", samples=50, chunk=c), x, ids)["attributions"] for c in (50, 7))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_opset_10_picks_the_scores_without_gather_elements(method: str) -> None:
    """Below opset 11 the explained logits are picked with a one-hot sum: the same map as opset 17's."""
    x = np.random.default_rng(4).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    ids = np.array([[1, 2], [0, 3]], np.int64)
    old, new = (_run(explain_graph(_linear_model(opset=opset)[0], method=method, samples=30, window=6, stride=4),
                     x, ids)["attributions"] for opset in (10, 17))
    np.testing.assert_allclose(old, new, rtol=1e-5, atol=1e-5)


def test_rise_masks_are_the_papers() -> None:
    """Each mask is an upsampled s x s binary grid cropped at a shift in [0, c): its values lie in
    [0, 1], a fully kept or fully dropped grid gives all ones or zeros, and the share of kept cells is p."""
    tables = RiseTables.make(20, 20, 3000, 5, 0.3, seed=0)
    masks = tables.masks(20, 20)
    assert masks.shape == (3000, 20, 20) and masks.min() >= 0 and masks.max() <= 1 + 1e-6
    assert abs(tables.grids.mean() - 0.3) < 0.01 and set(np.unique(tables.grids)) <= {0.0, 1.0}
    assert tables.shift_y.min() == 0 and tables.shift_y.max() == 3  # c = ceil(20 / 5) = 4
    full = RiseTables(np.ones_like(tables.grids[:1]), tables.shift_y[:1], tables.shift_x[:1], tables.up_h, tables.up_w)
    np.testing.assert_allclose(full.masks(20, 20), 1.0, atol=1e-6)
    assert abs(masks.mean() - 0.3) < 0.01


# ------------------------------------------------------------------------------------------ occlusion vs Captum
torch = pytest.importorskip("torch", reason="PyTorch and Captum are the reference")
captum_attr = pytest.importorskip("captum.attr", reason="Captum is the reference")
import torch_models as tm  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Captum's many small forwards: two OpenMP threads on a loaded 2-core machine spin for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cnn() -> tuple[torch.nn.Module, onnx.ModelProto]:
    return tm.relu_cnn()


def _captum_occlusion(model: torch.nn.Module, x: np.ndarray, ids: np.ndarray, window: int, stride: int,
                      baseline: float) -> np.ndarray:  # fmt: skip
    occlusion = captum_attr.Occlusion(model)
    xt = torch.from_numpy(x)
    return np.stack([occlusion.attribute(xt, sliding_window_shapes=(x.shape[1], window, window), strides=stride,
                                         baselines=baseline, target=torch.from_numpy(ids[:, k])).numpy()
                     for k in range(ids.shape[1])], axis=1)  # fmt: skip


@pytest.mark.parametrize(("window", "stride", "baseline", "chunk"), [
    (16, 8, 0.0, 32),  # the defaults: 3 x 3 windows on 32 x 32
    (8, 5, 0.0, 7),  # the last window runs past the edge and is cut; chunks of 7 over 36 windows
    (6, 3, -0.5, 100),  # a nonzero baseline; one chunk
])
def test_occlusion_matches_captum_on_a_relu_cnn(cnn, window: int, stride: int, baseline: float,  # noqa: ANN001
                                                 chunk: int) -> None:
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=window)
    expected = _captum_occlusion(model, x, ids, window, stride, baseline)
    graph = explain_graph(proto, method="occlusion", window=window, stride=stride, baseline=baseline, chunk=chunk)
    out = _run(graph, x, ids)["attributions"]
    assert out.shape == expected.shape == (2, 3, *tm.TOY_INPUT)
    err = tm.rel_errors(out, expected)
    tm.record("methods vs Captum: max relative error", f"cnn occlusion w{window} s{stride}", "captum", err.max())
    assert err.max() < REL_TOL, err


@pytest.mark.slow
def test_occlusion_matches_captum_on_efficientnet(effnet, effnet_onnx) -> None:  # noqa: ANN001
    """Window 112, stride 56 (3 x 3 windows, overlapping) keeps Captum's forwards to a few seconds."""
    x, _ = tm.random_inputs(tm.EFFICIENTNET_INPUT, n=2, seed=6)
    ids = np.array([[1, 500], [999, 42]], np.int64)
    expected = _captum_occlusion(effnet, x, ids, 112, 56, 0.0)
    out = _run(explain_graph(effnet_onnx, method="occlusion", window=112, stride=56, chunk=4), x, ids)
    err = tm.rel_errors(out["attributions"], expected)
    tm.record("methods vs Captum: max relative error", "effnet occlusion w112 s56", "captum", err.max())
    assert err.max() < REL_TOL, err


# ------------------------------------------------------------------------------------------ VAR, graph, refusals
@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_var_in_the_graph_equals_var_after_it(cnn, method: str) -> None:  # noqa: ANN001
    _, proto = cnn
    x, _ = tm.random_inputs(tm.TOY_INPUT, n=2, seed=9)
    out = _run(explain_graph(proto, method=method, samples=40, var=True, classes="top2+min"), x)
    assert out["class_ids"].shape == (2, 3)
    np.testing.assert_allclose(out["var_attributions"], var_maps(out["attributions"]), rtol=1e-5, atol=1e-6)
    assert np.abs(out["var_attributions"]).max() > 0


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_graphs_parse_in_tensorrt_by_its_documented_support(cnn, method: str) -> None:  # noqa: ANN001
    _, proto = cnn
    assert tensorrt_problems(explain_graph(proto, method=method, samples=40, var=True)) == []


@pytest.mark.parametrize(("options", "message"), [
    ({"method": "occlusion", "window": 40}, "--window 40 is larger than the image"),
    ({"method": "occlusion", "window": 4, "stride": 5}, "--stride 5 is larger than --window 4"),
    ({"method": "occlusion", "chunk": 0}, "--chunk must be a positive integer"),
    ({"method": "rise", "keep": 0.0}, "--keep must lie in (0, 1]"),
    ({"method": "rise", "samples": 0}, "--samples must be"),
    ({"method": "rise", "mask_size": 33}, "--mask-size 33 is larger than the image"),
    ({"method": "occlusion", "batch": 1}, "cannot be fixed"),
])
def test_bad_options_are_one_line(cnn, options: dict, message: str) -> None:  # noqa: ANN001
    _, proto = cnn
    with pytest.raises(UsageError, match=None) as error:
        explain_graph(proto, **options)
    assert message in str(error.value) and "\n" not in str(error.value)
