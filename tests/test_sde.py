"""The VE SDE, its PC and probability-flow ODE samplers and ODE likelihoods, against closed forms: analytic
Gaussian-mixture scores, exact moment recursions of the linear Gaussian chains, a Python-loop second
implementation of PC, the 1-D transport map of the toy mixture, Jacobian determinants and exact densities."""

import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from scipy import optimize, stats

from ncsn_jax import errors, mixtures, noise
from ncsn_jax.likelihood import MAX_EXACT_DIVERGENCE_DIM, bits_per_dim, log_likelihood
from ncsn_jax.models.mlp import NoiseConditionalMLP
from ncsn_jax.models.ncsn import CondRefineNetDilated, nearest_level_index
from ncsn_jax.models.ncsnv2 import NCSNv2
from ncsn_jax.sde import VESDE, check_continuous_sigma, supports_continuous_sigma
from ncsn_jax.sde_sampling import ode_encode, ode_sampler, pc_sampler
from tests.helpers import run_python

TOY = mixtures.ncsn_toy_mixture()
MODE_SEPARATION = 5.0 * math.sqrt(2.0)  # |μ_k · u| of the toy modes ±5·1 along u = (1, 1)/√2


def heavy_mode_weight(samples) -> float:
    return float(jnp.mean(TOY.nearest_component(samples) == 0))


def assert_moments(samples, mean, var, n_sigmas=4.0):
    """Sample mean/variance (all coordinates pooled) within n_sigmas Monte-Carlo standard errors."""
    samples = np.asarray(samples, np.float64).ravel()
    n = samples.size
    assert abs(samples.mean() - mean) < n_sigmas * np.sqrt(var / n), (samples.mean(), mean)
    assert abs(samples.var() - var) < n_sigmas * var * np.sqrt(2.0 / n), (samples.var(), var)


def gaussian_score_fn(mean, variance):
    """Score of N(mean, variance·I) convolved with N(0, σ²I), for any (B, *dims)."""

    def score_fn(x, sigma):
        sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
        return -(x - mean) / (variance + sigma**2)

    return score_fn


# ----------------------------------------------------------------------------------------------------
# The SDE
# ----------------------------------------------------------------------------------------------------


def test_vesde_closed_forms():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=11)
    t = jnp.linspace(0.0, 1.0, 7)
    np.testing.assert_allclose(sde.sigma(t), 0.01 * (5000.0 ** np.asarray(t)), rtol=1e-5)
    np.testing.assert_allclose(sde.time(sde.sigma(t)), t, atol=1e-6)
    # g² = d σ²/dt: the variance the forward SDE adds per unit time
    dsigma2_dt = jax.vmap(jax.grad(lambda s: sde.sigma(s) ** 2))(t)
    np.testing.assert_allclose(sde.diffusion(t) ** 2, dsigma2_dt, rtol=1e-5)
    x = jnp.ones((7, 3))
    drift, diffusion = sde.sde(x, t)
    assert not np.any(np.asarray(drift)) and diffusion.shape == (7,)
    mean, std = sde.marginal_prob(x, t)
    np.testing.assert_array_equal(mean, x)
    np.testing.assert_allclose(std, sde.sigma(t))

    # the table: geometric, σ(tᵢ) = σᵢ, and the reverse steps remove σ_max² in total
    np.testing.assert_array_equal(sde.discrete_sigmas, noise.geometric_sigmas(50.0, 0.01, 11))
    np.testing.assert_allclose(sde.sigma(sde.discrete_times), sde.discrete_sigmas, rtol=1e-5)
    _, g = sde.discretize(jnp.zeros((11, 2)), jnp.asarray(sde.discrete_times))
    table = sde.discrete_sigmas.astype(np.float64)
    np.testing.assert_allclose(g**2, table**2 - np.append(table[1:], 0.0) ** 2, rtol=1e-5)
    assert float(jnp.sum(g**2)) == pytest.approx(50.0**2, rel=1e-5)

    z = sde.prior_sampling(jax.random.key(0), (20000, 3))
    assert float(jnp.std(z)) == pytest.approx(50.0, rel=0.02)
    expected = stats.norm.logpdf(np.asarray(z[:5], np.float64), scale=50.0).sum(axis=1)
    np.testing.assert_allclose(sde.prior_logp(z[:5]), expected, rtol=1e-6)


