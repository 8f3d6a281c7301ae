"""The one atomic writer: every file varrt writes follows the umask and appears whole or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from varrt import cli
from varrt.cache import GraphCache
from varrt.files import atomic_path, atomic_write_bytes


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tiny_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_written_files_follow_the_umask(tmp_path, umask):
    expected = 0o666 & ~umask
    atomic_write_bytes(tmp_path / "bytes.bin", b"data")
    with atomic_path(tmp_path / "path.txt") as temporary:
        temporary.write_text("text")
    cached = GraphCache(tmp_path / "cache").store("0" * 64, _tiny_model())  # created 0600 before
    cli.save_model(_tiny_model(), tmp_path / "graph.onnx")
    for path in (tmp_path / "bytes.bin", tmp_path / "path.txt", cached, tmp_path / "graph.onnx"):
        assert _mode(path) == expected, (path.name, oct(_mode(path)), oct(expected))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half of the new")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_the_cache_writes_through_the_one_writer(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr("varrt.cache.atomic_write_bytes", lambda path, data: written.append(path))
    path = GraphCache(tmp_path).store("1" * 64, _tiny_model())
    assert written == [path]
