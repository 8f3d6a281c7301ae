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


class ReluCNN(nn.Module):
    """conv-relu-pool, conv-relu, conv-relu (the last spatial feature map, 8x8), global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 12, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(12, 16, 3, padding=1), nn.ReLU()
        self.conv3, self.relu3 = nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU()
        self.fc = nn.Linear(16, tm.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        x = self.relu3(self.conv3(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(11)
    model = ReluCNN().eval()
    return model, tm.export_torchscript(model, tm.TOY_INPUT)


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


def compare(graph: onnx.ModelProto, x: np.ndarray, ids: np.ndarray, expected: np.ndarray, label: str) -> np.ndarray:
    out = tm.run_explanation(graph, x, ids)
    attributions = out["attributions"]
    assert attributions.shape == expected.shape, (attributions.shape, expected.shape)
    assert (attributions >= 0).all()  # a ReLU'd map, unnormalised
    err = tm.rel_errors(min_max(attributions), expected)
    tm.record("CAMs vs pytorch-grad-cam (min-max rescaled): max relative error", label, "pytorch-grad-cam",
              err.max())
    assert err.max() < REL_TOL, f"{label}: per (image, class) relative errors\n{err}"
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
