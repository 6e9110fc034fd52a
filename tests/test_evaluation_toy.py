"""The toy metrics against closed forms: mode weights, Gaussian-kernel MMD², Fisher divergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_jax import mixtures
from ncsn_jax.evaluation import toy


def test_mode_weights_recover_the_true_weights_from_true_samples():
    mixture = mixtures.ncsn_toy_mixture()
    n = 20_000
    weights = toy.mode_weights(mixture.sample(jax.random.key(0), n), mixture)
    # Binomial standard error sqrt(0.8 * 0.2 / n) = 0.0028; 4 of them.
    np.testing.assert_allclose(weights, [0.8, 0.2], atol=4 * np.sqrt(0.16 / n))


def test_mode_weights_are_unbiased_for_overlapping_components():
    # Components one standard deviation apart: a nearest-mean assignment would be biased towards equal
    # shares; the mean responsibility is unbiased (E r_k = w_k).
    mixture = mixtures.GaussianMixture.create(
        weights=[0.6, 0.3, 0.1], means=[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], stds=[1.0, 1.0, 1.0]
    )
    n = 40_000
    samples = mixture.sample(jax.random.key(1), n)
    np.testing.assert_allclose(toy.mode_weights(samples, mixture), [0.6, 0.3, 0.1], atol=0.015)
    hard = np.bincount(np.asarray(mixture.nearest_component(samples)), minlength=3) / n
    assert abs(hard[0] - 0.6) > 0.1  # the estimator that the soft one replaces is visibly off


def _gaussian_mmd2(delta: np.ndarray, std: float, bandwidth: float) -> float:
    """MMD² of N(0, s²I) and N(Δ, s²I) in D dims, kernel exp(−‖a−b‖²/(2h²)):
    2 (h²/(h² + 2s²))^{D/2} (1 − exp(−‖Δ‖² / (2(h² + 2s²))))."""
    h2, v = bandwidth**2, 2 * std**2
    dim = len(delta)
    return 2 * (h2 / (h2 + v)) ** (dim / 2) * (1 - np.exp(-np.sum(delta**2) / (2 * (h2 + v))))


def test_mmd2_matches_the_closed_form_for_shifted_gaussians():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 2))
    y = rng.normal(size=(1000, 2)) + np.array([1.0, 0.0])
    expected = _gaussian_mmd2(np.array([1.0, 0.0]), 1.0, 1.0)  # 0.102
    # Standard deviation of the estimate over seeds at this size: 0.011.
    assert toy.mmd2(x, y, bandwidth=1.0) == pytest.approx(expected, abs=0.04)


def test_mmd2_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one():
    mixture = mixtures.ncsn_toy_mixture()
    a, b, c = (np.asarray(mixture.sample(jax.random.key(k), 1000)) for k in range(3))
    same = toy.mmd2(a, b)
    shifted = toy.mmd2(a, c + 1.0)
    assert abs(same) < 0.003  # over seeds: standard deviation 0.0005
    assert shifted > 10 * abs(same) and shifted > 0.02
    # Wrong mode weights (0.5 / 0.5) are detected too.
    balanced = mixtures.GaussianMixture.create([0.5, 0.5], mixture.means, mixture.stds)
    assert toy.mmd2(a, np.asarray(balanced.sample(jax.random.key(4), 1000))) > 0.02


def test_fisher_divergence_is_zero_for_the_analytic_score_and_half_squared_offset_for_a_shifted_one():
    mixture = mixtures.ncsn_toy_mixture()
    sigmas = np.geomspace(20.0, 1.0, 10)
    key = jax.random.key(0)
    exact = toy.fisher_divergence(mixture.score, sigmas, key, mixture, n=512)
    np.testing.assert_allclose(exact, 0.0, atol=1e-12)
    offset = jnp.array([0.3, -0.4])  # ½‖δ‖² = 0.125 at every level, whatever the points
    shifted = toy.fisher_divergence(lambda x, s: mixture.score(x, s) + offset, sigmas, key, mixture, n=512)
    np.testing.assert_allclose(shifted, 0.125, rtol=1e-5)
    # A score of the wrong mixture (equal weights) is off where both modes are in reach: the middle levels.
    balanced = mixtures.GaussianMixture.create([0.5, 0.5], mixture.means, mixture.stds)
    wrong = toy.fisher_divergence(balanced.score, sigmas, key, mixture, n=512)
    assert wrong[0] > 0 and np.max(wrong) > 1e-3


def test_toy_report_of_true_samples_and_the_analytic_score():
    mixture = mixtures.ncsn_toy_mixture()
    samples = mixture.sample(jax.random.key(7), 1000)
    report = toy.toy_report(
        samples, jax.random.key(8), score_fn=mixture.score, sigmas=[20.0, 1.0], n_fisher=256
    )
    np.testing.assert_allclose(report["mode_weights"], [0.8, 0.2], atol=0.04)
    assert abs(report["mmd2"]) < 0.003 and abs(report["mmd2_true_vs_true"]) < 0.003
    np.testing.assert_allclose(report["fisher_divergence"], 0.0, atol=1e-12)
    assert report["true_weights"] == pytest.approx([0.8, 0.2])