def test_from_sigmas_reproduces_a_model_table_and_rejects_other_tables():
    table = noise.geometric_sigmas(50.0, 0.01, 232)  # NCSNv2 CIFAR-10's levels
    sde = VESDE.from_sigmas(table)
    assert (sde.sigma_max, sde.N) == (50.0, 232) and sde.sigma_min == pytest.approx(0.01)
    np.testing.assert_array_equal(sde.discrete_sigmas, table)
    np.testing.assert_allclose(sde.sigma(sde.discrete_times), table, rtol=1e-5)
    with pytest.raises(ValueError, match="not a geometric sequence"):
        VESDE.from_sigmas(np.linspace(10.0, 1.0, 5))
    with pytest.raises(ValueError, match="descending"):
        VESDE.from_sigmas(table[::-1])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=1.0, N=10)
    with pytest.raises(ValueError, match="N >= 2"):
        VESDE(sigma_min=0.1, sigma_max=1.0, N=1)


# ----------------------------------------------------------------------------------------------------
# Predictor–corrector sampling
# ----------------------------------------------------------------------------------------------------


def loop_pc(score_fn, sde, x, key, predictor, n_steps_corrector, snr):
    """PC step by step in Python with the documented streams and score_sde's formulas; returns (x, x_mean)."""
    sigmas = [float(s) for s in sde.discrete_sigmas] + [0.0]
    x_mean = x
    for i in range(sde.N):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_batch = jnp.full((x.shape[0],), sigma)
        for j in range(n_steps_corrector):
            s = score_fn(x, sigma_batch)
            z = jax.random.normal(
                jax.random.fold_in(jax.random.fold_in(key, 1), i * n_steps_corrector + j), x.shape
            )
            step = 2.0 * (snr * np.mean(np.linalg.norm(z, axis=1)) / np.mean(np.linalg.norm(s, axis=1))) ** 2
            x_mean = x + step * s
            x = x_mean + np.sqrt(2.0 * step) * z
        s = score_fn(x, sigma_batch)
        z = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, 0), i), x.shape)
        if predictor == "euler_maruyama":
            g2 = float(sde.diffusion(sde.discrete_times[i])) ** 2
            x_mean = x + g2 / sde.N * s
            x = x_mean + np.sqrt(g2 / sde.N) * z
        else:
            x_mean = x + (sigma**2 - sigma_next**2) * s
            if predictor == "reverse_diffusion":
                x = x_mean + np.sqrt(sigma**2 - sigma_next**2) * z
            else:
                x = x_mean + np.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) * z
    return x, x_mean


@pytest.mark.parametrize("predictor", ["reverse_diffusion", "ancestral", "euler_maruyama"])
def test_pc_sampler_matches_python_loop(predictor):
    sde = VESDE(sigma_min=0.5, sigma_max=20.0, N=4)
    x_init = sde.prior_sampling(jax.random.key(1), (8, 2))
    key = jax.random.key(2)
    expected_x, expected_mean = loop_pc(TOY.score, sde, x_init, key, predictor, 2, snr=0.3)
    for denoise, expected in ((False, expected_x), (True, expected_mean)):
        out = pc_sampler(
            TOY.score, sde, x_init, key, predictor=predictor, n_steps_corrector=2, snr=0.3, denoise=denoise
        )
        np.testing.assert_allclose(out.samples, expected, rtol=2e-5, atol=2e-5)
        assert out.n_evaluations == 4 * (2 + 1)


@pytest.mark.parametrize("predictor", ["reverse_diffusion", "ancestral", "euler_maruyama"])
def test_pc_sampler_recovers_toy_mixture_weights(predictor):
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=300)
    x_init = sde.prior_sampling(jax.random.key(3), (4000, 2))
    out = jax.jit(lambda x, key: pc_sampler(TOY.score, sde, x, key, predictor=predictor))(
        x_init, jax.random.key(4)
    )
    assert abs(heavy_mode_weight(out.samples) - 0.8) < 0.04
    assert int(out.n_evaluations) == 2 * 300


