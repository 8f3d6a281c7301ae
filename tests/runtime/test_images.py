"""Images in: decoding, ImageNet-style resize + centre crop, normalisation, streaming batches."""

from __future__ import annotations

import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from varrt import data
from varrt.core.errors import ModelError, UsageError, VarrtError
from varrt.images import (
    PRESETS,
    Preprocessing,
    fit,
    input_size,
    iter_batches,
    load_image,
    load_pixels,
    normalize,
    preprocessing_for,
    read_image,
)


def _identity_model(shape: list[int | str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "m",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)],
    )
    # IR 8 (the opset 17 era): onnx 1.23 would default to an IR version onnxruntime cannot load yet.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _save(tmp_path, name: str, pixels: np.ndarray) -> str:
    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return str(path)


def test_crop_of_a_256_image_keeps_the_central_224_pixels_exactly():
    # 224 / 0.875 = 256: no resampling, the crop starts at (256 - 224) / 2 = 16.
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    pixels = np.stack([ramp, ramp.T, np.zeros_like(ramp)], axis=-1)
    out = np.asarray(fit(Image.fromarray(pixels), (224, 224)))
    assert out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out[0, :, 0], np.arange(16, 240))
    np.testing.assert_array_equal(out[:, 0, 1], np.arange(16, 240))


def test_crop_scales_the_shorter_side_to_size_over_0875():
    # 451x300 (the cat): shorter side 300 -> 256, longer 451 -> 385, then the central 224.
    seen = {}
    original_resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        seen["size"] = size
        return original_resize(self, size, *args, **kwargs)

    image = Image.new("RGB", (451, 300))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image.Image, "resize", spy)
        out = fit(image, (224, 224))
    assert seen["size"] == (385, 256)
    assert out.size == (224, 224)


def test_centre_crop_is_centred_on_a_wide_image():
    # Left half red, right half blue: after the crop the halves still meet in the middle.
    pixels = np.zeros((200, 400, 3), np.uint8)
    pixels[:, :200, 0] = 255
    pixels[:, 200:, 2] = 255
    out = np.asarray(fit(Image.fromarray(pixels), (64, 64)))
    assert out.shape == (64, 64, 3)
    assert out[:, :30, 0].min() == 255 and out[:, :30, 2].max() == 0
    assert out[:, 34:, 2].min() == 255 and out[:, 34:, 0].max() == 0


def test_stretch_ignores_aspect_ratio():
    out = fit(Image.new("RGB", (400, 100), (9, 9, 9)), (32, 48), resize="stretch")
    assert out.size == (48, 32)


