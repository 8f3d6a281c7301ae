"""Which models the sweep builds: one row per (exporter, model) with its family.

Small members of each family, so that the float64 reference runs on two shared cores; the
architectures issue 12 named (dynamic-batch refusals, "needs static sizes", missing rules) are in.
``QUICK`` is one model per family and exporter: ``--quick`` and a first look after a change.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

CNN, VIT, HYBRID, MLP = "cnn", "vit", "hybrid", "mlp"


@dataclass(frozen=True)
class Entry:
    exporter: str  # "timm-torchscript", "timm-dynamo", "keras-tf2onnx", "paddle-paddle2onnx"
    model: str  # timm.create_model name, keras.applications attribute, paddle.vision.models function
    family: str
    size: int | None = None  # image height and width where not the model's default (tiny CI models)

    @property
    def key(self) -> str:
        """The model's name in results: ``model`` or ``model@size``."""
        return self.model if self.size is None else f"{self.model}@{self.size}"


_TIMM_TORCHSCRIPT = {
    CNN: """resnet18 resnet50d resnext26ts seresnext26d_32x4d resnest14d regnetx_002 regnety_002 mobilenetv2_050
            mobilenetv3_small_050 mobilenetv3_large_100 efficientnet_b0 tf_efficientnet_lite0 mnasnet_small ghostnet_100
            ghostnetv2_100 densenet121 dla34 dpn68 rexnet_100 hrnet_w18_small convnext_atto convnextv2_atto tresnet_m
            lcnet_050 mixnet_s repvgg_a0 inception_v3 nf_resnet26 cspresnet50 ese_vovnet19b_dw gernet_s
            skresnet18""",
    VIT: """vit_tiny_patch16_224 deit_tiny_distilled_patch16_224 deit3_small_patch16_224 cait_xxs24_224
            crossvit_tiny_240 pit_ti_224 tnt_s_patch16_224 swin_tiny_patch4_window7_224 xcit_nano_12_p16_224
            twins_svt_small pvt_v2_b0 eva02_tiny_patch14_224""",
    HYBRID: """levit_128s efficientformer_l1 mobilevit_xxs mobilevitv2_050 botnet26t_256 coatnet_nano_rw_224
               maxvit_rmlp_nano_rw_256 edgenext_xx_small efficientvit_b0 fastvit_t8 poolformer_s12
               tiny_vit_5m_224 sequencer2d_s""",
    MLP: "mixer_s16_224 resmlp_12_224 gmlp_ti16_224",
}
_TIMM_DYNAMO = {
    CNN: "resnet18 mobilenetv3_small_050 efficientnet_b0 regnetx_002 convnext_atto",
    VIT: "vit_tiny_patch16_224 swin_tiny_patch4_window7_224",
    HYBRID: "levit_128s mobilevit_xxs",
    MLP: "resmlp_12_224",
}
_KERAS = {
    CNN: """MobileNet MobileNetV2 MobileNetV3Small ResNet50 ResNet50V2 DenseNet121 EfficientNetB0 EfficientNetV2B0
            NASNetMobile Xception RegNetX002""",
    HYBRID: "ConvNeXtTiny",
}
_PADDLE = {CNN: "resnet18 mobilenet_v2 mobilenet_v3_small shufflenet_v2_x0_5 squeezenet1_1 densenet121"}


def _entries(exporter: str, table: dict[str, str]) -> list[Entry]:
    """The families interleaved, so that a sweep stopped early has checked some of each."""
    columns = [[Entry(exporter, model, family) for model in names.split()] for family, names in table.items()]
    return [entry for row in itertools.zip_longest(*columns) for entry in row if entry is not None]


CATALOG: list[Entry] = [
    *_entries("timm-torchscript", _TIMM_TORCHSCRIPT),
    *_entries("timm-dynamo", _TIMM_DYNAMO),
    *_entries("keras-tf2onnx", _KERAS),
    *_entries("paddle-paddle2onnx", _PADDLE),
]
EXPORTERS = tuple(dict.fromkeys(entry.exporter for entry in CATALOG))
FRAMEWORKS = {"timm-torchscript": "timm", "timm-dynamo": "timm", "keras-tf2onnx": "keras",
              "paddle-paddle2onnx": "paddle"}  # fmt: skip

# Seconds each: tests/bench/test_zoo.py runs them through the same harness in CI.
TINY: list[Entry] = [
    Entry("timm-torchscript", "test_resnet", CNN, 64),
    Entry("timm-torchscript", "test_vit", VIT, 64),
    Entry("keras-tf2onnx", "MobileNetV3Small", CNN, 64),
    Entry("paddle-paddle2onnx", "mobilenet_v3_small", CNN, 64),
]

# One per family and exporter, plus the shapes issue 12 named: TF "same" padding computed from Shape
# (tf_efficientnet_lite0), Swin's window partition, ReduceL2 (convnextv2).
QUICK = {
    ("timm-torchscript", m)
    for m in ("resnet18", "tf_efficientnet_lite0", "convnextv2_atto", "vit_tiny_patch16_224",
              "swin_tiny_patch4_window7_224", "levit_128s", "mobilevit_xxs", "resmlp_12_224")
} | {("timm-dynamo", "mobilenetv3_small_050"), ("timm-dynamo", "vit_tiny_patch16_224"),
     ("keras-tf2onnx", "MobileNetV2"), ("keras-tf2onnx", "ConvNeXtTiny"),
     ("paddle-paddle2onnx", "mobilenet_v3_small")}  # fmt: skip