def exact_predictor_moments(predictor, sde, mean, variance, x_init_var):
    """Per-coordinate mean/variance of predictor-only PC on N(mean, variance·I), by its linear recursion.

    Each step is x ← x + c s + d z with s = −(x − μ)/(τ² + σᵢ²): mean ← μ + a(mean − μ),
    var ← a² var + d², a = 1 − c/(τ² + σᵢ²).
    """
    sigmas = np.append(sde.discrete_sigmas.astype(np.float64), 0.0)
    m, v = 0.0, x_init_var
    for i in range(sde.N):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if predictor == "euler_maruyama":
            g2 = (
                2.0 * sde.log_ratio * (sde.sigma_min * math.exp(sde.log_ratio * (1.0 - i / (sde.N - 1)))) ** 2
            )
            c = d2 = g2 / sde.N
        else:
            c = sigma**2 - sigma_next**2
            d2 = c if predictor == "reverse_diffusion" else sigma_next**2 * c / sigma**2
        a = 1.0 - c / (variance + sigma**2)
        m, v = mean + a * (m - mean), a * a * v + d2
    return m, v


@pytest.mark.parametrize(
    "predictor, target_noise", [("reverse_diffusion", 0.0), ("ancestral", 0.0), ("euler_maruyama", 0.01)]
)
def test_predictor_only_reaches_gaussian_target(predictor, target_noise):
    """N(μ, τ²I) data: the chain's law is the exact recursion's, whose variance tends to τ² + σ_end² in N.

    Reverse diffusion and ancestral sampling end at σ = 0 (their last step removes σ_min²); Euler–Maruyama
    integrates to t ≈ 0, i.e. σ_min.
    """
    mean, variance = -1.0, 0.5
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
    x_init = sde.prior_sampling(jax.random.key(5), (10000, 2))
    out = jax.jit(
        lambda x, key: pc_sampler(
            gaussian_score_fn(mean, variance),
            sde,
            x,
            key,
            predictor=predictor,
            corrector="none",
            denoise=False,
        )
    )(x_init, jax.random.key(6))
    chain_mean, chain_var = exact_predictor_moments(predictor, sde, mean, variance, 50.0**2)
    assert_moments(out.samples, chain_mean, chain_var)
    assert chain_mean == pytest.approx(mean, abs=1e-3)
    assert chain_var == pytest.approx(variance + target_noise**2, rel=0.01)  # discretisation error O(1/N)
    assert out.n_evaluations == 1000


def test_corrector_only_reaches_its_gaussian_stationary_law():
    """Langevin with ε = 2(r‖z‖/‖s‖)² on N(μ, vI) has the stationary variance v(1 + r²)."""
    mean, variance, snr = 2.0, 0.5, 0.5
    sde = VESDE(sigma_min=0.1, sigma_max=5.0, N=10)
    x_init = sde.prior_sampling(jax.random.key(7), (20000, 2))
    out = jax.jit(
        lambda x, key: pc_sampler(
            gaussian_score_fn(mean, variance),
            sde,
            x,
            key,
            predictor="none",
            snr=snr,
            n_steps_corrector=30,
            denoise=False,
        )
    )(x_init, jax.random.key(8))
    level_variance = variance + 0.1**2
    assert_moments(out.samples, mean, level_variance * (1.0 + snr**2))
    assert out.n_evaluations == 10 * 30


def test_pc_sampler_jit_matches_eager_and_rejects_bad_options():
    sde = VESDE(sigma_min=0.5, sigma_max=20.0, N=20)
    x_init = sde.prior_sampling(jax.random.key(9), (16, 2))
    run = lambda x, key: pc_sampler(TOY.score, sde, x, key).samples
    np.testing.assert_allclose(
        jax.jit(run)(x_init, jax.random.key(1)), run(x_init, jax.random.key(1)), atol=1e-5
    )
    with pytest.raises(ValueError, match="Unknown predictor"):
        pc_sampler(TOY.score, sde, x_init, jax.random.key(1), predictor="heun")
    with pytest.raises(ValueError, match="both are 'none'"):
        pc_sampler(TOY.score, sde, x_init, jax.random.key(1), predictor="none", corrector="none")


def test_zero_score_gives_a_finite_corrector_step():
    sde = VESDE(sigma_min=0.5, sigma_max=2.0, N=3)
    out = pc_sampler(
        lambda x, sigma: jnp.zeros_like(x), sde, jnp.ones((4, 2)), jax.random.key(0), predictor="none"
    )
    np.testing.assert_array_equal(out.samples, jnp.ones((4, 2)))


# ----------------------------------------------------------------------------------------------------
# The probability-flow ODE
# ----------------------------------------------------------------------------------------------------


