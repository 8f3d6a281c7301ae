"""The CAMs against pytorch-grad-cam on the same weights (issue 14, item 3).

gradcam, gradcam_plus_plus, xgradcam, layercam, hirescam and scorecam on a ReLU CNN defined here, on
EfficientNet-Lite0 with its real weights, and on small timm ViTs with random weights (tokens with a
class token, and Swin's [N, h, w, C]), whose tokens varrt puts on the patch grid itself where
pytorch-grad-cam needs a ``reshape_transform``.

Normalisation: pytorch-grad-cam returns each map rescaled to [0, 1] (``scale_cam_image``: minus its
minimum, divided by its maximum + 1e-7, before and after cv2.resize); varrt keeps the unnormalised
map (VAR needs its scale). So varrt's map goes through the same per-map min-max rescale before the
comparison, and the relative error must stay below 1e-4.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from varrt.export import explain_graph
from varrt.kernels import var_maps

torch = pytest.importorskip("torch", reason="PyTorch and pytorch-grad-cam are the reference")
for _package in ("pytorch_grad_cam", "cv2", "ttach"):
    if importlib.util.find_spec(_package) is None:
        pytest.skip(f"{_package} is not installed (the reference: pip install --no-deps grad-cam ttach, and "
                    "opencv-python-headless; see pyproject's gradcam extra)", allow_module_level=True)

import torch_models as tm  # noqa: E402
from torch import nn  # noqa: E402
from varrt.bench.zoo.torchvision_stand_in import import_without_torchvision  # noqa: E402

pgc = import_without_torchvision("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

REL_TOL = 1e-4
REFERENCES = {
    "gradcam": pgc.GradCAM,
    "gradcam_plus_plus": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
    "scorecam": pgc.ScoreCAM,
}
CAMS = list(REFERENCES)


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, onnx.ModelProto]:
    return tm.relu_cnn()


def reference_cams(method: str, model: nn.Module, layer: nn.Module, x: np.ndarray, ids: np.ndarray,
                   reshape_transform=None) -> np.ndarray:  # noqa: ANN001
    """pytorch-grad-cam's maps [N, K, H, W] (each in [0, 1]), one call per class slot."""
    cam = REFERENCES[method](model=model, target_layers=[layer], reshape_transform=reshape_transform)
    if method == "scorecam":
        cam.batch_size = 64
    xt = torch.from_numpy(x)
    maps = [cam(input_tensor=xt, targets=[ClassifierOutputTarget(int(c)) for c in ids[:, k]])
            for k in range(ids.shape[1])]
    return np.stack(maps, axis=1)


def min_max(maps: np.ndarray) -> np.ndarray:
    """Each [H, W] map rescaled to [0, 1] (all zeros where it is constant). pytorch-grad-cam's
    scale_cam_image adds 1e-7 to the divisor; on its maps, already in [0, 1] when it rescales them
    last, that is a 1e-7 relative effect, but on varrt's unnormalised maps (maxima ~1e-3 here) it
    would be 1e-4, so it is left out."""
    shifted = maps - maps.min(axis=(-2, -1), keepdims=True)
    top = shifted.max(axis=(-2, -1), keepdims=True)
    return shifted / np.where(top > 0, top, 1)


def compare(graph: onnx.ModelProto, x: np.ndarray, ids: np.ndarray, expected: np.ndarray, label: str,
            tol: float = REL_TOL) -> np.ndarray:  # fmt: skip
    out = tm.run_explanation(graph, x, ids)
    attributions = out["attributions"]
    assert attributions.shape == expected.shape, (attributions.shape, expected.shape)
    assert (attributions >= 0).all()  # a ReLU'd map, unnormalised
    assert (expected.max(axis=(-2, -1)) > 0).any(), f"{label}: every reference map is zero: nothing is compared"
    err = tm.rel_errors(min_max(attributions), expected)
    tm.record("CAMs vs pytorch-grad-cam (min-max rescaled): max relative error", label, "pytorch-grad-cam",
              err.max())
    assert err.max() < tol, f"{label}: per (image, class) relative errors\n{err}"
    return attributions


def _layer_value(proto: onnx.ModelProto, module_name: str) -> str:
    """The ONNX value the TorchScript exporter wrote for the output of module ``module_name``."""
    return [n.output[0] for n in proto.graph.node if f"/{module_name}/" in f"{n.name}/"][-1]


