"""The speed bench writes well-formed reports (fake and real explainers, few repetitions)."""

import json

import pytest
from bench_models import CellOracleExplainer
from varrt.bench import speed
from varrt.core.errors import UsageError


def _check_report(report, methods, batch_sizes):
    text = json.dumps(report)  # plain JSON types only
    assert json.loads(text) == report
    assert report["settings"]["k"] == 5 and report["settings"]["batch_sizes"] == batch_sizes
    flows = {row["flow"] for row in report["results"]}
    assert {row["method"] for row in report["results"]} == set(methods)
    assert len(report["results"]) == len(flows) * len(methods)
    for row in report["results"]:
        assert row["latency_ms"]["median"] > 0 and row["latency_ms"]["samples"] >= 1
        assert row["latency_ms"]["min"] <= row["latency_ms"]["median"] <= row["latency_ms"]["p90"]
        assert set(row["throughput"]) == {str(b) for b in batch_sizes}
        assert all(rate > 0 for rate in row["throughput"].values())


def test_report_with_a_fake_explainer(tiny_model_path):
    report = speed.run_speed(
        tiny_model_path,
        ["gradient", "gradcam"],
        ["onnxruntime-cpu"],
        [4],
        repeats=3,
        throughput_repeats=2,
        torch_reference=False,
        explainer_factory=CellOracleExplainer,
    )
    _check_report(report, ["gradient", "gradcam"], [4])
    headers, rows = speed.table(report)
    assert len(rows) == 2 and all(len(row) == len(headers) for row in rows)


def test_reference_ratios():
    rows = [
        {"flow": "onnxruntime-cpu", "method": "gradient", "latency_ms": {"median": 10.0}, "throughput": {"32": 50.0}},
        {"flow": "torch+captum", "method": "gradient", "latency_ms": {"median": 30.0}, "throughput": {"32": 25.0}},
    ]
    (ratio,) = speed.reference_ratios(rows)
    assert ratio["latency_speedup"] == pytest.approx(3.0) and ratio["throughput_speedup_32"] == pytest.approx(2.0)


def test_bad_settings_are_usage_errors(tiny_model_path):
    with pytest.raises(UsageError):
        speed.run_speed(tiny_model_path, ["gradient"], batch_sizes=[0], torch_reference=False)
    with pytest.raises(UsageError):
        speed.run_speed(tiny_model_path, ["gradient"], repeats=0, torch_reference=False)


def test_available_backends_include_the_cpu():
    usable, skipped = speed.available_backends()
    assert "onnxruntime-cpu" in usable
    assert all(isinstance(reason, str) and reason for reason in skipped.values())


def test_side_by_side_flows_alternate_in_rounds():
    order: list[str] = []
    flows = {name: (lambda name=name: order.append(name)) for name in ("reference", "varrt", "forward")}
    seconds = speed.timed_in_rounds(flows, repeats=7, warmup=1, rounds=3, untimed=1)
    assert {name: len(s) for name, s in seconds.items()} == {"reference": 7, "varrt": 7, "forward": 7}
    timed = order[3:]  # after one warm-up call each; each block has one untimed call first
    blocks = ["reference"] * 3 + ["varrt"] * 3 + ["forward"] * 3  # 7 repeats in rounds of 2, 3, 2
    middle = ["reference"] * 4 + ["varrt"] * 4 + ["forward"] * 4
    assert timed == blocks + middle + blocks
    assert speed.split_evenly(list(range(5)), 9) == [[0], [1], [2], [3], [4]]


def test_side_by_side_against_torch_runs():
    pytest.importorskip("captum")
    pytest.importorskip("efficientnet_lite_pytorch")
    from varrt.bench import speed_reference

    result = speed_reference.run(repeats=2, warmup=1, compare=True, rounds=2)
    assert len(result["speedup_per_round"]) == 2 and result["speedup"] > 0
    assert result["varrt"]["latency_ms"]["samples"] == result["latency_ms"]["samples"] == 2
    assert "speedup per round" in speed_reference.format_table(result)