def toy_transport_boundary(sigma_max: float, sigma_min: float) -> float:
    """The point b on the u = (1, 1)/√2 axis that the flow maps to the boundary between the two modes.

    Along u the mixture is 1-D and, orthogonally, every p_t is the same Gaussian for both components, so
    the flow is the monotone map between the marginals along u: F_1(b) = F_0(0), F_σ the CDF of
    0.8 N(+m, 1 + σ²) + 0.2 N(−m, 1 + σ²).
    """

    def cdf(b, sigma):
        scale = math.sqrt(1.0 + sigma**2)
        return 0.8 * stats.norm.cdf((b - MODE_SEPARATION) / scale) + 0.2 * stats.norm.cdf(
            (b + MODE_SEPARATION) / scale
        )

    target = cdf(0.0, sigma_min)
    return optimize.brentq(lambda b: cdf(b, sigma_max) - target, -50 * sigma_max, 50 * sigma_max)


def test_ode_sampler_is_the_toy_mixture_transport_map():
    sde = VESDE(sigma_min=0.01, sigma_max=100.0, N=1000)
    x_init = sde.prior_sampling(jax.random.key(10), (4000, 2))
    out = jax.jit(lambda x: ode_sampler(TOY.score, sde, x))(x_init)
    boundary = toy_transport_boundary(100.0, 0.01)
    predicted_weight = 1.0 - stats.norm.cdf(boundary / 100.0)
    assert predicted_weight == pytest.approx(0.788, abs=1e-3)  # the prior mismatch at σ_max = 100
    u_init = np.asarray(x_init).sum(axis=1) / math.sqrt(2.0)
    heavy = np.asarray(TOY.nearest_component(out.samples) == 0)
    np.testing.assert_array_equal(heavy, u_init > boundary)  # every sample lands on the predicted side
    assert abs(heavy.mean() - 0.8) < 0.04
    assert abs(heavy.mean() - predicted_weight) < 4 * math.sqrt(0.16 / heavy.size)
    # Tsit5 and Dopri5 integrate the same flow
    dopri = jax.jit(lambda x: ode_sampler(TOY.score, sde, x, solver="dopri5"))(x_init[:200])
    np.testing.assert_allclose(dopri.samples, out.samples[:200], atol=5e-3)


def test_ode_sampler_is_deterministic_and_invertible():
    sde = VESDE(sigma_min=0.01, sigma_max=100.0, N=1000)
    decode = jax.jit(lambda z: ode_sampler(TOY.score, sde, z, rtol=1e-6, atol=1e-6))
    encode = jax.jit(lambda x: ode_encode(TOY.score, sde, x, rtol=1e-6, atol=1e-6))
    z = sde.prior_sampling(jax.random.key(11), (256, 2))
    x = decode(z).samples
    np.testing.assert_array_equal(decode(z).samples, x)
    np.testing.assert_allclose(encode(x).latents, z, rtol=1e-4, atol=2e-3)  # |z| ~ 100
    data = TOY.sample(jax.random.key(12), 256)
    np.testing.assert_allclose(decode(encode(data).latents).samples, data, atol=1e-3)


def test_ode_n_evaluations_count_score_calls():
    sde = VESDE(sigma_min=0.01, sigma_max=20.0, N=1000)
    calls = []

    def counted_score(x, sigma):
        io_callback(
            lambda _: calls.append(1) or np.int32(0),
            jax.ShapeDtypeStruct((), jnp.int32),
            sigma[0],
            ordered=True,
        )
        return TOY.score(x, sigma)

    x = sde.prior_sampling(jax.random.key(13), (64, 2))
    for run in (
        lambda: ode_sampler(counted_score, sde, x, solver="dopri5", denoise=True),
        lambda: ode_encode(counted_score, sde, x / 20.0),  # Tsit5; log_likelihood uses the same solve
    ):
        calls.clear()
        n_evaluations = int(run().n_evaluations)
        assert n_evaluations == len(calls) > 20


# ----------------------------------------------------------------------------------------------------
# Likelihoods
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_likelihoods():
    """Exact-divergence log-likelihoods of 200 toy samples at σ_max = 10³ and their exact-trace twin."""
    sde = VESDE(sigma_min=0.01, sigma_max=1000.0, N=1000)
    x = TOY.sample(jax.random.key(14), 200)
    exact = jax.jit(lambda x: log_likelihood(TOY.score, sde, x, exact_divergence=True))(x)
    return sde, x, exact


