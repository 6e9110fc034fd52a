"""Noise schedules and NCSNv2's techniques against published numbers and brute-force computations."""

import numpy as np
import pytest

from ncsn_jax import noise

CIFAR10 = dict(sigma_max=50.0, sigma_min=0.01, dim=32 * 32 * 3)
CELEBA64 = dict(sigma_max=90.0, sigma_min=0.01, dim=64 * 64 * 3)


def unsimplified_step_lr_criterion(eps, gamma, sigma_min, n_steps):
    """NCSNv2 Technique 4's expression exactly as printed in the paper (float64)."""
    s2 = sigma_min**2
    shrink = (1.0 - eps / s2) ** (2 * n_steps)
    term = 2.0 * eps / (s2 - s2 * (1.0 - eps / s2) ** 2)
    return shrink * (gamma**2 - term) + term


# ----------------------------------------------------------------------------------------------------
# geometric_sigmas
# ----------------------------------------------------------------------------------------------------


def test_geometric_sigmas_are_exactly_geometric_with_exact_endpoints():
    sigmas = noise.geometric_sigmas(50.0, 0.01, 232)
    assert sigmas.shape == (232,) and sigmas.dtype == np.float32
    assert sigmas[0] == np.float32(50.0) and sigmas[-1] == np.float32(0.01)
    assert np.all(np.diff(sigmas) < 0)
    ratios = sigmas[:-1].astype(np.float64) / sigmas[1:].astype(np.float64)
    np.testing.assert_allclose(ratios, (50.0 / 0.01) ** (1.0 / 231.0), rtol=3e-7)  # float32 rounding only
    power_form = 50.0 * (0.01 / 50.0) ** (np.arange(232) / 231.0)
    np.testing.assert_allclose(sigmas, power_form, rtol=2e-7)


def test_geometric_sigmas_single_scale_and_invalid_arguments():
    np.testing.assert_array_equal(noise.geometric_sigmas(0.5, 0.5, 1), [0.5])
    with pytest.raises(ValueError):
        noise.geometric_sigmas(1.0, 0.1, 1)
    with pytest.raises(ValueError):
        noise.geometric_sigmas(0.1, 1.0, 10)


# ----------------------------------------------------------------------------------------------------
# Technique 1: max_pairwise_distance
# ----------------------------------------------------------------------------------------------------


def brute_force_max_distance(points):
    points = np.asarray(points, np.float64).reshape(len(points), -1)
    return np.sqrt(np.max(np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1)))


def test_max_pairwise_distance_matches_brute_force_across_chunks():
    x = np.random.default_rng(0).normal(size=(61, 5)).astype(np.float32)
    x[17] += 10.0  # a far point, whose partner lies in another chunk
    for chunk_size in (1, 7, 64):
        assert noise.max_pairwise_distance(x, chunk_size=chunk_size) == pytest.approx(
            brute_force_max_distance(x), rel=1e-12
        )


def test_max_pairwise_distance_subsample_is_brute_force_on_the_documented_subsample():
    images = np.random.default_rng(1).uniform(size=(300, 4, 4, 3)).astype(np.float32)
    keep = np.random.default_rng(7).choice(300, size=50, replace=False)
    value = noise.max_pairwise_distance(images, max_points=50, seed=7, chunk_size=16)
    assert value == pytest.approx(brute_force_max_distance(images[keep]), rel=1e-12)
    assert value <= brute_force_max_distance(images) + 1e-9
    assert noise.max_pairwise_distance(images, max_points=50, seed=7) == value
    assert noise.max_pairwise_distance(images, max_points=50, seed=8) != value


# ----------------------------------------------------------------------------------------------------
# Technique 2: overlap and num_scales_for_overlap
# ----------------------------------------------------------------------------------------------------


def test_overlap_limits():
    # γ = 1: the ±3σ interval of a standard normal, whatever D.
    for dim in (2, 3072):
        assert noise.overlap(1.0, dim) == pytest.approx(0.9973002039367398, abs=1e-12)
    assert noise.overlap(2.0, 3072) < 1e-100  # levels a factor 2 apart in 3072-D do not overlap


