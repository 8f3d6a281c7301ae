"""The benchmarks with the real varrt.Explainer on the colour classifier (no fakes)."""

import json

import numpy as np
import pytest
from varrt.bench import cli, gpg, grids


def test_gpg_input_x_gradient_points_at_coloured_cells(colour_setup, tmp_path):
    model, photos = colour_setup
    cells = gpg.load_cells(model, gpg.image_files(photos))
    arrangements = grids.distinct_class_arrangements([c.label for c in cells])
    result = gpg.run_gpg(model, cells, arrangements, ["input_x_gradient"], batch_size=8)
    (scores,) = result.scores
    labels = np.array([[cells[i].label for i in a] for a in arrangements]).ravel()
    # Red/green/blue: x * dlogit/dx is positive only where the class's own colour is (hand
    # reasoning on the model's weights); the black class has no positive evidence anywhere.
    np.testing.assert_allclose(scores.base[labels != 3], 1.0, atol=1e-6)
    np.testing.assert_allclose(scores.base[labels == 3], 0.0)


def test_cli_gpg_and_sanity_end_to_end(colour_setup, tmp_path, capsys):
    model, photos = colour_setup
    assert (
        cli.main(
            [
                "bench",
                "gpg",
                str(model),
                "--images",
                str(photos),
                "--methods",
                "gradient,gradcam",
                "--limit",
                "4",
                "--out",
                str(tmp_path / "gpg"),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "gpg" / "gpg.json").read_text())
    assert report["cells"] == 16 and set(report["methods"]) == {"gradient", "gradcam"}
    assert (
        cli.main(
            [
                "bench",
                "sanity",
                str(model),
                "--images",
                str(photos),
                "--methods",
                "gradient",
                "--out",
                str(tmp_path / "sanity"),
                "--quiet",
                "--no-plots",
                "--classes",
                "top3",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "sanity" / "sanity.json").read_text())
    assert report["depths"] == [0, 1, 2]
    assert report["similarity"]["gradient"]["base"]["ssim"][0] == pytest.approx(1.0)
    capsys.readouterr()
