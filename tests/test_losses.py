"""Score-matching objectives checked against closed forms.

Monte-Carlo checks use bounds computed from known variances (five standard errors); keys are fixed, so the tests
are deterministic. Variance of a quadratic form vᵀMv (M symmetric, E[vvᵀ] = I) per projection:
Gaussian 2‖M‖_F², Rademacher 2(‖M‖_F² − Σᵢ Mᵢᵢ²), uniform on the √D-sphere 2D/(D+2)·(‖M‖_F² − tr(M)²/D);
all three are ≤ 2‖M‖_F².
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_jax import losses
from tests.helpers import REPO

PROJECTIONS = ("rademacher", "gaussian", "sphere")
N_STANDARD_ERRORS = 5.0


# ----------------------------------------------------------------------------------------------------------------
# Closed-form helpers (independent of the code under test)
# ----------------------------------------------------------------------------------------------------------------


def linear_score(A, b):
    """s(x) = A x + b on the flattened data dims, for x of any shape (B, *dims)."""

    def score_fn(x):
        flat = x.reshape(x.shape[0], -1)
        return (flat @ A.T + b).reshape(x.shape)

    return score_fn


def quadratic_form_variance(M: np.ndarray, projection: str) -> np.ndarray:
    """Var(vᵀMv) for one projection v; M of shape (..., D, D), any (not necessarily symmetric) matrix."""
    M = 0.5 * (M + np.swapaxes(M, -1, -2))
    dim = M.shape[-1]
    frobenius2 = np.sum(M**2, axis=(-2, -1))
    if projection == "gaussian":
        return 2.0 * frobenius2
    if projection == "rademacher":
        return 2.0 * (frobenius2 - np.sum(np.diagonal(M, axis1=-2, axis2=-1) ** 2, axis=-1))
    if projection == "sphere":
        trace = np.trace(M, axis1=-2, axis2=-1)
        return 2.0 * dim / (dim + 2) * (frobenius2 - trace**2 / dim)
    raise AssertionError(projection)


def assert_within_standard_errors(estimate, expected, standard_error):
    estimate, expected, standard_error = map(np.asarray, (estimate, expected, standard_error))
    error = np.abs(estimate - expected)
    bound = N_STANDARD_ERRORS * standard_error
    assert np.all(error <= bound), (
        f"max |error|/bound = {np.max(error / bound):.3g} (error {error}, bound {bound})"
    )


@pytest.fixture(scope="module")
def linear_problem():
    """A non-symmetric A (D = 6), offset b and a batch x (B = 32), float32."""
    rng = np.random.default_rng(0)
    dim, batch = 6, 32
    A = rng.normal(size=(dim, dim)).astype(np.float32) / np.sqrt(dim)
    b = rng.normal(size=dim).astype(np.float32)
    x = rng.normal(size=(batch, dim)).astype(np.float32)
    return A, b, x


# ----------------------------------------------------------------------------------------------------------------
# Exact score matching
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 5), (4, 2, 3, 2)], ids=["vector", "image_BHWC"])
def test_exact_score_matching_linear_score_equals_closed_form(shape):
    """ESM of s(x) = Ax + b is ½‖Ax + b‖² + tr(A) per example, to float64 precision."""
    rng = np.random.default_rng(1)
    dim = int(np.prod(shape[1:]))
    A = rng.normal(size=(dim, dim))
    b = rng.normal(size=dim)
    x = rng.normal(size=shape)
    flat = x.reshape(shape[0], -1)
    expected = 0.5 * np.sum((flat @ A.T + b) ** 2, axis=-1) + np.trace(A)

    with jax.enable_x64(True):
        loss, aux = losses.exact_score_matching(linear_score(jnp.asarray(A), jnp.asarray(b)), jnp.asarray(x))
        per_example = np.asarray(aux["per_example_loss"])
        assert per_example.dtype == np.float64

    np.testing.assert_allclose(per_example, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(loss), expected.mean(), rtol=1e-12)


def test_exact_score_matching_nonlinear_matches_analytic_trace():
    """s(x) = tanh(Wx + c): tr ∇s = Σⱼ (1 − tanh²(Wx + c)ⱼ) Wⱼⱼ."""
    rng = np.random.default_rng(2)
    W = rng.normal(size=(5, 5)).astype(np.float32)
    c = rng.normal(size=5).astype(np.float32)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    h = np.tanh(x @ W.T + c)
    expected = 0.5 * np.sum(h**2, -1) + np.sum((1 - h**2) * np.diag(W), -1)

    _, aux = losses.exact_score_matching(lambda y: jnp.tanh(y @ W.T + c), jnp.asarray(x))
    np.testing.assert_allclose(aux["per_example_loss"], expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Hutchinson trace
# ----------------------------------------------------------------------------------------------------------------


def test_hutchinson_rademacher_is_exact_for_diagonal_jacobian():
    """Rademacher v has vᵢ² = 1, so vᵀ diag(d) v = Σ dᵢ for every draw: zero variance."""
    d = jnp.array([3.0, -1.5, 0.25, 2.0, -4.0])
    x = jax.random.normal(jax.random.key(0), (16, 5))
    for seed in range(5):
        estimate = losses.hutchinson_trace(lambda y: d * y + 1.0, x, jax.random.key(seed))
        np.testing.assert_allclose(estimate, np.full(16, float(jnp.sum(d))), rtol=1e-6)


@pytest.mark.parametrize("projection", ["rademacher", "sphere"])
def test_hutchinson_projection_norm(projection):
    """vᵀ(cI)v = c‖v‖², and ‖v‖² = D exactly for Rademacher and for the sphere of radius √D."""
    x = jnp.zeros((32, 3, 2, 2))  # D = 12
    estimate = losses.hutchinson_trace(lambda y: 2.0 * y, x, jax.random.key(3), projection=projection)
    np.testing.assert_allclose(estimate, np.full(32, 24.0), rtol=1e-5)


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_hutchinson_converges_to_exact_trace_of_nonlinear_fn(projection):
    """fn(x) = tanh(Wx + c): J = diag(1 − h²) W; the estimate is within 5 standard errors of tr(J) per example."""
    rng = np.random.default_rng(4)
    dim, batch, n_projections = 8, 16, 4096
    W = (rng.normal(size=(dim, dim)) / np.sqrt(dim)).astype(np.float32)
    c = rng.normal(size=dim).astype(np.float32)
    x = rng.normal(size=(batch, dim)).astype(np.float32)

    h = np.tanh(x.astype(np.float64) @ W.T + c)
    jacobians = (1 - h**2)[:, :, None] * W[None]  # (B, D, D), J_b = diag(1 − h_b²) W
    exact_trace = np.trace(jacobians, axis1=-2, axis2=-1)
    standard_error = np.sqrt(quadratic_form_variance(jacobians, projection) / n_projections)

    estimate = jax.jit(
        lambda x, key: losses.hutchinson_trace(
            lambda y: jnp.tanh(y @ W.T + c), x, key, n_projections=n_projections, projection=projection
        )
    )(jnp.asarray(x), jax.random.key(5))
    assert_within_standard_errors(estimate, exact_trace, standard_error)
    # J is not diagonal, so no projection is exact: a zero error would mean the trace was not estimated.
    assert np.all(standard_error > 0)
    assert not np.allclose(estimate, exact_trace, rtol=1e-6, atol=0)


def test_hutchinson_never_forms_the_jacobian():
    """D = 2¹⁸: a per-example Jacobian would hold 2·D² ≈ 5.5·10¹¹ floats; the jvp estimate needs O(D)."""
    dim = 2**18
    x = jax.random.normal(jax.random.key(6), (2, dim))
    estimate = jax.jit(lambda x, key: losses.hutchinson_trace(jnp.sin, x, key))(x, jax.random.key(7))
    # Diagonal Jacobian diag(cos x): the Rademacher estimate is exact.
    np.testing.assert_allclose(estimate, np.sum(np.cos(np.asarray(x, np.float64)), axis=-1), rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Sliced score matching
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance_reduction", [False, True], ids=["ssm", "ssm_vr"])
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_sliced_score_matching_converges_to_exact(linear_problem, projection, variance_reduction):
    """E_v[SSM] = E_v[SSM-VR] = ½‖s‖² + tr(A); per projection SSM is vᵀ(A + ½ssᵀ)v, SSM-VR vᵀAv + ½‖s‖²."""
    A, b, x = linear_problem
    n_projections = 4096
    s = x.astype(np.float64) @ A.T + b
    exact = 0.5 * np.sum(s**2, -1) + np.trace(A)
    quadratic = np.broadcast_to(A, (len(x),) + A.shape)
    if not variance_reduction:
        quadratic = quadratic + 0.5 * s[:, :, None] * s[:, None, :]
    standard_error = np.sqrt(quadratic_form_variance(quadratic, projection) / n_projections)

    loss, aux = losses.sliced_score_matching(
        linear_score(A, b),
        jnp.asarray(x),
        jax.random.key(8),
        n_projections=n_projections,
        projection=projection,
        variance_reduction=variance_reduction,
    )
    assert_within_standard_errors(aux["per_example_loss"], exact, standard_error)
    np.testing.assert_allclose(float(loss), float(np.mean(aux["per_example_loss"])), rtol=1e-6)


def test_ssm_vr_has_smaller_variance_than_ssm(linear_problem):
    """Over many keys both batch losses average to the exact loss, and Var[SSM-VR] < Var[SSM] (measured)."""
    A, b, x = linear_problem
    s = x.astype(np.float64) @ A.T + b
    exact_loss = np.mean(0.5 * np.sum(s**2, -1) + np.trace(A))
    keys = jax.random.split(jax.random.key(9), 512)

    def batch_losses(variance_reduction):
        def loss_fn(key):
            score_fn = linear_score(A, b)
            return losses.sliced_score_matching(
                score_fn, jnp.asarray(x), key, projection="gaussian", variance_reduction=variance_reduction
            )[0]

        return np.asarray(jax.jit(jax.vmap(loss_fn))(keys), np.float64)

    ssm, ssm_vr = batch_losses(False), batch_losses(True)
    var_ssm, var_vr = ssm.var(ddof=1), ssm_vr.var(ddof=1)
    assert var_vr < var_ssm, (var_vr, var_ssm)
    # Closed form of the batch-mean variance (Gaussian v, independent examples): (1/B²) Σ_b 2‖M_b‖_F².
    quadratic = np.broadcast_to(A, (len(x),) + A.shape)
    predicted_vr = np.sum(quadratic_form_variance(quadratic, "gaussian")) / len(x) ** 2
    predicted_ssm = (
        np.sum(quadratic_form_variance(quadratic + 0.5 * s[:, :, None] * s[:, None, :], "gaussian"))
        / len(x) ** 2
    )
    assert 0.7 < var_vr / predicted_vr < 1.4, (var_vr, predicted_vr)
    assert 0.5 < var_ssm / predicted_ssm < 2.0, (var_ssm, predicted_ssm)
    for samples, predicted in ((ssm, predicted_ssm), (ssm_vr, predicted_vr)):
        assert_within_standard_errors(samples.mean(), exact_loss, np.sqrt(predicted / len(keys)))


# ----------------------------------------------------------------------------------------------------------------
# Denoising score matching
# ----------------------------------------------------------------------------------------------------------------

SIGMAS = jnp.asarray(np.geomspace(50.0, 0.01, 10), jnp.float32)


def _recording_score_fn(score_fn, record):
    """Wraps a conditional score to record (x̃, σ) on each (eager) call."""

    def wrapped(x_tilde, sigma):
        record.append((np.asarray(x_tilde, np.float64), np.asarray(sigma, np.float64)))
        return score_fn(x_tilde, sigma)

    return wrapped


@pytest.mark.parametrize("anneal_power", [2.0, 1.0])
def test_dsm_zero_score_is_half_noise_norm(anneal_power):
    """s ≡ 0: ℓ = σ^p·½‖(x̃ − x)/σ²‖² exactly (= ½‖z‖² for p = 2), with σ = sigmas[sigma_idx]; E = D/2 for p = 2."""
    batch, dim = 4096, 4
    x = jax.random.uniform(jax.random.key(10), (batch, dim))
    record = []
    score_fn = _recording_score_fn(lambda x_tilde, sigma: jnp.zeros_like(x_tilde), record)
    loss, aux = losses.denoising_score_matching(
        score_fn, x, SIGMAS, jax.random.key(11), anneal_power=anneal_power
    )

    [(x_tilde, sigma)] = record
    assert aux["sigma_idx"].dtype == jnp.int32 and aux["per_example_loss"].dtype == jnp.float32
    np.testing.assert_array_equal(sigma, np.asarray(SIGMAS, np.float64)[np.asarray(aux["sigma_idx"])])
    z = (x_tilde - np.asarray(x, np.float64)) / sigma[:, None]
    expected = sigma**anneal_power * 0.5 * np.sum((z / sigma[:, None]) ** 2, -1)
    np.testing.assert_allclose(aux["per_example_loss"], expected, rtol=2e-4)
    np.testing.assert_allclose(float(loss), np.mean(aux["per_example_loss"]), rtol=1e-5)
    # The noise is standard normal (mean 0, variance 1 within 5 standard errors).
    assert_within_standard_errors(z.mean(), 0.0, 1 / np.sqrt(z.size))
    assert_within_standard_errors(z.var(), 1.0, np.sqrt(2 / z.size))
    if anneal_power == 2.0:
        # ½‖z‖² ~ ½χ²_D: mean D/2, variance D/2 — for any sigmas.
        assert_within_standard_errors(float(loss), dim / 2, np.sqrt(dim / 2 / batch))


@pytest.mark.parametrize("anneal_power", [2.0, 0.0])
def test_dsm_true_conditional_score_of_point_mass_gives_zero(anneal_power):
    """For point-mass data x₀, s(x̃, σ) = −(x̃ − x₀)/σ² is the exact noisy score: the loss is 0 to rounding."""
    x0 = jnp.array([0.3, -1.2, 2.0, 0.7])
    x = jnp.broadcast_to(x0, (256, 4))

    def true_score(x_tilde, sigma):
        return -(x_tilde - x0) / sigma[:, None] ** 2

    key = jax.random.key(12)
    loss, aux = losses.denoising_score_matching(true_score, x, SIGMAS, key, anneal_power=anneal_power)
    zero_score_loss, _ = losses.denoising_score_matching(
        lambda x_tilde, sigma: jnp.zeros_like(x_tilde), x, SIGMAS, key, anneal_power=anneal_power
    )
    # With p = 0 the target −z/σ is up to 100 at σ = 0.01 and rounding of x̃ − x₀ is amplified by 1/σ².
    tolerance = 1e-9 if anneal_power == 2.0 else 1e-3
    assert float(jnp.max(jnp.abs(aux["per_example_loss"]))) < tolerance * float(zero_score_loss)
    assert float(zero_score_loss) > 0.5


def test_dsm_gradient_vanishes_at_analytic_optimum():
    """Data N(μ, τ²I), one σ, s(x̃) = a·x̃ + c: the optimum is the noisy score, a* = −1/(τ²+σ²), c* = μ/(τ²+σ²).

    The batch gradient at θ* is within 5 standard errors (from per-example gradients) of 0 in every component,
    while at a perturbed point it is not.
    """
    mu, tau, sigma, batch = np.array([1.0, -2.0]), 1.5, 0.5, 16384
    data_key, loss_key = jax.random.split(jax.random.key(13))
    x = mu + tau * jax.random.normal(data_key, (batch, 2))
    theta_opt = jnp.asarray(np.concatenate([[-1.0], mu]) / (tau**2 + sigma**2), jnp.float32)

    def per_example_loss(theta):
        def score_fn(x_tilde, _):
            return theta[0] * x_tilde + theta[1:]

        return losses.denoising_score_matching(score_fn, x, jnp.array([sigma]), loss_key)[1][
            "per_example_loss"
        ]

    per_example_grads = jax.jit(jax.jacfwd(per_example_loss))  # (B, 3)

    def mean_and_standard_error(theta):
        grads = np.asarray(per_example_grads(theta), np.float64)
        return grads.mean(0), grads.std(0, ddof=1) / np.sqrt(batch)

    grad_opt, se_opt = mean_and_standard_error(theta_opt)
    assert_within_standard_errors(grad_opt, np.zeros(3), se_opt)
    for perturbation in (np.array([0.2, 0.0, 0.0]), np.array([0.0, 0.2, -0.2])):
        grad, se = mean_and_standard_error(theta_opt + perturbation * np.abs(theta_opt))
        assert np.max(np.abs(grad) / se) > 2 * N_STANDARD_ERRORS, (
            "the test must be able to detect a wrong optimum"
        )


def test_dsm_sigma_idx_is_uniform_over_levels():
    """Level counts over 20 000 examples pass a χ² test (9 dof, 99.99 % quantile 33.72)."""
    batch, n_levels = 20000, SIGMAS.shape[0]
    x = jnp.zeros((batch, 2))
    _, aux = losses.denoising_score_matching(lambda x_tilde, s: x_tilde, x, SIGMAS, jax.random.key(14))
    counts = np.bincount(np.asarray(aux["sigma_idx"]), minlength=n_levels)
    assert counts.shape == (n_levels,)
    expected = batch / n_levels
    chi_square = np.sum((counts - expected) ** 2 / expected)
    assert chi_square < 33.72, counts


# ----------------------------------------------------------------------------------------------------------------
# Annealed sliced / exact score matching
# ----------------------------------------------------------------------------------------------------------------


def test_annealed_ssm_vr_equals_annealed_exact_for_isotropic_gaussian():
    """Data N(μ, τ²I), s(x̃, σ) = −(x̃ − μ)/(τ² + σ²): ∇s = −I/(τ²+σ²) is diagonal, so Rademacher SSM-VR equals
    annealed exact SM per example (same key → same levels and x̃). And ‖x̃ − μ‖²/(τ²+σ²) ~ χ²_D recovered from
    the exact loss has mean D."""
    mu, tau, batch, dim = jnp.array([2.0, -1.0, 0.5]), 0.8, 2048, 3
    sigmas = SIGMAS[3:]  # 3.4 … 0.01
    data_key, loss_key = jax.random.split(jax.random.key(15))
    x = mu + tau * jax.random.normal(data_key, (batch, dim))

    def noisy_score(x_tilde, sigma):
        return -(x_tilde - mu) / (tau**2 + sigma[:, None] ** 2)

    _, exact = losses.annealed_exact_score_matching(noisy_score, x, sigmas, loss_key)
    _, sliced = losses.annealed_sliced_score_matching(
        noisy_score, x, sigmas, loss_key, projection="rademacher"
    )
    np.testing.assert_array_equal(exact["sigma_idx"], sliced["sigma_idx"])
    np.testing.assert_allclose(sliced["per_example_loss"], exact["per_example_loss"], rtol=1e-5, atol=1e-6)

    sigma = np.asarray(sigmas, np.float64)[np.asarray(exact["sigma_idx"])]
    variance = tau**2 + sigma**2
    # ℓ = σ²(½‖x̃ − μ‖²/v² − D/v)  ⇒  2v·ℓ/σ² + 2D = ‖x̃ − μ‖²/v ~ χ²_D.
    chi_square = 2 * variance * np.asarray(exact["per_example_loss"], np.float64) / sigma**2 + 2 * dim
    assert np.all(chi_square > -1e-3)
    assert_within_standard_errors(chi_square.mean(), dim, np.sqrt(2 * dim / batch))


@pytest.mark.parametrize("variance_reduction", [False, True], ids=["ssm", "ssm_vr"])
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_annealed_sliced_expectation_equals_annealed_exact(projection, variance_reduction):
    """Data N(μ, Σ), Σ non-diagonal, analytic noisy score s = −(Σ + σ²I)⁻¹(x̃ − μ): with many projections the
    annealed sliced loss is within 5 standard errors of annealed exact SM, per example. Bound per projection:
    Var ≤ 2‖M‖_F², M = ∇s (+ ½ssᵀ for SSM, ‖ssᵀ‖_F = ‖s‖² read off the exact loss)."""
    rng = np.random.default_rng(16)
    dim, batch, n_projections, anneal_power = 4, 16, 2048, 2.0
    root = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    cov = root @ root.T + 0.1 * np.eye(dim)
    mu = rng.normal(size=dim)
    sigmas = jnp.array([2.0, 0.5, 0.1], jnp.float32)
    precisions = np.linalg.inv(cov[None] + np.asarray(sigmas, np.float64)[:, None, None] ** 2 * np.eye(dim))
    precisions32 = jnp.asarray(precisions, jnp.float32)

    def noisy_score(x_tilde, sigma):
        level = jnp.argmin(jnp.abs(sigma[:, None] - sigmas[None]), axis=1)
        return -jnp.einsum("bij,bj->bi", precisions32[level], x_tilde - mu)

    x = jnp.asarray(mu + rng.normal(size=(batch, dim)) @ root.T, jnp.float32)
    key = jax.random.key(17)
    _, exact = losses.annealed_exact_score_matching(noisy_score, x, sigmas, key, anneal_power=anneal_power)
    _, sliced = losses.annealed_sliced_score_matching(
        noisy_score,
        x,
        sigmas,
        key,
        n_projections=n_projections,
        projection=projection,
        variance_reduction=variance_reduction,
        anneal_power=anneal_power,
    )
    level = np.asarray(exact["sigma_idx"])
    np.testing.assert_array_equal(level, sliced["sigma_idx"])
    weight = np.asarray(sigmas, np.float64)[level] ** anneal_power
    jacobian = -precisions[level]
    frobenius = np.sqrt(np.sum(jacobian**2, axis=(-2, -1)))
    if not variance_reduction:
        half_score_norm2 = np.asarray(exact["per_example_loss"], np.float64) / weight - np.trace(
            jacobian, axis1=-2, axis2=-1
        )
        frobenius = frobenius + half_score_norm2  # ‖M + ½ssᵀ‖_F ≤ ‖M‖_F + ½‖s‖²
    standard_error = weight * np.sqrt(2.0) * frobenius / np.sqrt(n_projections)
    assert_within_standard_errors(sliced["per_example_loss"], exact["per_example_loss"], standard_error)


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------


def _conditional_tanh_score(x, sigma):
    return jnp.tanh(x * 0.7 + 0.1) / sigma.reshape((-1,) + (1,) * (x.ndim - 1))


@pytest.fixture(scope="module")
def conditional_problem():
    x = jax.random.normal(jax.random.key(18), (8, 2, 2, 1))
    return x, jnp.array([1.0, 0.5, 0.1]), jax.random.key(19)


@pytest.mark.parametrize(
    "name, loss, fixed",
    [
        ("dsm", losses.denoising_score_matching, {}),
        ("ssm", losses.annealed_sliced_score_matching, {"variance_reduction": False}),
        ("ssm_vr", losses.annealed_sliced_score_matching, {"variance_reduction": True}),
        ("exact", losses.annealed_exact_score_matching, {}),
    ],
)
def test_get_loss_fn_dispatches_with_options(conditional_problem, name, loss, fixed):
    """get_loss_fn(name, **options) equals the direct call with the options that apply to it."""
    x, sigmas, key = conditional_problem
    options = {"anneal_power": 1.5, "n_projections": 3, "projection": "gaussian"}
    applicable = {k: v for k, v in options.items() if k == "anneal_power" or name.startswith("ssm")}
    value, aux = losses.get_loss_fn(name, **options)(_conditional_tanh_score, x, sigmas, key)
    expected, expected_aux = loss(_conditional_tanh_score, x, sigmas, key, **fixed, **applicable)
    np.testing.assert_array_equal(aux["per_example_loss"], expected_aux["per_example_loss"])
    np.testing.assert_array_equal(aux["sigma_idx"], expected_aux["sigma_idx"])
    assert float(value) == float(expected)
    # and the options matter: the default anneal_power gives a different value
    default_value, _ = losses.get_loss_fn(name)(_conditional_tanh_score, x, sigmas, key)
    assert float(default_value) != float(value)


def test_get_loss_fn_and_projection_errors(conditional_problem):
    x, sigmas, key = conditional_problem
    with pytest.raises(ValueError) as error:
        losses.get_loss_fn("sliced")
    for name in ("dsm", "ssm", "ssm_vr", "exact"):
        assert repr(name) in str(error.value)
    with pytest.raises(ValueError, match="'rademacher', 'gaussian', 'sphere'"):
        losses.get_loss_fn("ssm", projection="cauchy")
    with pytest.raises(TypeError, match="anneal_power"):
        losses.get_loss_fn("dsm", sigma_power=2.0)
    with pytest.raises(ValueError, match="'rademacher', 'gaussian', 'sphere'"):
        losses.sliced_score_matching(jnp.tanh, x, key, projection="cauchy")
    with pytest.raises(ValueError, match="'rademacher', 'gaussian', 'sphere'"):
        losses.hutchinson_trace(jnp.tanh, x, key, projection="normal")


# ----------------------------------------------------------------------------------------------------------------
# jit, vmap, determinism, sharding
# ----------------------------------------------------------------------------------------------------------------


def _conditional_losses(x, sigmas, key):
    """Every registered loss on the tanh score: ``{name: (loss, aux)}``."""
    return {
        name: losses.get_loss_fn(name, n_projections=2)(_conditional_tanh_score, x, sigmas, key)
        for name in losses.LOSSES
    }


def _every_loss_value(x, key, sigmas):
    """Scalar value of every public loss (and the summed Hutchinson trace) at (x, key)."""
    values = {
        "exact_sm": losses.exact_score_matching(jnp.tanh, x)[0],
        "sliced_sm": losses.sliced_score_matching(jnp.tanh, x, key, n_projections=2)[0],
        "hutchinson": jnp.sum(losses.hutchinson_trace(jnp.tanh, x, key, projection="sphere")),
    }
    values.update({name: loss for name, (loss, _) in _conditional_losses(x, sigmas, key).items()})
    return values


def test_losses_jit_matches_eager_and_are_deterministic(conditional_problem):
    x, sigmas, key = conditional_problem
    jitted = jax.jit(_conditional_losses)
    eager, compiled = _conditional_losses(x, sigmas, key), jitted(x, sigmas, key)
    again, other_key = jitted(x, sigmas, key), jitted(x, sigmas, jax.random.key(20))
    for name in losses.LOSSES:
        (value, aux), (eager_value, eager_aux) = compiled[name], eager[name]
        np.testing.assert_allclose(value, eager_value, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(
            aux["per_example_loss"], eager_aux["per_example_loss"], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_array_equal(aux["sigma_idx"], eager_aux["sigma_idx"])
        assert aux["per_example_loss"].dtype == jnp.float32 and aux["sigma_idx"].dtype == jnp.int32
        assert float(again[name][0]) == float(value), f"{name}: the same key must give the same value"
        assert float(other_key[name][0]) != float(value), f"{name}: the key must matter"


def test_losses_inside_vmap(conditional_problem):
    """vmap over (x, key) pairs gives the per-pair values of the unbatched calls."""
    x, sigmas, _ = conditional_problem
    xs = jnp.stack([x, 2.0 * x, -x])
    keys = jax.random.split(jax.random.key(21), 3)
    batched = jax.jit(jax.vmap(_every_loss_value, in_axes=(0, 0, None)))(xs, keys, sigmas)
    single = jax.jit(_every_loss_value)
    looped = [single(x_i, key_i, sigmas) for x_i, key_i in zip(xs, keys, strict=True)]
    assert len(batched) == len(losses.LOSSES) + 3
    for name, values in batched.items():
        expected = np.stack([out[name] for out in looped])
        np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6, err_msg=name)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec
    from ncsn_jax import losses

    assert jax.device_count() == 8, jax.devices()
    x = jax.random.normal(jax.random.key(0), (32, 4, 4, 1))
    sigmas = jnp.geomspace(1.0, 0.01, 5)
    key = jax.random.key(1)

    def score_fn(x, sigma):
        return jnp.tanh(0.5 * x + 0.1) / sigma[:, None, None, None]

    per_example = {
        name: (lambda loss_fn: lambda x, key: loss_fn(score_fn, x, sigmas, key)[1]["per_example_loss"])(
            losses.get_loss_fn(name, n_projections=2, projection="sphere"))
        for name in losses.LOSSES
    }
    per_example["hutchinson"] = lambda x, key: losses.hutchinson_trace(jnp.tanh, x, key, n_projections=2)
    per_example["sliced"] = lambda x, key: losses.sliced_score_matching(
        jnp.tanh, x, key, projection="gaussian")[1]["per_example_loss"]

    all_losses = jax.jit(lambda x, key: {name: fn(x, key) for name, fn in per_example.items()})
    reference = all_losses(jax.device_put(x, jax.devices()[0]), key)
    report = {}
    for axis_type in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
        outputs = all_losses(jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))), key)
        for name, out in outputs.items():
            report[f"{axis_type.name}/{name}"] = {
                "batch_axis_sharding": out.sharding.spec[0] if out.sharding.spec else None,
                "n_devices": len(out.sharding.device_set),
                "max_abs_diff": float(np.max(np.abs(np.asarray(out) - np.asarray(reference[name])))),
                "scale": float(np.max(np.abs(np.asarray(reference[name])))),
            }
    print(json.dumps(report))
    """
)


@pytest.mark.slow
def test_losses_are_sharding_invariant():
    """A batch sharded over an 8-device CPU mesh (Auto and Explicit axes) gives the single-device per-example
    losses for the same key; with Explicit axes the draws and the losses stay sharded like the batch."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    names = set(losses.LOSSES) | {"hutchinson", "sliced"}
    assert set(report) == {f"{mode}/{name}" for mode in ("Auto", "Explicit") for name in names}
    for name, entry in report.items():
        assert entry["n_devices"] == 8, (name, entry)
        assert entry["max_abs_diff"] <= 1e-5 * max(1.0, entry["scale"]), (name, entry)
        if name.startswith(
            "Explicit/"
        ):  # sharding in types: the per-example losses stay sharded like the batch
            assert entry["batch_axis_sharding"] == "data", (name, entry)
