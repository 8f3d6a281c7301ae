"""`varrt bench scale` on a tiny input: the real `varrt explain` processes on the colour classifier
and four solid-colour photos repeated to 6 images, single process only (a Ray cluster's start-up
alone takes longer than this test should; tests/runtime/test_ray.py covers --ray)."""

import json

from varrt.bench import cli, scale


def test_scale_command_times_the_single_process_cli(colour_setup, tmp_path, capsys):
    model, photos = colour_setup
    out = tmp_path / "scale"
    argv = ["bench", "scale", str(model), "--images", str(photos), "--count", "6", "--rounds", "1",
            "--method", "gradient", "--classes", "top2", "--threads", "1", "--no-ray", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "scale: 6 images, gradient top2, --save summary, 1 threads in every flow" in printed
    assert "skipped Ray: not asked (--no-ray)" in printed
    report = json.loads((out / "scale.json").read_text())
    (flow,) = report["flows"]
    assert flow["flow"] == scale.SINGLE and flow["ratio"] == 1.0 and len(flow["seconds"]) == 1
    assert abs(flow["images_per_s"] - 6 / flow["seconds"][0]) < 1e-9
    row = next(line for line in printed.splitlines() if line.startswith(scale.SINGLE))
    assert f"{flow['images_per_s']:.2f}" in row and row.split()[-1] == "yes"


def test_photos_are_repeated_in_order_to_the_count(tmp_path):
    photos = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    assert scale.images_to(photos, 7) == photos * 2 + photos[:1]


def test_ratios_are_the_single_processs_best_time_over_each_flows():
    report = scale._report({scale.SINGLE: [4.0, 5.0], "ray, 2 actors": [6.0, 5.0]},
                           {scale.SINGLE: (1, 2), "ray, 2 actors": (2, 1)}, {"ray, 2 actors": True}, 200, 2, {},
                           None, 3.0)
    single, ray = report["flows"]
    assert single["images_per_s"] == 50.0 and ray["images_per_s"] == 40.0 and ray["ratio"] == 0.8
    assert scale.table(report)[1][1] == ["ray, 2 actors", "2 x 1", "5.0", "40.00", "0.80", "yes"]
