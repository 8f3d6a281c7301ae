"""Grid pointing game: image selection, grid construction, scoring, ImageNet-val listing."""

import numpy as np
import pytest
from bench_models import CellOracleExplainer
from varrt.bench import gpg, grids
from varrt.core.errors import UsageError, VarrtError


def _cells(colour_setup):
    model, photos = colour_setup
    return model, gpg.load_cells(model, gpg.image_files(photos), threshold=0.5)


def test_load_cells_labels_by_confident_prediction(colour_setup):
    _, cells = _cells(colour_setup)
    by_name = {cell.path.rsplit("/", 1)[-1]: cell for cell in cells}
    assert {name: cell.label for name, cell in by_name.items()} == {
        "black.png": 3,
        "blue.png": 2,
        "green.png": 1,
        "red.png": 0,
    }
    assert all(cell.confidence > 0.9 and cell.pixels.shape == (8, 8, 3) for cell in cells)


def test_threshold_and_true_labels_filter(colour_setup):
    model, photos = colour_setup
    files = gpg.image_files(photos)  # black, blue, green, red
    assert gpg.load_cells(model, files, threshold=1.01) == []
    kept = gpg.load_cells(model, files, labels=[3, 2, 0, 0], threshold=0.0)
    assert [c.label for c in kept] == [3, 2, 0]  # green mislabelled as red: dropped


def test_build_grids_places_each_photo_in_its_cell(colour_setup):
    model, cells = _cells(colour_setup)
    from varrt import images

    prep = images.preprocessing_for(model)
    arrangements = grids.distinct_class_arrangements([c.label for c in cells])
    inputs, class_ids, pixels = gpg.build_grids(cells, arrangements, prep)
    assert inputs.shape == (24, 3, 16, 16) and inputs.dtype == np.float32
    assert class_ids.shape == (24, 4) and class_ids.dtype == np.int64
    for g, arrangement in enumerate(arrangements):
        for k, (rows, cols) in enumerate(grids.cell_slices((16, 16))):
            np.testing.assert_array_equal(pixels[g, rows, cols], cells[arrangement[k]].pixels)
            assert class_ids[g, k] == cells[arrangement[k]].label
    # preset 'none': inputs are pixels / 255
    np.testing.assert_allclose(inputs[0].transpose(1, 2, 0), pixels[0] / 255.0, atol=1e-6)


def test_oracle_maps_score_one_and_uniform_maps_a_quarter(colour_setup):
    model, cells = _cells(colour_setup)
    arrangements = grids.distinct_class_arrangements([c.label for c in cells])
    methods = ["gradient", "gradcam"]
    result = gpg.run_gpg(model, cells, arrangements, methods, explainer_factory=CellOracleExplainer)
    for scores in result.scores:
        assert scores.base.shape == (96,)
        np.testing.assert_allclose(scores.base, 1.0)
        np.testing.assert_allclose(scores.var, 1.0)

    def uniform(*args, **kwargs):
        return CellOracleExplainer(*args, uniform=True, **kwargs)

    result = gpg.run_gpg(model, cells, arrangements, methods, explainer_factory=uniform)
    for scores in result.scores:
        np.testing.assert_allclose(scores.base, 0.25)
        # Equal attributions for all classes: VAR's distribution is flat, so it keeps nothing.
        np.testing.assert_allclose(scores.var, 0.0)
    report = result.to_json()
    assert report["grids"] == 24 and report["cells"] == 96
    summary = report["methods"]["gradient"]
    assert summary["base"]["mean"] == pytest.approx(0.25) and summary["var_minus_base"]["mean"] == pytest.approx(-0.25)


def test_explainer_gets_the_var_settings(colour_setup):
    model, cells = _cells(colour_setup)
    CellOracleExplainer.calls.clear()
    gpg.run_gpg(
        model,
        cells,
        [(0, 1, 2, 3)],
        ["gradient"],
        temperature=3.0,
        tau=0.2,
        explainer_factory=CellOracleExplainer,
    )
    ((method, options),) = CellOracleExplainer.calls
    assert method == "gradient" and options["temperature"] == 3.0 and options["tau"] == 0.2 and options["var"]


def test_too_few_classes_is_a_clear_error(colour_setup):
    model, cells = _cells(colour_setup)
    with pytest.raises(VarrtError, match="4 distinct classes"):
        gpg.run_gpg(model, cells[:3], [], ["gradient"], explainer_factory=CellOracleExplainer)


def test_pointing_scores_channel_sum_then_positive_part():
    attributions = np.zeros((1, 4, 2, 4, 4))
    attributions[0, 0, 0, :2, :2] = 1.0  # class 0: all in cell 0
    attributions[0, 1, 0, :2, :2] = 1.0  # class 1: 1 in cell 0 (4 px)...
    attributions[0, 1, 1, :2, 2:] = 3.0  # ... 3 in cell 1 (4 px)
    attributions[0, 2, 0, 2:, :2] = 2.0  # class 2: positive channel...
    attributions[0, 2, 1, 2:, :2] = -2.0  # ...cancelled by the other: no mass at all
    scores = gpg.pointing_scores(attributions, (4, 4), has_channels=True)
    np.testing.assert_allclose(scores, [[1.0, 0.75, 0.0, 0.0]])


def test_imagenet_val_listing(tmp_path):
    from PIL import Image

    (tmp_path / "LOC_synset_mapping.txt").write_text("n001 tench, Tinca tinca\nn002 goldfish\nn003 shark\n")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_02,n003 1 2 3 4 n003 5 6 7 8\n"
        "ILSVRC2012_val_01,n002 1 2 3 4\n"
        "ILSVRC2012_val_03,n001 1 1 1 1\n"
    )
    folder = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    folder.mkdir(parents=True)
    for name in ("ILSVRC2012_val_01", "ILSVRC2012_val_02"):
        Image.new("RGB", (4, 4)).save(folder / f"{name}.JPEG")
    paths, labels = gpg.imagenet_val_listing(tmp_path)
    assert [p.name for p in paths] == ["ILSVRC2012_val_01.JPEG", "ILSVRC2012_val_02.JPEG"]
    assert labels == [1, 2]
    with pytest.raises(UsageError):
        gpg.imagenet_val_listing(tmp_path / "missing")
