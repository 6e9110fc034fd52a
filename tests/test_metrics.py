"""Fréchet distance, Inception score, KID and the streaming feature statistics against closed forms and
second implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from ncsn_jax.evaluation import metrics


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def symmetric_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_by_eigh(mu1, cov1, mu2, cov2) -> float:
    """Second implementation: Tr (Σ₁Σ₂)^{1/2} = Tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}, symmetric roots by eigh."""
    root1 = symmetric_sqrt(cov1)
    cross = symmetric_sqrt(root1 @ cov2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(cross))


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    var1, var2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_full_covariance_closed_forms():
    rng = np.random.default_rng(1)
    d = 32
    mu1, mu2, cov = rng.normal(size=d), rng.normal(size=d), random_spd(rng, d)
    # Σ₂ = cΣ₁ commutes with Σ₁: d² = ‖Δμ‖² + (1 − √c)² Tr Σ₁.
    c = 2.5
    expected = np.sum((mu1 - mu2) ** 2) + (1 - np.sqrt(c)) ** 2 * np.trace(cov)
    np.testing.assert_allclose(metrics.frechet_distance(mu1, cov, mu2, c * cov), expected, rtol=1e-9)
    # Two unrelated covariances: the symmetric-root formula.
    cov2 = random_spd(rng, d)
    np.testing.assert_allclose(
        metrics.frechet_distance(mu1, cov, mu2, cov2), frechet_by_eigh(mu1, cov, mu2, cov2), rtol=1e-9
    )


def test_frechet_rotation_invariant_and_zero_for_identical_statistics():
    rng = np.random.default_rng(2)
    d = 16
    mu1, mu2, cov1, cov2 = rng.normal(size=d), rng.normal(size=d), random_spd(rng, d), random_spd(rng, d)
    q = random_rotation(rng, d)
    rotated = metrics.frechet_distance(q @ mu1, q @ cov1 @ q.T, q @ mu2, q @ cov2 @ q.T)
    np.testing.assert_allclose(rotated, metrics.frechet_distance(mu1, cov1, mu2, cov2), rtol=1e-9)
    assert abs(metrics.frechet_distance(mu1, cov1, mu1, cov1)) < 1e-10 * np.trace(cov1)


def test_frechet_singular_product_and_imaginary_component():
    rng = np.random.default_rng(3)
    # Covariance of 5 points in 20 dimensions: rank 4, so Σ₁Σ₂ is singular; identical statistics are still ~0.
    feats = rng.normal(size=(5, 20))
    mu, cov = feats.mean(0), np.cov(feats, rowvar=False)
    distance = metrics.frechet_distance(mu, cov, mu, cov)
    assert np.isfinite(distance) and abs(distance) < 1e-3 * np.trace(cov)
    # A covariance that is not positive semi-definite gives an imaginary square root: an error.
    with pytest.raises(ValueError, match="imaginary component"):
        metrics.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="one d"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_inception_score_uniform_and_confident_one_hots():
    mean, std = metrics.inception_score(np.zeros((100, 1008)), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    k, n = 10, 1000
    logits = np.full((n, 1008), -50.0)
    logits[np.arange(n), np.arange(n) % k] = 50.0  # every split holds each of k classes equally often
    mean, std = metrics.inception_score(logits, splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_equals_scipy_entropy_formulation():
    rng = np.random.default_rng(4)
    logits = 3 * rng.normal(size=(103, 12))  # 103 rows in 4 splits: uneven boundaries
    splits = 4
    p = special.softmax(logits, axis=1)
    scores = []
    for i in range(splits):
        part = p[i * 103 // splits : (i + 1) * 103 // splits]
        marginal = part.mean(axis=0)
        scores.append(np.exp(np.mean([stats.entropy(row, marginal) for row in part])))
    mean, std = metrics.inception_score(logits, splits=splits)
    np.testing.assert_allclose([mean, std], [np.mean(scores), np.std(scores)], rtol=1e-10)


def test_mmd2_unbiased_equals_double_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.3, 1.0, size=(7, 3))
    k = lambda a, b: (a @ b / 3 + 1) ** 3
    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    np.testing.assert_allclose(metrics.mmd2_unbiased(x, y), xx + yy - 2 * xy, rtol=1e-12)


def expected_cubic_kernel(a: np.ndarray, b: np.ndarray) -> float:
    """E (xᵀy/d + 1)³ for independent x ~ N(a, I), y ~ N(b, I) in d dimensions (closed form).

    Given y, v = xᵀy/d + 1 ~ N(aᵀy/d + 1, |y|²/d²) and E v³ = E[v]³ + 3 E[v] Var v; averaging over y gives
    c³ + 3c(|a|² + |b|²)/d² + 3c/d + 6aᵀb/d³ with c = 1 + aᵀb/d.
    """
    d = a.shape[0]
    c = 1 + a @ b / d
    return float(c**3 + 3 * c * (a @ a + b @ b) / d**2 + 3 * c / d + 6 * (a @ b) / d**3)


def test_kid_near_zero_for_one_distribution_and_equal_to_closed_form_for_shifted():
    rng = np.random.default_rng(6)
    d = 32
    a, b = rng.normal(size=(1500, d)), rng.normal(size=(1200, d))
    shifted = rng.normal(0.3, 1.0, size=(1200, d))
    same_mean, same_std = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=500, seed=0)
    shift_mean, shift_std = metrics.kernel_inception_distance(
        a, shifted, num_subsets=20, subset_size=500, seed=0
    )
    zero, delta = np.zeros(d), np.full(d, 0.3)
    population = (
        expected_cubic_kernel(zero, zero)
        + expected_cubic_kernel(delta, delta)
        - 2 * expected_cubic_kernel(zero, delta)
    )
    # The estimator is unbiased: the same-distribution KID scatters around 0, the shifted one around the
    # population MMD² (0.306), each by about its subset standard deviation.
    assert abs(same_mean) < 2 * same_std and same_std < 0.01
    assert abs(shift_mean - population) < 3 * shift_std and shift_mean > 10 * shift_std
    # subset_size larger than a sample is clipped; one subset of everything is the full-sample estimate.
    full, spread = metrics.kernel_inception_distance(a[:300], shifted[:300], num_subsets=1, subset_size=10**6)
    assert spread == 0.0
    np.testing.assert_allclose(full, metrics.mmd2_unbiased(a[:300], shifted[:300]), rtol=1e-12)


def test_feature_statistics_equals_numpy_on_uneven_batches():
    rng = np.random.default_rng(7)
    # A large offset against a small spread: the case where Σxxᵀ − nμμᵀ would cancel catastrophically.
    data = (1e4 + rng.normal(size=(203, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
    acc = metrics.FeatureStatistics(dim=6)
    start = 0
    for size in (1, 17, 0, 64, 2, 119):
        acc.update(data[start : start + size])
        start += size
    assert start == len(data) and acc.count == len(data)
    reference = data.astype(np.float64)
    np.testing.assert_allclose(acc.mean, reference.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(acc.covariance, np.cov(reference, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros((3, 5)))


def test_feature_statistics_reservoir_is_batching_independent_and_uniform():
    rng = np.random.default_rng(8)
    data = rng.normal(size=(40, 3))

    def kept(batch_sizes, seed):
        acc = metrics.FeatureStatistics(dim=3, keep=8, seed=seed)
        start = 0
        for size in batch_sizes:
            acc.update(data[start : start + size])
            start += size
        return acc.kept

    whole = kept([40], seed=1)
    np.testing.assert_array_equal(kept([3, 11, 1, 25], seed=1), whole)
    assert whole.shape == (8, 3)
    # Every row ends up in the subset with probability keep/n = 0.2 (algorithm R), early and late rows alike.
    hits = np.zeros(40)
    for seed in range(400):
        rows = kept([40], seed)
        hits += np.isin(data[:, 0].astype(np.float32), rows[:, 0])
    np.testing.assert_allclose(hits / 400, 0.2, atol=0.08)


def test_feature_statistics_save_load_resume_is_bit_identical(tmp_path):
    rng = np.random.default_rng(9)
    data = rng.normal(size=(90, 5))
    full = metrics.FeatureStatistics(dim=5, keep=10, seed=3, metadata={"dataset": "mock", "image_size": 32})
    full.update(data[:50])
    path = str(tmp_path / "stats.npz")
    full.save(path)
    full.update(data[50:])

    resumed = metrics.FeatureStatistics.load(path)
    assert resumed.metadata == {"dataset": "mock", "image_size": 32} and resumed.count == 50
    resumed.update(data[50:])
    np.testing.assert_array_equal(resumed.mean, full.mean)
    np.testing.assert_array_equal(resumed.covariance, full.covariance)
    np.testing.assert_array_equal(resumed.kept, full.kept)

    np.savez(tmp_path / "other.npz", mean=np.zeros(5))
    with pytest.raises(ValueError, match="not a feature statistics file"):
        metrics.FeatureStatistics.load(str(tmp_path / "other.npz"))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        metrics.FeatureStatistics.load(str(tmp_path / "missing.npz"))