def test_log_likelihood_equals_closed_form_density(toy_likelihoods):
    """log p_eps(x) of the mixture ∗ N(0, σ_min²I): ≤ 0.05 nats per example at σ_max = 10³ (at 300 the
    prior mismatch alone reaches 0.054); with the true p_1 in place of the prior, to solver tolerance."""
    sde, x, exact = toy_likelihoods
    closed_form = np.asarray(TOY.log_prob(x, 0.01))
    assert np.max(np.abs(np.asarray(exact.log_p) - closed_form)) < 0.05
    integral = exact.log_p - sde.prior_logp(exact.latents)
    with_true_prior = integral + TOY.log_prob(exact.latents, 1000.0)
    np.testing.assert_allclose(with_true_prior, TOY.log_prob(x, sde.sigma(1e-5)), atol=3e-3)


def test_hutchinson_likelihood_is_unbiased(toy_likelihoods):
    sde, x, exact = toy_likelihoods
    estimate = jax.jit(
        lambda x, key: log_likelihood(TOY.score, sde, x, key, projection="gaussian", n_projections=2)
    )(x, jax.random.key(15))
    difference = np.asarray(estimate.log_p - exact.log_p, np.float64)
    standard_error = difference.std() / math.sqrt(difference.size)
    assert abs(difference.mean()) < 4 * standard_error + 2e-3, (difference.mean(), standard_error)
    assert difference.std() > 0.01  # the estimate is random: the check above is not vacuous


def test_image_shaped_gaussian_likelihood_is_exact_with_rademacher_projections():
    """An isotropic Gaussian's score has a diagonal Jacobian, so Rademacher Hutchinson is exact."""
    mean, variance = 0.3, 0.05
    sde = VESDE(sigma_min=0.01, sigma_max=100.0, N=1000)
    x = mean + math.sqrt(variance) * jax.random.normal(jax.random.key(16), (8, 4, 4, 2))
    out = jax.jit(lambda x, key: log_likelihood(gaussian_score_fn(mean, variance), sde, x, key))(
        x, jax.random.key(17)
    )

    def gaussian_log_density(x, sigma):
        std = math.sqrt(variance + sigma**2)
        return stats.norm.logpdf(np.asarray(x, np.float64), mean, std).sum(axis=(1, 2, 3))

    # with p_1 = N(μ, (τ² + σ_max²) I) in place of the prior (whose mismatch is ≈ 0.02 nats here)
    with_true_prior = out.log_p - sde.prior_logp(out.latents) + gaussian_log_density(out.latents, 100.0)
    np.testing.assert_allclose(with_true_prior, gaussian_log_density(x, float(sde.sigma(1e-5))), atol=2e-3)


