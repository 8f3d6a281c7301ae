"""The VAR speed benchmark runs end to end on tiny cases and writes the JSON it documents."""

from __future__ import annotations

import json

from varrt.bench import var_speed


def test_benchmark_writes_json(tmp_path, monkeypatch):
    monkeypatch.setattr(var_speed, "CPU_CASES", [(2, 3, (4, 4)), (1, 5, (3, 8, 8))])
    monkeypatch.setattr(var_speed, "GPU_CASES", [(2, 5, (3, 8, 8), "float32"), (2, 5, (3, 7, 7), "float16")])
    out = tmp_path / "speed.json"
    assert var_speed.main(["--repeat", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(row["N"], row["K"]) for row in result["cpu"]] == [(2, 3), (1, 5)]
    for row in result["cpu"]:
        assert row["numpy_ms"] > 0 and row["ort_ms"] > 0 and row["max_abs_diff"] < 1e-5
    gpu = result["gpu"]
    if var_speed.gpu_reason():
        assert gpu["skipped"].startswith("no CUDA device")
    else:
        assert len(gpu["rows"]) == 2
        assert all(row["kernel_GBps"] > 0 and row["cupy_ops_max_abs_diff"] < 1e-2 for row in gpu["rows"])
