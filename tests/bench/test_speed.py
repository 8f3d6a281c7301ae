"""The speed bench: its timing loops, its reports (with the real Explainer on a tiny model), which
backends it runs, and the side-by-side run against PyTorch + Captum."""

import json
import statistics

import pytest
import testbed
from varrt.bench import speed
from varrt.core.errors import UsageError


def test_report_with_the_real_explainer(tiny_model_path):
    report = speed.run_speed(tiny_model_path, ["gradient", "gradcam"], ["onnxruntime-cpu"], [2, 3], repeats=3,
                             throughput_repeats=2, torch_reference=False)
    assert json.loads(json.dumps(report)) == report  # plain JSON types only
    assert report["settings"]["k"] == 5 and report["settings"]["batch_sizes"] == [2, 3]
    assert report["settings"]["input_shape"] == [3, 16, 16]
    assert [(row["flow"], row["method"], row["backend_name"]) for row in report["results"]] == [
        ("onnxruntime-cpu", "gradient", "onnxruntime-cpu"),
        ("onnxruntime-cpu", "gradcam", "onnxruntime-cpu"),
    ]
    for row in report["results"]:
        latency = row["latency_ms"]
        assert latency["samples"] == 3 and latency["min"] <= latency["median"] <= latency["p90"]
        # Throughput is images per second of the median call, from the timings the report keeps.
        for batch in ("2", "3"):
            seconds = row["throughput_seconds"][batch]
            assert len(seconds) == 2
            assert row["throughput"][batch] == pytest.approx(int(batch) / statistics.median(seconds))
    assert "ratios" not in report and not any(row["flow"] == speed.REFERENCE_FLOW for row in report["results"])
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


def test_available_backends_are_what_can_run_here():
    usable, skipped = speed.available_backends()
    assert usable == testbed.runnable_backends()  # decided independently of varrt
    assert set(skipped) == {"tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"} - set(usable)
    import importlib.util

    import onnxruntime

    # Each reason names the first thing missing.
    if importlib.util.find_spec("tensorrt") is None:
        assert skipped["tensorrt"] == "TensorRT not installed"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "CUDAExecutionProvider" in skipped["onnxruntime-cuda"]
    for name, reason in skipped.items():
        assert reason.strip() and "\n" not in reason, name


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
    # The speedup is the ratio of the two reported medians; with one call per round, the overall
    # ratio (r1 + r2) / (v1 + v2) lies between the two rounds' ratios r1 / v1 and r2 / v2.
    assert result["speedup"] == pytest.approx(result["latency_ms"]["median"] / result["varrt"]["latency_ms"]["median"])
    assert len(result["speedup_per_round"]) == 2
    assert min(result["speedup_per_round"]) * (1 - 1e-9) <= result["speedup"]
    assert result["speedup"] <= max(result["speedup_per_round"]) * (1 + 1e-9)
    assert result["varrt"]["latency_ms"]["samples"] == result["latency_ms"]["samples"] == 2
    assert "speedup per round" in speed_reference.format_table(result)


def test_side_by_side_lines_give_each_round_and_the_floor():
    report = {"results": [
        {"flow": "onnxruntime-cpu", "method": "integrated_gradients"},
        {"flow": speed.REFERENCE_FLOW, "method": "integrated_gradients", "speedup_per_round": [2.0, 3.5],
         "floor": {"flow": "floor: 33 x gradient graph"}, "varrt_over_floor_per_round": [1.25, 1.0]},
        {"flow": speed.REFERENCE_FLOW, "method": "gradient"},  # timed alone: no line
    ]}
    assert speed.side_by_side(report) == [
        "integrated_gradients: torch+captum / varrt per round (alternating): 2.00x, 3.50x; "
        "varrt / floor: 33 x gradient graph per round: 1.25x, 1.00x"
    ]