# ------------------------------------------------------------------------------------ ReLU CNN
@pytest.mark.parametrize("method", CAMS)
def test_cnn_default_layer(method: str, cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    """The default layer (relu3's output, 8x8, 16 channels), N=2, K=3."""
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=21)
    expected = reference_cams(method, model, model.relu3, x, ids)
    compare(explain_graph(proto, method=method), x, ids, expected, f"cnn {method}")


@pytest.mark.parametrize("method", ["gradcam_plus_plus", "scorecam"])
def test_cnn_named_layer(method: str, cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    """layer= picks relu2's output (16x16, upsampled 2x)."""
    model, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=2, seed=22)
    expected = reference_cams(method, model, model.relu2, x, ids)
    graph = explain_graph(proto, method=method, layer=_layer_value(proto, "relu2"))
    compare(graph, x, ids, expected, f"cnn {method} layer=relu2")


# ----------------------------------------------------------------------------- scorecam's Loop
def test_scorecam_mask_batch_and_fixed_batch(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    """The maps do not depend on how the 16 masked copies are chunked: 5 per image and iteration
    (four chunks, the last padded with three all-zero masks), 16 (one chunk), 64 (one chunk, 48
    padded); nor on a batch fixed to 1 (one copy per forward, 16 iterations)."""
    _, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=3, seed=23)
    maps = {b: tm.run_explanation(explain_graph(proto, method="scorecam", mask_batch=b), x, ids)["attributions"]
            for b in (5, 16, 64)}  # fmt: skip
    fixed = explain_graph(proto, method="scorecam", batch=1)
    one = np.concatenate([tm.run_explanation(fixed, x[i : i + 1], ids[i : i + 1])["attributions"] for i in range(2)])
    for other in (maps[16], maps[64], one):
        assert tm.rel_errors(other, maps[5]).max() < 1e-5
    assert maps[5].max() > 0


