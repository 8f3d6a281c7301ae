"""TensorRT backend: everything that needs neither TensorRT nor a GPU.

Profile shapes, cache keys, the engine cache file format and its validation, the I/O plan and
parser error text are plain functions; the engine build and execution are tested only where
TensorRT and a GPU exist (skipped here with the reason).
"""

import warnings

import numpy as np
import pytest
from varrt.backends.base import TensorSpec
from varrt.backends.tensorrt import (
    EngineCacheError,
    EngineOptions,
    IOTensor,
    ParserError,
    check_within_profile,
    decode_engine_file,
    encode_engine_file,
    engine_cache_key,
    engine_options,
    format_parser_errors,
    io_plan,
    load_cached_engine,
    profile_shapes,
    tensorrt_unavailable_reason,
)
from varrt.core.errors import UsageError, VarrtError

F32, I64 = np.dtype(np.float32), np.dtype(np.int64)
IMAGE = TensorSpec("input", F32, ("N", 3, 32, 32))
IDS = TensorSpec("class_ids", I64, ("N", "K"))


def test_profile_over_batch_and_classes():
    shapes = profile_shapes([IMAGE, IDS], batch_size=8)
    assert shapes["input"] == ((1, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32))
    assert shapes["class_ids"] == ((1, 2), (8, 5), (8, 16))


def test_profile_class_range_is_an_option_and_static_dims_stay():
    shapes = profile_shapes([IMAGE, TensorSpec("class_ids", I64, ("N", 5))], batch_size=4, classes=(3, 4, 6))
    assert shapes["class_ids"] == ((1, 5), (4, 5), (4, 5))
    shapes = profile_shapes([IDS], batch_size=4, classes=(3, 4, 6))
    assert shapes["class_ids"] == ((1, 3), (4, 4), (4, 6))


def test_profile_with_fixed_batch():
    shapes = profile_shapes([TensorSpec("input", F32, (2, 3, 8, 8))], batch_size=16)
    assert shapes["input"] == ((2, 3, 8, 8),) * 3


def test_profile_rejects_other_dynamic_dims():
    with pytest.raises(UsageError, match="input 'input' axis 2 is dynamic"):
        profile_shapes([TensorSpec("input", F32, ("N", 3, "H", "W"))])


def test_engine_options_validate_ranges():
    assert engine_options(4, (2, 5, 3)).classes == (2, 3, 3)  # opt clipped to max
    with pytest.raises(UsageError, match="min <= opt <= max"):
        EngineOptions(batch=(2, 1, 4))
    with pytest.raises(UsageError, match="classes range"):
        EngineOptions(classes=(0, 5, 16))


def test_shapes_outside_the_profile_are_named():
    profile = profile_shapes([IMAGE, IDS], batch_size=4)
    check_within_profile({"input": (4, 3, 32, 32), "class_ids": (4, 16)}, profile)
    with pytest.raises(UsageError, match=r"built for K in \[2, 16\], input 'class_ids' has 17"):
        check_within_profile({"input": (4, 3, 32, 32), "class_ids": (4, 17)}, profile)
    with pytest.raises(UsageError, match=r"built for N in \[1, 4\]"):
        check_within_profile({"input": (5, 3, 32, 32), "class_ids": (5, 5)}, profile)


def test_cache_key_changes_with_every_part():
    base = ("a" * 64, "10.15.1", "NVIDIA H100", "90", EngineOptions())
    key = engine_cache_key(*base)
    assert key == engine_cache_key(*base) and len(key) == 64
    variants = [
        ("b" * 64, *base[1:]),
        (base[0], "11.0.0", *base[2:]),
        (*base[:2], "NVIDIA H200", *base[3:]),
        (*base[:3], "89", base[4]),
        (*base[:4], EngineOptions(fp16=True)),
        (*base[:4], EngineOptions(batch=(1, 8, 8))),
        (*base[:4], EngineOptions(classes=(2, 4, 8))),
    ]
    assert len({engine_cache_key(*v) for v in variants} | {key}) == len(variants) + 1


def test_engine_file_round_trip():
    engine = bytes(range(256)) * 10
    data = encode_engine_file("k1", engine, {"tensorrt": "10.15.1"})
    assert data.startswith(b"VARRTTRT")
    assert decode_engine_file(data, "k1") == engine


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: d[:5], "truncated"),
        (lambda d: b"NOTVARRT" + d[8:], "not a varrt engine file"),
        (lambda d: d[:8] + b"\x09" + d[9:], "file format 9"),
        (lambda d: d[:-1], "checksum"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum"),
        (lambda d: d[:20] + b"\xff" + d[21:], "header is corrupt"),
    ],
)
def test_corrupt_engine_files_are_rejected(corrupt, message):
    data = encode_engine_file("k1", b"engine payload" * 100)
    with pytest.raises(EngineCacheError, match=message):
        decode_engine_file(corrupt(data), "k1")


def test_engine_file_for_another_key_is_rejected():
    with pytest.raises(EngineCacheError, match="stored key differs"):
        decode_engine_file(encode_engine_file("k1", b"x"), "k2")


def test_unusable_cache_is_reported_once(tmp_path, caplog):
    path = tmp_path / "engines" / "bad.engine"
    assert load_cached_engine(path, "k") is None  # missing: silent
    path.parent.mkdir()
    path.write_bytes(b"garbage that is long enough to have a header")
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert load_cached_engine(path, "k") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second report would raise here
        assert load_cached_engine(path, "k") is None
    good = encode_engine_file("k", b"payload")
    path.write_bytes(good)
    assert load_cached_engine(path, "k") == b"payload"


def test_parser_errors_one_per_line():
    text = format_parser_errors(
        [
            ParserError("Unsupported operator MaxUnpool", 3, "unpool_1", "MaxUnpool"),
            ParserError("Invalid weights\nmore detail", -1),
        ]
    )
    lines = text.splitlines()
    assert lines[0] == "TensorRT cannot parse the explanation graph (2 error(s)):"
    assert lines[1] == "  node unpool_1 (MaxUnpool): Unsupported operator MaxUnpool"
    assert lines[2] == "  Invalid weights"
    assert len(lines) == 3


def test_io_plan_binds_by_name():
    tensors = [
        IOTensor("logits", False, F32),
        IOTensor("input", True, F32),
        IOTensor("class_ids", True, I64),
        IOTensor("attributions", False, F32),
    ]
    inputs, outputs = io_plan(tensors, ["input", "class_ids"], ["logits", "attributions"])
    assert [t.name for t in inputs] == ["input", "class_ids"]
    assert [t.name for t in outputs] == ["logits", "attributions"]
    with pytest.raises(VarrtError, match="engine inputs"):
        io_plan(tensors, ["input"], ["logits"])
    with pytest.raises(VarrtError, match="lacks outputs"):
        io_plan(tensors, ["input", "class_ids"], ["var_attributions"])


@pytest.mark.skipif(tensorrt_unavailable_reason() is not None, reason=str(tensorrt_unavailable_reason()))
def test_tensorrt_engine_runs():  # pragma: no cover - needs TensorRT and a GPU
    from test_backends import explanation_graph, run_backend_against_reference

    run_backend_against_reference("tensorrt", explanation_graph())
