"""The VAR speed benchmark runs end to end on tiny cases and writes the JSON it documents."""

from __future__ import annotations

import json
import math

import pytest
from varrt.bench import var_speed


def test_benchmark_writes_json(tmp_path, monkeypatch):
    monkeypatch.setattr(var_speed, "CPU_CASES", [(2, 3, (4, 4)), (1, 5, (3, 8, 8))])
    monkeypatch.setattr(var_speed, "GPU_CASES", [(2, 5, (3, 8, 8), "float32"), (2, 5, (3, 7, 7), "float16")])
    out = tmp_path / "speed.json"
    assert var_speed.main(["--repeat", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(row["N"], row["K"]) for row in result["cpu"]] == [(2, 3), (1, 5)]
    for row, (n, k, shape) in zip(result["cpu"], var_speed.CPU_CASES, strict=True):
        assert row["MB"] == pytest.approx(n * k * math.prod(shape) * 4 / 1e6)
        assert row["ort_over_numpy"] == pytest.approx(row["ort_ms"] / row["numpy_ms"])
        assert row["max_abs_diff"] < 1e-5
    gpu = result["gpu"]
    if var_speed.gpu_reason():
        assert gpu["skipped"].startswith("no CUDA device")
    else:
        assert len(gpu["rows"]) == 2
        for row in gpu["rows"]:
            # one read and one write of the tensor per call
            assert row["kernel_GBps"] == pytest.approx(2 * row["MB"] / row["kernel_ms"])
            assert row["kernel_over_copy"] == pytest.approx(row["kernel_ms"] / row["copy_ms"])
            assert row["cupy_ops_max_abs_diff"] < 1e-2
