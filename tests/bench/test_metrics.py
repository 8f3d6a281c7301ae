"""Pointing-game scores, bootstrap intervals, Spearman and SSIM against hand values and references."""

import numpy as np
import pytest
from varrt.bench import grids, metrics


def _masks(size=8):
    return grids.cell_masks((size, size))


def test_all_mass_in_own_cell_scores_one():
    masks = _masks()
    saliency = masks[2].astype(float) * 3.0
    assert metrics.positive_mass_share(saliency, masks[2]) == pytest.approx(1.0)
    assert metrics.positive_mass_share(saliency, masks[0]) == pytest.approx(0.0)


def test_uniform_map_scores_a_quarter():
    masks = _masks()
    for mask in masks:
        assert metrics.positive_mass_share(np.ones((8, 8)), mask) == pytest.approx(0.25)


def test_empty_and_all_negative_maps_score_zero():
    masks = _masks()
    assert metrics.positive_mass_share(np.zeros((8, 8)), masks[0]) == 0.0
    assert metrics.positive_mass_share(-np.ones((8, 8)), masks[0]) == 0.0


def test_partial_case_hand_computed():
    masks = _masks()
    saliency = np.zeros((8, 8))
    saliency[0, 0] = 3.0  # cell 0
    saliency[0, 7] = 1.0  # cell 1
    saliency[7, 7] = -5.0  # negative: ignored
    saliency[7, 0] = 4.0  # cell 2
    # positive mass 8, of which 3 in cell 0
    assert metrics.positive_mass_share(saliency, masks[0]) == pytest.approx(3 / 8)
    assert metrics.positive_mass_share(saliency, masks[2]) == pytest.approx(4 / 8)
    assert metrics.positive_mass_share(saliency, masks[3]) == pytest.approx(0.0)


def test_channel_sum_before_positive_part():
    # Channels that cancel give a pixel no positive mass.
    attributions = np.zeros((3, 8, 8))
    attributions[0, 0, 0], attributions[1, 0, 0] = 2.0, -2.0
    attributions[:, 0, 7] = 1.0
    saliency = metrics.channel_sum(attributions, has_channels=True)
    assert metrics.positive_mass_share(saliency, _masks()[1]) == pytest.approx(1.0)


def test_scores_are_batched_over_leading_axes():
    masks = _masks()
    saliency = np.stack([masks[0].astype(float), np.ones((8, 8)), np.zeros((8, 8))])
    np.testing.assert_allclose(metrics.positive_mass_share(saliency, masks[0]), [1.0, 0.25, 0.0])


def test_bootstrap_interval_contains_mean_and_is_deterministic():
    values = np.random.default_rng(3).uniform(size=50)
    first = metrics.bootstrap_mean_interval(values, seed=7)
    again = metrics.bootstrap_mean_interval(values, seed=7)
    other = metrics.bootstrap_mean_interval(values, seed=8)
    assert first == again
    assert first != other
    assert first.low <= first.mean <= first.high
    assert first.mean == pytest.approx(values.mean())
    assert first.n == 50
    # Roughly the normal-theory width: 2 * 1.96 * sd / sqrt(n).
    expected = 2 * 1.96 * values.std() / np.sqrt(values.size)
    assert first.high - first.low == pytest.approx(expected, rel=0.2)


def test_bootstrap_of_constant_values_is_a_point():
    interval = metrics.bootstrap_mean_interval(np.full(10, 0.4))
    assert interval.low == pytest.approx(0.4) and interval.high == pytest.approx(0.4)


def test_average_ranks_share_ties():
    np.testing.assert_allclose(metrics.average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])


def test_spearman_hand_values():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1,2,3) vs (2,1,3): d = (1,1,0) -> 1 - 6*2/(3*8) = 0.5
    assert metrics.spearman([1, 2, 3], [2, 1, 3]) == pytest.approx(0.5)
    assert np.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(12, 12)).astype(float)
    b = a + rng.integers(0, 3, size=(12, 12))
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)


def test_ssim_identical_maps_is_one_and_matches_skimage():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.uniform(size=(32, 40))
    b = np.clip(a + rng.normal(scale=0.2, size=a.shape), 0, 1)
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    reference = skimage_metrics.structural_similarity(a, b, data_range=1.0, win_size=7, gaussian_weights=False)
    assert metrics.ssim(a, b) == pytest.approx(reference, abs=1e-10)


def test_ssim_of_constant_maps_hand_value():
    # Constant maps: variances are zero, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert metrics.ssim(np.full((9, 9), 0.2), np.full((9, 9), 0.6)) == pytest.approx(expected)


def test_unit_scale_and_auc():
    np.testing.assert_allclose(metrics.unit_scale(np.array([0.0, 2.0, 4.0])), [0, 0.5, 1])
    assert not metrics.unit_scale(np.zeros(3)).any()
    assert metrics.normalised_auc([0, 1]) == pytest.approx(0.5)
    assert metrics.normalised_auc([1, 1, 1]) == pytest.approx(1.0)