def test_scorecam_graph_is_for_tensorrt(cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    """One Loop with a constant trip count (TensorRT wants a static scan-output length), its constants
    in the outer graph, nothing the ONNX-TensorRT parser's documentation rules out."""
    from varrt.export.tensorrt_support import tensorrt_problems

    graph = explain_graph(cnn[1], method="scorecam", mask_batch=5)
    loops = [n for n in graph.graph.node if n.op_type == "Loop"]
    assert len(loops) == 1
    trips = next(i for i in graph.graph.initializer if i.name == loops[0].input[0])
    assert onnx.numpy_helper.to_array(trips) == 4  # ceil(16 / 5)
    assert not loops[0].attribute[0].g.initializer
    assert tensorrt_problems(graph) == []


@pytest.mark.parametrize(("options", "message"), [
    (dict(method="gradcam", mask_batch=4), "--mask-batch applies to scorecam only"),
    (dict(method="scorecam", mask_batch=0), "--mask-batch must be a positive integer"),
    (dict(method="scorecam", mask_batch=4, batch=1), "the model's batch axis is fixed to 1"),
])  # fmt: skip
def test_mask_batch_refusals(options: dict, message: str, cnn: tuple[nn.Module, onnx.ModelProto]) -> None:
    from varrt.core.errors import UsageError

    with pytest.raises(UsageError, match=message) as info:
        explain_graph(cnn[1], **options)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------- VAR
@pytest.mark.parametrize("method", CAMS)
def test_var_on_cams(method: str, cnn: tuple[nn.Module, onnx.ModelProto], tmp_path) -> None:  # noqa: ANN001
    """VAR in the graph (var=True) equals VAR after the graph (varrt.kernels.var_maps on the
    attributions, what the Explainer runs), and the Explainer's maps equal the graph's. With
    var_scale="max": this random CNN's maps peak near 1e-3, where T * |A| with the raw scale leaves
    the class distribution flat and VAR zeroes every map (DESIGN.md: T multiplies unnormalised maps)."""
    import varrt

    _, proto = cnn
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=4, seed=24)
    out = tm.run_explanation(explain_graph(proto, method=method, var=True, var_scale="max"), x, ids)
    after = var_maps(out["attributions"], 10.0, 0.01, scale="max")
    assert np.abs(out["var_attributions"] - after).max() <= 1e-6 * np.abs(after).max()
    assert np.count_nonzero(after) > 0 and np.count_nonzero(after) < after.size  # VAR keeps some, drops some
    path = tmp_path / "cnn.onnx"
    onnx.save_model(proto, path)
    for in_graph in (False, True):
        explainer = varrt.Explainer(path, method=method, classes=[int(c) for c in ids[0]], backend="onnxruntime",
                                    var_in_graph=in_graph, var_scale="max", cache_dir=tmp_path / "cache")
        explanation = explainer(x[:1])
        np.testing.assert_allclose(explanation.attributions, out["attributions"][:1], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(explanation.var, after[:1], rtol=1e-5, atol=1e-6 * np.abs(after).max())


# ----------------------------------------------------------------------------- EfficientNet-Lite0
class HeadSplit(nn.Module):
    """EfficientNet-Lite0 as features (ending in the head's ReLU6) then classifier, the same function.
    pytorch-grad-cam hooks a module, and the model calls its one ReLU6 module for the stem and the head;
    ``features`` is a module whose output is the head's activation alone: varrt's default layer."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.features = _Features(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m._fc(m._dropout(m._avg_pooling(self.features(x)).flatten(start_dim=1)))


class _Features(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x)


@pytest.mark.slow
def test_efficientnet_gradient_cams(effnet: nn.Module, effnet_onnx: onnx.ModelProto) -> None:
    """The gradient CAMs at the default layer (the head's ReLU6 output, 1280 channels, 7x7), real
    weights, N=1, K=2."""
    x, _ = tm.random_inputs(tm.EFFICIENTNET_INPUT, n=1, seed=25)
    ids = np.array([[1, 500]], np.int64)
    split = HeadSplit(effnet).eval()
    with torch.no_grad():
        assert torch.equal(split(torch.from_numpy(x)), effnet(torch.from_numpy(x)))
    for method in ("gradcam_plus_plus", "xgradcam", "layercam", "hirescam"):
        expected = reference_cams(method, split, split.features, x, ids)
        compare(explain_graph(effnet_onnx, method=method), x, ids, expected, f"effnet {method}")


@pytest.mark.slow
def test_efficientnet_scorecam(effnet: nn.Module, effnet_onnx: onnx.ModelProto) -> None:
    """scorecam at block 0's output (16 channels, 112x112): 16 masked 224x224 copies per image."""
    x, _ = tm.random_inputs(tm.EFFICIENTNET_INPUT, n=1, seed=26)
    ids = np.array([[281, 7]], np.int64)
    expected = reference_cams("scorecam", effnet, effnet._blocks[0], x, ids)
    graph = explain_graph(effnet_onnx, method="scorecam", layer=_layer_value(effnet_onnx, "_blocks.0"), mask_batch=8)
    compare(graph, x, ids, expected, "effnet scorecam layer=_blocks.0")


# ------------------------------------------------------------------------------ transformers (timm)
VIT_INPUT = (3, 32, 32)  # 8x8 patches: a 4x4 grid


@pytest.fixture(scope="module")
def timm() -> object:
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (the test extra pins it)")
    return import_without_torchvision("timm")


@pytest.fixture(scope="module")
def vit(timm) -> tuple[nn.Module, onnx.ModelProto]:  # noqa: ANN001
    """A two-block ViT with a class token, random weights; tokens [N, 1 + 16, 32]."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(12)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    model = tm._randomise(model, 12)
    return model, tm.export_torchscript(model, VIT_INPUT)


@pytest.mark.parametrize("method", CAMS)
def test_vit_class_token(method: str, vit: tuple[nn.Module, onnx.ModelProto]) -> None:
    """At the last block's norm1 (pytorch-grad-cam's advice for ViTs): varrt drops the class token and
    lays the 16 patch tokens out as 4x4 itself; the library needs vit_reshape_transform(4, 4)."""
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    model, proto = vit
    x, ids = tm.random_inputs(VIT_INPUT, n=2, k=2, seed=27)
    expected = reference_cams(method, model, model.blocks[-1].norm1, x, ids,
                              lambda t: vit_reshape_transform(t, 4, 4))  # fmt: skip
    graph = explain_graph(proto, method=method, layer=_layer_value(proto, "blocks.1/norm1"))
    compare(graph, x, ids, expected, f"vit {method}")


def test_token_models_need_a_layer(vit: tuple[nn.Module, onnx.ModelProto]) -> None:
    """Without --layer the last 4-D value of a ViT is attention's (here q/k/v heads [N, 17, 2, 16]),
    not a spatial map: refused with one line rather than explained."""
    from varrt.core.errors import UsageError

    with pytest.raises(UsageError, match=r"turns the image into tokens .* pass --layer") as info:
        explain_graph(vit[1], method="gradcam")
    assert "\n" not in str(info.value)


def test_tokens_without_a_grid_are_refused(timm) -> None:  # noqa: ANN001
    """A register token besides the class token: 18 tokens are neither h*w nor 1 + h*w."""
    from timm.models.vision_transformer import VisionTransformer
    from varrt.core.errors import UsageError

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=10,
                              reg_tokens=1).eval()  # fmt: skip
    proto = tm.export_torchscript(model, VIT_INPUT)
    with pytest.raises(UsageError, match=r"\[N, 18, 32\] on a patch grid of the 32x32 image") as info:
        explain_graph(proto, method="gradcam", layer=_layer_value(proto, "blocks.0/norm1"))
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def swin(timm) -> tuple[nn.Module, onnx.ModelProto]:  # noqa: ANN001
    """A two-stage Swin, random weights. The dynamo exporter: the TorchScript one computes the patch
    merging's padding from the input's shape, which leaves Slice ends varrt's autodiff refuses."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(13)
    model = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                            num_classes=10)  # fmt: skip
    model = tm._randomise(model, 13)
    return model, tm.export_dynamo(model, VIT_INPUT)