def test_published_cifar10_schedule_has_overlap_0_567():
    gamma = (CIFAR10["sigma_max"] / CIFAR10["sigma_min"]) ** (1.0 / (232 - 1))
    assert noise.overlap(gamma, CIFAR10["dim"]) == pytest.approx(0.567, abs=5e-4)


@pytest.mark.parametrize("data, nearest", [(CIFAR10, 219), (CELEBA64, 472)])
def test_num_scales_for_overlap_reference_numbers(data, nearest):
    assert noise.num_scales_for_overlap(data["sigma_max"], data["sigma_min"], data["dim"]) == nearest
    at_least = noise.num_scales_for_overlap(
        data["sigma_max"], data["sigma_min"], data["dim"], criterion="at_least"
    )
    assert at_least == nearest + 1

    def overlap_at(num_scales):
        return noise.overlap((data["sigma_max"] / data["sigma_min"]) ** (1.0 / (num_scales - 1)), data["dim"])

    assert overlap_at(at_least - 1) < 0.5 <= overlap_at(at_least)
    assert abs(overlap_at(nearest) - 0.5) < abs(overlap_at(nearest + 1) - 0.5)


def test_num_scales_for_overlap_rejects_unreachable_target():
    with pytest.raises(ValueError):
        noise.num_scales_for_overlap(50.0, 0.01, 3072, target=0.999)


# ----------------------------------------------------------------------------------------------------
# Technique 4: langevin_step_lr
# ----------------------------------------------------------------------------------------------------


def test_step_lr_criterion_equals_the_printed_expression():
    eps = np.geomspace(1e-9, 9e-5, 50)
    np.testing.assert_allclose(
        noise.step_lr_criterion(eps, 1.04, 0.01, 5),
        unsimplified_step_lr_criterion(eps, 1.04, 0.01, 5),
        rtol=1e-7,
    )


def test_langevin_step_lr_cifar10():
    sigmas = noise.geometric_sigmas(CIFAR10["sigma_max"], CIFAR10["sigma_min"], 232)
    reference = noise.langevin_step_lr(sigmas, CIFAR10["dim"], 5, convention="reference")
    ours = noise.langevin_step_lr(sigmas, CIFAR10["dim"], 5)
    assert round(reference, 8) == 6.18e-6  # published config: 6.2e-6
    assert ours == pytest.approx(2.0 * reference, rel=1e-12)
    assert round(ours, 7) == 1.24e-5


def test_langevin_step_lr_celeba_uses_the_published_500_levels():
    sigmas_500 = noise.geometric_sigmas(CELEBA64["sigma_max"], CELEBA64["sigma_min"], 500)
    assert round(noise.langevin_step_lr(sigmas_500, CELEBA64["dim"], 5, convention="reference"), 8) == 3.34e-6
    # the overlap criterion's 472 levels would give a different step size: 3.34e-6 belongs to L = 500
    sigmas_472 = noise.geometric_sigmas(CELEBA64["sigma_max"], CELEBA64["sigma_min"], 472)
    assert round(noise.langevin_step_lr(sigmas_472, CELEBA64["dim"], 5, convention="reference"), 8) == 3.52e-6


@pytest.mark.parametrize("num_scales, n_steps_each", [(232, 5), (10, 100), (50, 1)])
def test_langevin_step_lr_is_a_local_minimum_above_one(num_scales, n_steps_each):
    sigmas = noise.geometric_sigmas(50.0, 0.01, num_scales)
    eps = noise.langevin_step_lr(sigmas, 3072, n_steps_each, convention="reference")
    gamma = float(sigmas[0]) / float(sigmas[1])

    def criterion(e):
        return unsimplified_step_lr_criterion(e, gamma, 0.01, n_steps_each)

    assert criterion(eps) > 1.0  # the minimum lies above one, so "closest to one" is the minimiser
    assert criterion(eps * (1 + 1e-3)) >= criterion(eps)
    assert criterion(eps * (1 - 1e-3)) >= criterion(eps)
    grid = np.geomspace(1e-8 * 0.01**2, 0.999 * 0.01**2, 20001)
    assert criterion(eps) <= np.min(criterion(grid)) + 1e-12  # and the global one


def test_langevin_step_lr_rejects_non_geometric_schedules():
    with pytest.raises(ValueError, match="geometric"):
        noise.langevin_step_lr(np.linspace(1.0, 0.1, 10), 2, 5)
