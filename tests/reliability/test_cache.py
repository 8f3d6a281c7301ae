"""Cached explanation graphs: written atomically, checksummed, keyed; damage is reported once and
rebuilt."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import testbed as models
from varrt.cache import CHECKSUM_METADATA, KEY_METADATA, GraphCache, verify_checksum
from varrt.explainer import Explainer


def _explainer(tmp_path, **kwargs):
    return Explainer(str(tmp_path / "tiny.onnx"), method="gradient", backend="onnxruntime-cpu",
                     cache_dir=tmp_path / "cache", **kwargs)


def _flip_middle(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01  # one bit inside the weights: still parses, same key, wrong numbers
    return bytes(out)


@pytest.mark.parametrize("damage", [
    _flip_middle,
    lambda data: data[: len(data) // 3],
    lambda data: data[:-1],
    lambda data: b"",
    lambda data: b"\x00" * len(data),
], ids=["bit-flip", "truncated", "last-byte-missing", "empty", "zeros"])
def test_damaged_entry_is_reported_once_and_rebuilt(damage, tmp_path, caplog):
    onnx.save(models.tiny_cnn(), tmp_path / "tiny.onnx")
    images = models.images(2)
    first = _explainer(tmp_path)
    expected = first(images)
    entry = first.graph_paths["top4+min"]
    assert verify_checksum(entry.read_bytes())
    entry.write_bytes(damage(entry.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="varrt"):
        second = _explainer(tmp_path)
        np.testing.assert_array_equal(second(images).var, expected.var)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and str(entry) in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "rebuilding" in warnings[0].getMessage()
    assert verify_checksum(entry.read_bytes())  # rewritten whole
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="varrt"):
        _explainer(tmp_path)(images)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_foreign_entry_is_rebuilt(tmp_path, caplog):
    onnx.save(models.tiny_cnn(), tmp_path / "tiny.onnx")
    top2 = _explainer(tmp_path, classes="top2").graph_paths["top2"]
    target = _explainer(tmp_path).graph_paths["top4+min"]
    target.write_bytes(top2.read_bytes())  # a valid entry, checksum fine, stored for another key
    with caplog.at_level(logging.WARNING, logger="varrt"):
        result = _explainer(tmp_path)(models.images(2))
    assert result.class_ids.shape == (2, 5)
    assert "does not match its key" in caplog.text


def test_entry_is_a_plain_onnx_file_with_key_and_checksum(tmp_path):
    cache = GraphCache(tmp_path)
    path = cache.store("k" * 64, models.tiny_mlp())
    model = onnx.load(str(path))
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata[KEY_METADATA] == "k" * 64 and len(metadata[CHECKSUM_METADATA]) == 64
    onnx.checker.check_model(model)
    assert cache.load("k" * 64) is not None and cache.load("j" * 64) is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    cache = GraphCache(tmp_path)
    path = cache.store("a" * 64, models.tiny_mlp())
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("varrt.cache.os.replace", fail)
    with pytest.raises(OSError):
        cache.store("a" * 64, models.tiny_cnn())
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]