def _layer_norm_outputs(proto: onnx.ModelProto, shape: list[int | str]) -> list[str]:
    """The dynamo exporter names values by op: the LayerNormalization outputs of this shape, in order."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in inferred.graph.value_info}  # fmt: skip
    return [n.output[0] for n in proto.graph.node if n.op_type == "LayerNormalization"
            and shapes.get(n.output[0]) == shape]  # fmt: skip


@pytest.mark.slow
def test_swin(swin: tuple[nn.Module, onnx.ModelProto]) -> None:
    """Swin's second stage: its block's norm1 output is [N, h, w, C] (4x4x32; the library needs a
    permute), its norm2 output is tokens [N, h*w, C] without a class token (the library's
    swinT_reshape_transform(4, 4))."""
    from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform

    model, proto = swin
    block = model.layers[-1].blocks[-1]
    x, ids = tm.random_inputs(VIT_INPUT, n=2, k=2, seed=28)
    channels_last = _layer_norm_outputs(proto, ["N", 4, 4, 32])  # the block's norm1, then the model's final norm
    (tokens,) = _layer_norm_outputs(proto, ["N", 16, 32])
    assert len(channels_last) == 2
    for method in ("gradcam", "scorecam"):
        expected = reference_cams(method, model, block.norm1, x, ids, lambda t: t.permute(0, 3, 1, 2))
        graph = explain_graph(proto, method=method, layer=channels_last[0])
        compare(graph, x, ids, expected, f"swin {method} NHWC")
    expected = reference_cams("hirescam", model, block.norm2, x, ids, lambda t: swinT_reshape_transform(t, 4, 4))
    compare(explain_graph(proto, method="hirescam", layer=tokens), x, ids, expected, "swin hirescam tokens")


# ---------------------------------------------------------------------------------------- CLI
def test_cli_export_mask_batch(cnn: tuple[nn.Module, onnx.ModelProto], tmp_path, capsys) -> None:  # noqa: ANN001
    """varrt export -m scorecam --mask-batch 5 writes explain_graph(mask_batch=5)'s graph; --mask-batch with a
    gradient CAM is one line, exit 2, nothing written."""
    from varrt import cli

    model, out = tmp_path / "cnn.onnx", tmp_path / "scorecam.onnx"
    onnx.save_model(cnn[1], model)
    assert cli.main(["export", str(model), "-o", str(out), "-m", "scorecam", "--mask-batch", "5"]) == 0
    written = onnx.load_model(out)
    assert {p.key: p.value for p in written.metadata_props}["varrt.mask_batch"] == "5"
    x, ids = tm.random_inputs(tm.TOY_INPUT, n=2, k=2, seed=29)
    expected = tm.run_explanation(explain_graph(cnn[1], method="scorecam", mask_batch=5), x, ids)["attributions"]
    np.testing.assert_array_equal(tm.run_explanation(written, x, ids)["attributions"], expected)
    capsys.readouterr()
    refused = tmp_path / "refused.onnx"
    assert cli.main(["export", str(model), "-o", str(refused), "-m", "layercam", "--mask-batch", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--mask-batch applies to scorecam only" in err and not refused.exists()


def test_bench_layer_reaches_every_cam() -> None:
    """`varrt bench ... --layer L` hands L to every CAM method's Explainer, and only to those."""
    from varrt import cli
    from varrt.bench import cli as bench_cli

    options = bench_cli._method_options(cli.build_parser().parse_args(["bench", "gpg", "--layer", "L"]))
    assert options == {m: {"layer": "L"} for m in ("gradcam", "guided_gradcam", *CAMS)}