def test_ode_sample_likelihood_round_trip_matches_jacobian_determinant():
    """x = decode(z): log_likelihood(x) recovers z and equals log N(z; 0, σ_max²) − log|det ∂x/∂z|, the
    determinant from central differences of the sampler (a discrete change of variables)."""
    sde = VESDE(sigma_min=0.01, sigma_max=1000.0, N=1000)
    z = sde.prior_sampling(jax.random.key(18), (16, 2))
    step = 1.0  # |z| ~ 10³; the flow bends on a scale of ~10²
    offsets = step * jnp.asarray([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    decoded = jax.jit(lambda z: ode_sampler(TOY.score, sde, z, rtol=1e-7, atol=1e-7).samples)(
        (z[None] + offsets[:, None]).reshape(-1, 2)
    )
    x, plus_0, minus_0, plus_1, minus_1 = np.asarray(decoded, np.float64).reshape(5, 16, 2)
    jacobian = np.stack([plus_0 - minus_0, plus_1 - minus_1], axis=-1) / (2.0 * step)  # (16, 2, 2)
    log_det = np.linalg.slogdet(jacobian)[1]
    out = jax.jit(lambda x: log_likelihood(TOY.score, sde, x, exact_divergence=True))(
        jnp.asarray(x, jnp.float32)
    )
    np.testing.assert_allclose(out.latents, z, rtol=1e-4, atol=0.05)
    np.testing.assert_allclose(out.log_p, np.asarray(sde.prior_logp(z)) - log_det, atol=5e-3)
    np.testing.assert_allclose(out.log_p, TOY.log_prob(jnp.asarray(x, jnp.float32), 0.01), atol=0.05)


def test_bits_per_dim_offsets():
    # the uniform density on the data cube gives every 8-bit value probability 1/256: exactly 8 bits
    assert float(bits_per_dim(jnp.zeros(()), 3072)) == pytest.approx(8.0)
    uniform_on_minus_one_one = -3072 * math.log(2.0)  # data rescaled to [−1, 1): c = 2
    assert float(bits_per_dim(uniform_on_minus_one_one, 3072, data_scale=2.0)) == pytest.approx(8.0)
    assert float(bits_per_dim(jnp.zeros(()), 64, num_levels=17)) == pytest.approx(math.log2(17))
    # one nat per dimension is 1/ln 2 bits
    assert float(bits_per_dim(-64.0, 64)) == pytest.approx(8.0 + 1.0 / math.log(2.0))


def test_likelihood_rejects_exact_divergence_in_high_dimension():
    sde = VESDE(sigma_min=0.01, sigma_max=1.0, N=10)
    big = jnp.zeros((1, MAX_EXACT_DIVERGENCE_DIM + 1))
    with pytest.raises(ValueError, match="Hutchinson"):
        log_likelihood(gaussian_score_fn(0.0, 1.0), sde, big, exact_divergence=True)
    with pytest.raises(ValueError, match="PRNG key"):
        log_likelihood(gaussian_score_fn(0.0, 1.0), sde, jnp.zeros((1, 2)))


# ----------------------------------------------------------------------------------------------------
# Index-conditioned NCSN v1
# ----------------------------------------------------------------------------------------------------


def test_ncsn_v1_gets_a_clear_error_for_continuous_sigma_and_works_with_pc_on_its_table():
    table = noise.geometric_sigmas(20.0, 0.5, 10)
    ncsn_v1 = CondRefineNetDilated(sigmas=tuple(float(s) for s in table))
    assert supports_continuous_sigma(NCSNv2()) and supports_continuous_sigma(NoiseConditionalMLP())
    assert not supports_continuous_sigma(ncsn_v1)
    check_continuous_sigma(NCSNv2(), "the probability-flow ODE sampler")
    with pytest.raises(errors.UserError, match=r"ncsnv2.*'mlp'.*method='pc'"):
        check_continuous_sigma(ncsn_v1, "the probability-flow ODE sampler")

    # NCSN v1 looks σ up by its nearest level: PC on VESDE.from_sigmas only ever asks for table levels
    # (identical samples to the continuous score's)
    def table_score(x, sigma):
        return TOY.score(x, jnp.asarray(table)[nearest_level_index(sigma, table)])

    sde = VESDE.from_sigmas(table)
    x_init = sde.prior_sampling(jax.random.key(19), (64, 2))
    run = jax.jit(
        lambda score_fn, x: pc_sampler(score_fn, sde, x, jax.random.key(20)).samples, static_argnums=0
    )
    np.testing.assert_array_equal(run(table_score, x_init), run(TOY.score, x_init))


# ----------------------------------------------------------------------------------------------------
# Sharded batches
# ----------------------------------------------------------------------------------------------------


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from ncsn_jax import mixtures
    from ncsn_jax.sde import VESDE
    from ncsn_jax.sde_sampling import pc_sampler, ode_sampler
    from ncsn_jax.likelihood import log_likelihood

    assert jax.device_count() == 8, jax.devices()
    mixture = mixtures.ncsn_toy_mixture()
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=50)
    x_init = sde.prior_sampling(jax.random.key(1), (64, 2))
    data = mixture.sample(jax.random.key(2), 64)
    pc = jax.jit(lambda x, key: pc_sampler(mixture.score, sde, x, key).samples)
    ode = jax.jit(lambda x: ode_sampler(mixture.score, sde, x).samples)
    likelihood = jax.jit(lambda x, key: log_likelihood(mixture.score, sde, x, key).log_p)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    one_device = jax.devices()[0]
    for name, fn, args in (("pc", pc, (x_init, jax.random.key(3))), ("ode", ode, (x_init,)),
                           ("likelihood", likelihood, (data, jax.random.key(4)))):
        sharded_input = jax.device_put(args[0], sharding)
        assert len(sharded_input.sharding.device_set) == 8
        sharded = fn(sharded_input, *args[1:])
        single = fn(jax.device_put(args[0], one_device), *args[1:])
        np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-4, atol=1e-4, err_msg=name)
    print("SHARDED_OK")
    """
)


@pytest.mark.slow
def test_sharded_batches_give_the_same_results_as_one_device():
    result = run_python(SHARDED_SCRIPT, devices=8, timeout=300)
    assert result.returncode == 0 and "SHARDED_OK" in result.stdout, result.stderr[-3000:]