def test_normalize_matches_hand_computed_values():
    pixels = np.full((2, 3, 3), (0, 128, 255), np.uint8)
    mean, std = PRESETS["imagenet"]
    out = normalize(pixels, mean, std)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    expected = [(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(normalize(pixels, *PRESETS["none"])[:, 1, 2], [0.0, 128 / 255, 1.0], rtol=1e-6)
    np.testing.assert_allclose(
        normalize(pixels, *PRESETS["inception"])[:, 0, 0], [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6
    )


def test_load_image_end_to_end_on_a_uniform_png(tmp_path):
    path = _save(tmp_path, "flat.png", np.full((30, 50, 3), (51, 102, 204), np.uint8))
    x = load_image(path, Preprocessing(size=(16, 16), mean=(0.0,), std=(1.0,)))
    assert x.shape == (3, 16, 16)
    np.testing.assert_allclose(x[:, 5, 5], [0.2, 0.4, 0.8], atol=1e-6)


def test_grayscale_and_rgba_files_become_rgb(tmp_path):
    gray = _save(tmp_path, "g.png", np.full((20, 20), 77, np.uint8))
    rgba = _save(tmp_path, "a.png", np.full((20, 20, 4), 77, np.uint8))
    prep = Preprocessing(size=(8, 8))
    assert load_pixels(gray, prep).shape == (8, 8, 3)
    assert load_pixels(rgba, prep).shape == (8, 8, 3)
    assert load_pixels(gray, Preprocessing(size=(8, 8), mean=(0.5,), std=(0.5,), channels=1)).shape == (8, 8)


@pytest.mark.parametrize("content", [b"this is not an image", b""])
def test_undecodable_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(VarrtError, match="broken.png"):
        read_image(path)


def test_truncated_jpeg_fails_at_load_with_its_name(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.demo_images()[0].read_bytes()[:2000])
    with pytest.raises(VarrtError, match="cut.jpg"):
        read_image(path)


def test_missing_file_is_a_varrt_error(tmp_path):
    with pytest.raises(VarrtError, match="no such image file"):
        read_image(tmp_path / "nope.jpg")


def test_input_size_from_graph():
    assert input_size(data.demo_model_path()) == (224, 224)
    assert input_size(_identity_model(["N", 3, 96, 128])) == (96, 128)
    assert input_size(_identity_model(["N", 3, "H", "W"])) is None
    with pytest.raises(ModelError, match="4-D"):
        input_size(_identity_model(["N", 10]))


def test_unreadable_model_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="bad.onnx"):
        input_size(bad)
    with pytest.raises(ModelError, match="no such model"):
        input_size(tmp_path / "missing.onnx")


def test_preprocessing_from_demo_model_metadata():
    prep = preprocessing_for(data.demo_model_path())
    assert prep.size == (224, 224)
    np.testing.assert_allclose(prep.mean, [127 / 255] * 3, rtol=1e-6)
    np.testing.assert_allclose(prep.std, [128 / 255] * 3, rtol=1e-6)
    # Explicit choices win over the metadata.
    assert preprocessing_for(data.demo_model_path(), preset_name="imagenet").mean == PRESETS["imagenet"][0]
    assert preprocessing_for(data.demo_model_path(), std=[0.25]).std == (0.25,)


def test_preprocessing_defaults_and_sizes():
    dynamic = _identity_model(["N", 3, "H", "W"])
    assert preprocessing_for(dynamic).size == (224, 224)
    assert preprocessing_for(dynamic).mean == PRESETS["imagenet"][0]
    assert preprocessing_for(dynamic, size=(64, 80)).size == (64, 80)
    with pytest.raises(UsageError, match="fixed at 224x224"):
        preprocessing_for(data.demo_model_path(), size=(100, 100))
    with pytest.raises(UsageError, match="unknown preset"):
        preprocessing_for(dynamic, preset_name="caffe")
    gray = preprocessing_for(_identity_model(["N", 1, 28, 28]))
    assert gray.channels == 1 and len(gray.mean) == 1


def test_bad_preprocessing_values():
    with pytest.raises(UsageError):
        Preprocessing(mean=(0.1, 0.2))
    with pytest.raises(UsageError):
        Preprocessing(std=(0.0,))


def test_iter_batches_streams(tmp_path):
    paths = [_save(tmp_path, f"{i}.png", np.full((20, 30, 3), i * 40, np.uint8)) for i in range(5)]
    (tmp_path / "bad.png").write_bytes(b"junk")
    prep = Preprocessing(size=(8, 8), mean=(0.0,), std=(1.0,))
    batches = iter_batches([*paths, str(tmp_path / "bad.png")], prep, batch_size=2)
    assert isinstance(batches, types.GeneratorType)
    first = next(batches)
    assert first.paths == paths[:2]
    assert first.pixels.shape == (2, 8, 8, 3) and first.pixels.dtype == np.uint8
    assert first.inputs.shape == (2, 3, 8, 8) and first.inputs.dtype == np.float32
    np.testing.assert_allclose(first.inputs[1], 40 / 255, atol=1e-6)
    assert len(next(batches).paths) == 2
    # The broken file sits in the third batch: only reaching it fails.
    with pytest.raises(VarrtError, match="bad.png"):
        next(batches)
    with pytest.raises(UsageError):
        next(iter_batches(paths, prep, batch_size=0))


def test_bundled_photos_load():
    prep = preprocessing_for(data.demo_model_path())
    batch = next(iter_batches(data.demo_images(), prep, batch_size=8))
    assert batch.inputs.shape == (len(data.demo_images()), 3, 224, 224)
    assert -1.01 < batch.inputs.min() < batch.inputs.max() < 1.01
