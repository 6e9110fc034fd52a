"""Langevin samplers against closed forms: analytic mixture and Gaussian scores, exact moment recursions,
and a plain Python-loop second implementation of the chains."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_jax import mixtures, noise, sampling
from tests.helpers import run_python

# NCSN's toy experiment (Song & Ermon, 2019, Fig. 3): σ 20 → 1 geometric, L = 10, T = 100, ε = 0.1
# in Algorithm 1's convention (x + α/2 s + √α z), which is ours.
TOY_SIGMAS = noise.geometric_sigmas(20.0, 1.0, 10)
TOY_STEPS_EACH = 100
TOY_STEP_LR = 0.1
N_TOY = 5000


# ----------------------------------------------------------------------------------------------------
# Helpers: analytic scores, a Python-loop second implementation, exact Gaussian moment recursion
# ----------------------------------------------------------------------------------------------------


def gaussian_score_fn(mean, variance):
    """Score of N(mean, variance·I) convolved with N(0, σ²I): −(x − mean)/(variance + σ²)."""

    def score_fn(x, sigma):
        sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
        return -(x - mean) / (variance + sigma**2)

    return score_fn


def loop_annealed_langevin(score_fn, x, sigmas, key, n_steps_each, step_lr, *, mask=None, x_ref=None):
    """Algorithm 1 step by step in Python with the documented noise streams; returns (x, all iterates)."""
    noise_key, reference_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    sigmas = [float(s) for s in sigmas]
    iterates, t = [], 0
    for level, sigma in enumerate(sigmas):
        alpha = step_lr * (sigma / sigmas[-1]) ** 2
        if mask is not None:
            noisy_reference = x_ref + sigma * jax.random.normal(
                jax.random.fold_in(reference_key, level), x.shape
            )
        for _ in range(n_steps_each):
            if mask is not None:
                x = jnp.where(mask, noisy_reference, x)
            z = jax.random.normal(jax.random.fold_in(noise_key, t), x.shape)
            x = x + 0.5 * alpha * score_fn(x, jnp.full((x.shape[0],), sigma)) + np.sqrt(alpha) * z
            if mask is not None:
                x = jnp.where(mask, noisy_reference, x)
            iterates.append(x)
            t += 1
    if mask is not None:
        x = jnp.where(mask, x_ref, x)
    return x, iterates


def exact_gaussian_moments(mean0, var0, target_mean, target_var, sigmas, n_steps_each, step_lr):
    """Per-coordinate mean/variance of annealed Langevin on N(μ, τ²I), by exact linear recursion.

    Each step is x ← μ + a(x − μ) + √α z with a = 1 − α/(2(τ² + σᵢ²)), so
    mean ← μ + a(mean − μ), var ← a² var + α.
    """
    mean, var = float(mean0), float(var0)
    sigma_min = float(sigmas[-1])
    for sigma in np.asarray(sigmas, np.float64):
        alpha = step_lr * (sigma / sigma_min) ** 2
        contraction = 1.0 - alpha / (2.0 * (target_var + sigma**2))
        for _ in range(n_steps_each):
            mean = target_mean + contraction * (mean - target_mean)
            var = contraction**2 * var + alpha
    return mean, var


def assert_moments(samples, mean, var, n_sigmas=4.0):
    """Sample mean/variance (all coordinates pooled) within n_sigmas Monte-Carlo standard errors."""
    samples = np.asarray(samples, np.float64).ravel()
    n = samples.size
    assert abs(samples.mean() - mean) < n_sigmas * np.sqrt(var / n), (samples.mean(), mean)
    assert abs(samples.var() - var) < n_sigmas * var * np.sqrt(2.0 / n), (samples.var(), var)


# ----------------------------------------------------------------------------------------------------
# The analytic mixture itself
# ----------------------------------------------------------------------------------------------------


def test_mixture_score_is_gradient_of_log_prob_and_density_normalised():
    mixture = mixtures.GaussianMixture.create(
        weights=[0.5, 0.3, 0.2], means=[[0.0, 1.0], [2.0, -1.0], [-1.5, -0.5]], stds=[0.5, 1.0, 0.7]
    )
    x = jax.random.normal(jax.random.key(20), (16, 2)) * 2.0
    sigma = jnp.linspace(0.0, 2.0, 16)
    autodiff = jax.jit(jax.vmap(jax.grad(lambda xi, si: mixture.log_prob(xi[None], si[None])[0])))(x, sigma)
    np.testing.assert_allclose(jax.jit(mixture.score)(x, sigma), autodiff, rtol=1e-5, atol=1e-6)

    grid = np.linspace(-12.0, 12.0, 401)
    points = jnp.asarray(np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2), jnp.float32)
    cell = (grid[1] - grid[0]) ** 2
    density = jax.jit(lambda noise_level: jnp.exp(mixture.log_prob(points, noise_level)))
    for noise_level in (0.0, 1.5):
        total = float(np.sum(np.asarray(density(noise_level), np.float64))) * cell
        assert total == pytest.approx(1.0, abs=1e-4)


def test_toy_mixture_samples_have_closed_form_moments():
    mixture = mixtures.ncsn_toy_mixture()
    n = 20000
    sample = jax.jit(mixture.sample, static_argnums=1)
    for noise_level in (0.0, 2.0):
        samples = np.asarray(sample(jax.random.key(21), n, noise_level), np.float64)
        # per coordinate: mean 0.8·5 − 0.2·5 = 3, variance 1 + σ² + (0.8·25 + 0.2·25 − 9) = 17 + σ²
        assert_moments(samples[:, 0], 3.0, 17.0 + noise_level**2)
    heavy = float(jnp.mean(mixture.nearest_component(sample(jax.random.key(22), n, 0.0)) == 0))
    assert abs(heavy - 0.8) < 4 * np.sqrt(0.16 / n)


# ----------------------------------------------------------------------------------------------------
# NCSN's toy mixture: annealed Langevin recovers the weights, plain Langevin does not (Fig. 3)
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    mixture = mixtures.ncsn_toy_mixture()
    x_init = jax.random.uniform(jax.random.key(1), (N_TOY, 2), minval=-8.0, maxval=8.0)
    return mixture, x_init


def test_annealed_langevin_recovers_toy_mixture_weights(toy):
    mixture, x_init = toy
    samples = jax.jit(
        lambda x, key: (
            sampling.annealed_langevin_dynamics(
                mixture.score, x, TOY_SIGMAS, key, n_steps_each=TOY_STEPS_EACH, step_lr=TOY_STEP_LR
            ).samples
        )
    )(x_init, jax.random.key(0))
    heavy_fraction = float(jnp.mean(mixture.nearest_component(samples) == 0))
    assert abs(heavy_fraction - 0.8) <= 0.04, heavy_fraction
    assert abs((1.0 - heavy_fraction) - 0.2) <= 0.04


def test_plain_langevin_misses_toy_mixture_weights(toy):
    mixture, x_init = toy
    samples = jax.jit(
        lambda x, key: (
            sampling.langevin_dynamics(mixture.score, x, key, n_steps=1000, step_size=TOY_STEP_LR).samples
        )
    )(x_init, jax.random.key(0))
    heavy_fraction = float(jnp.mean(mixture.nearest_component(samples) == 0))
    initial_fraction = float(jnp.mean(mixture.nearest_component(x_init) == 0))
    assert abs(heavy_fraction - 0.8) > 0.15, heavy_fraction  # stuck near the initial split
    assert abs(heavy_fraction - initial_fraction) < 0.02


# ----------------------------------------------------------------------------------------------------
# Gaussian targets: exact moments, including the discretisation bias
# ----------------------------------------------------------------------------------------------------


def test_langevin_gaussian_stationary_variance_has_discretisation_bias():
    mean, variance, step_size = 1.5, 0.5, 0.4
    n = 20000
    samples = sampling.langevin_dynamics(
        lambda x: -(x - mean) / variance,
        jnp.zeros((n, 2)),
        jax.random.key(3),
        n_steps=60,
        step_size=step_size,
    ).samples
    stationary_var = variance / (1.0 - step_size / (4.0 * variance))  # fixed point of var ← a² var + ε
    assert_moments(samples, mean, stationary_var)
    assert abs(np.var(np.asarray(samples)) - variance) > 0.1  # the unbiased variance is clearly rejected


@pytest.mark.parametrize("denoise", [False, True])
def test_annealed_langevin_gaussian_moments(denoise):
    mean, variance = -1.0, 0.5
    sigmas = noise.geometric_sigmas(3.0, 0.3, 5)
    n_steps_each, step_lr, n = 100, 0.05, 20000
    x_init = jax.random.uniform(jax.random.key(4), (n, 2), minval=-8.0, maxval=8.0)
    samples = sampling.annealed_langevin_dynamics(
        gaussian_score_fn(mean, variance),
        x_init,
        sigmas,
        jax.random.key(5),
        n_steps_each=n_steps_each,
        step_lr=step_lr,
        denoise=denoise,
    ).samples
    chain_mean, chain_var = exact_gaussian_moments(
        0.0, 64.0 / 3.0, mean, variance, sigmas, n_steps_each, step_lr
    )
    if denoise:  # x + σ_L² s(x, σ_L) = μ + b(x − μ), b = 1 − σ_L²/(τ² + σ_L²)
        shrink = 1.0 - float(sigmas[-1]) ** 2 / (variance + float(sigmas[-1]) ** 2)
        chain_mean, chain_var = mean + shrink * (chain_mean - mean), shrink**2 * chain_var
    assert_moments(samples, chain_mean, chain_var)
    if not denoise:  # the last level has (nearly) reached the biased stationary law of p_{σ_L}
        level_var = variance + float(sigmas[-1]) ** 2
        assert chain_var == pytest.approx(level_var / (1.0 - step_lr / (4.0 * level_var)), rel=1e-3)


def test_denoise_moves_samples_by_sigma_min_squared_times_score(toy):
    mixture, x_init = toy
    x_init = x_init[:256]

    def run(denoise):
        return sampling.annealed_langevin_dynamics(
            mixture.score,
            x_init,
            TOY_SIGMAS,
            jax.random.key(6),
            n_steps_each=10,
            step_lr=TOY_STEP_LR,
            denoise=denoise,
        ).samples

    plain, denoised = jax.jit(lambda: (run(False), run(True)))()
    sigma_min = float(TOY_SIGMAS[-1])
    expected = plain + sigma_min**2 * mixture.score(plain, jnp.full((256,), sigma_min))
    np.testing.assert_allclose(denoised, expected, rtol=1e-6, atol=1e-5)
    assert float(jnp.max(jnp.abs(denoised - plain))) > 0.1


# ----------------------------------------------------------------------------------------------------
# Second implementation: trajectories and inpainting against the Python loop
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [1, 3, 5])
def test_annealed_trajectory_is_every_kth_iterate(toy, every):
    mixture, x_init = toy
    x_init, sigmas, key = x_init[:3], TOY_SIGMAS[::3], jax.random.key(7)  # L = 4, T = 3: 12 steps
    samples, trajectory, _ = jax.jit(
        lambda x: sampling.annealed_langevin_dynamics(
            mixture.score, x, sigmas, key, n_steps_each=3, step_lr=TOY_STEP_LR, trajectory_every=every
        )
    )(x_init)
    expected_samples, iterates = loop_annealed_langevin(mixture.score, x_init, sigmas, key, 3, TOY_STEP_LR)
    expected_trajectory = np.stack(iterates[every - 1 :: every])
    assert trajectory.shape == (12 // every, 3, 2)
    np.testing.assert_allclose(trajectory, expected_trajectory, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(samples, expected_samples, rtol=1e-5, atol=1e-5)


def test_langevin_trajectory_is_every_kth_iterate(toy):
    mixture, x_init = toy
    x_init, key = x_init[:4], jax.random.key(8)
    samples, trajectory, _ = sampling.langevin_dynamics(
        mixture.score, x_init, key, n_steps=7, step_size=0.1, trajectory_every=2
    )
    x, iterates = x_init, []
    for t in range(7):
        z = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, 0), t), x.shape)
        x = x + 0.05 * mixture.score(x) + np.sqrt(0.1) * z
        iterates.append(x)
    np.testing.assert_allclose(trajectory, np.stack(iterates[1::2]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(samples, x, rtol=1e-5, atol=1e-5)


def test_inpainting_matches_python_loop_and_keeps_known_entries(toy):
    mixture, _ = toy
    key = jax.random.key(9)
    x_ref = jnp.array([[4.0, 6.0], [-5.0, -4.0], [0.5, 0.0]])
    mask = jnp.array([1.0, 0.0])  # first coordinate known, broadcast over the batch
    x_init = jax.random.uniform(jax.random.key(10), (3, 2), minval=-8.0, maxval=8.0)
    sigmas = TOY_SIGMAS[::3]
    samples, trajectory, _ = sampling.annealed_langevin_inpainting(
        mixture.score,
        x_ref,
        mask,
        x_init,
        sigmas,
        key,
        n_steps_each=3,
        step_lr=TOY_STEP_LR,
        trajectory_every=4,
    )
    expected, iterates = loop_annealed_langevin(
        mixture.score,
        x_init,
        sigmas,
        key,
        3,
        TOY_STEP_LR,
        mask=jnp.broadcast_to(mask, (3, 2)) > 0,
        x_ref=x_ref,
    )
    np.testing.assert_array_equal(samples[:, 0], x_ref[:, 0])
    np.testing.assert_allclose(samples, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(trajectory, np.stack(iterates[3::4]), rtol=1e-5, atol=1e-5)


def test_inpainting_with_empty_mask_is_annealed_langevin(toy):
    mixture, x_init = toy
    x_init, key = x_init[:64], jax.random.key(11)
    kwargs = dict(n_steps_each=5, step_lr=TOY_STEP_LR, denoise=True)
    inpainted, plain = jax.jit(
        lambda x: (
            sampling.annealed_langevin_inpainting(
                mixture.score, jnp.zeros_like(x), jnp.zeros((2,)), x, TOY_SIGMAS, key, **kwargs
            ),
            sampling.annealed_langevin_dynamics(mixture.score, x, TOY_SIGMAS, key, **kwargs),
        )
    )(x_init)
    # Samples and level_finite alike (no trajectory in either).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), inpainted, plain)


def test_inpainting_fills_gaussian_conditional_mean():
    # x ~ N(0, Σ), Σ = [[1, ρ], [ρ, 1]]; x₀ known = 2. At the last level the chain samples
    # p_{σ_L}(x₁ | x̃₀ = 2 + σ_L z) whose mean, averaged over z, is ρ'·2 with ρ' = ρ/(1 + σ_L²).
    rho, known_value, n = 0.8, 2.0, 4000
    sigmas = noise.geometric_sigmas(3.0, 0.3, 6)
    covariance = jnp.array([[1.0, rho], [rho, 1.0]])

    def score_fn(x, sigma):
        precision = jnp.linalg.inv(covariance[None] + sigma[:, None, None] ** 2 * jnp.eye(2)[None])
        return -jnp.einsum("bij,bj->bi", precision, x)

    x_ref = jnp.tile(jnp.array([[known_value, 0.0]]), (n, 1))
    x_init = jax.random.uniform(jax.random.key(12), (n, 2), minval=-8.0, maxval=8.0)
    samples = sampling.annealed_langevin_inpainting(
        score_fn,
        x_ref,
        jnp.array([True, False]),
        x_init,
        sigmas,
        jax.random.key(13),
        n_steps_each=100,
        step_lr=0.05,
    ).samples
    np.testing.assert_array_equal(samples[:, 0], known_value)
    sigma_min2 = float(sigmas[-1]) ** 2
    expected_mean = rho / (1.0 + sigma_min2) * known_value
    conditional_var = (
        (1 + sigma_min2) - rho**2 / (1 + sigma_min2) + (rho / (1 + sigma_min2)) ** 2 * sigma_min2
    )
    standard_error = np.sqrt(1.1 * conditional_var / n)  # 10% slack for the chain's variance inflation
    assert abs(float(jnp.mean(samples[:, 1])) - expected_mean) < 4 * standard_error
    assert abs(float(jnp.mean(samples[:, 1])) - rho * known_value) > 4 * standard_error  # σ_L matters


# ----------------------------------------------------------------------------------------------------
# Interpolation
# ----------------------------------------------------------------------------------------------------


def test_interpolation_weights_are_exact_at_endpoints_and_spherical():
    weight_p, weight_q = sampling.interpolation_weights(7)
    assert (float(weight_p[0]), float(weight_q[0])) == (1.0, 0.0)
    assert (float(weight_p[-1]), float(weight_q[-1])) == (0.0, 1.0)
    np.testing.assert_allclose(weight_p**2 + weight_q**2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(weight_q, np.sin(np.pi / 2 * np.linspace(0, 1, 7)), atol=1e-7)


def test_interpolate_endpoints_are_independent_runs_and_middle_is_spherical_mix():
    mean, variance = 0.5, 0.3
    score_fn = gaussian_score_fn(mean, variance)
    sigmas = noise.geometric_sigmas(2.0, 0.2, 4)
    kwargs = dict(n_steps_each=10, step_lr=0.02)
    key = jax.random.key(14)
    x_init = jax.random.uniform(jax.random.key(15), (3, 4, 4, 1))  # 3 rows of 4x4 "images"
    key_p, key_q = jax.random.split(key)

    @jax.jit
    def interpolation_and_endpoint_runs(x):
        return (
            sampling.interpolate(score_fn, x, sigmas, key, n_interpolations=5, **kwargs).samples,
            sampling.annealed_langevin_dynamics(score_fn, x, sigmas, key_p, **kwargs).samples,
            sampling.annealed_langevin_dynamics(score_fn, x, sigmas, key_q, **kwargs).samples,
        )

    samples, run_p, run_q = interpolation_and_endpoint_runs(x_init)
    assert samples.shape == (3, 5, 4, 4, 1)
    np.testing.assert_allclose(samples[:, 0], run_p, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(samples[:, -1], run_q, rtol=1e-6, atol=1e-6)

    # The score is linear, so every chain is  d + (linear map of its noise), with d the noise-free run;
    # chain j's noise is w_p z_p + w_q z_q, hence  x_j − d = w_p (x_p − d) + w_q (x_q − d).
    deterministic = np.asarray(x_init, np.float64)
    for sigma in np.asarray(sigmas, np.float64):
        alpha = kwargs["step_lr"] * (sigma / float(sigmas[-1])) ** 2
        for _ in range(kwargs["n_steps_each"]):
            deterministic = deterministic - 0.5 * alpha * (deterministic - mean) / (variance + sigma**2)
    weight_p, weight_q = (np.asarray(w, np.float64) for w in sampling.interpolation_weights(5))
    for j in range(5):
        expected = (
            deterministic + weight_p[j] * (run_p - deterministic) + weight_q[j] * (run_q - deterministic)
        )
        np.testing.assert_allclose(samples[:, j], expected, rtol=1e-4, atol=1e-4)
    for endpoint in (run_p, run_q):  # the middle chain is neither end point
        assert float(jnp.max(jnp.abs(samples[:, 2] - endpoint))) > 0.05


# ----------------------------------------------------------------------------------------------------
# Determinism, jit, vmap, sharding, diagnostics
# ----------------------------------------------------------------------------------------------------


def _short_run(x, key):
    return sampling.annealed_langevin_dynamics(
        mixtures.ncsn_toy_mixture().score, x, TOY_SIGMAS, key, n_steps_each=5, step_lr=TOY_STEP_LR
    ).samples


_short_run_jit = jax.jit(_short_run)


def test_same_key_same_samples_and_jit_matches_eager(toy):
    _, x_init = toy
    x_init = x_init[:32]
    first, second = _short_run_jit(x_init, jax.random.key(16)), _short_run_jit(x_init, jax.random.key(16))
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, _short_run_jit(x_init, jax.random.key(17)))
    np.testing.assert_allclose(first, _short_run(x_init, jax.random.key(16)), rtol=1e-5, atol=1e-5)


def test_vmap_over_keys_matches_separate_runs(toy):
    _, x_init = toy
    x_init = x_init[:32]
    keys = jax.random.split(jax.random.key(18), 3)
    batched = jax.jit(jax.vmap(_short_run, in_axes=(None, 0)))(x_init, keys)
    for i in range(3):
        np.testing.assert_allclose(batched[i], _short_run_jit(x_init, keys[i]), rtol=1e-5, atol=1e-5)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from ncsn_jax import mixtures, noise, sampling

    assert jax.device_count() == 8, jax.devices()
    mixture = mixtures.ncsn_toy_mixture()
    sigmas = noise.geometric_sigmas(20.0, 1.0, 10)
    x = jax.random.uniform(jax.random.key(1), (64, 2), minval=-8.0, maxval=8.0)
    run = jax.jit(lambda x, key: sampling.annealed_langevin_dynamics(
        mixture.score, x, sigmas, key, n_steps_each=10, step_lr=0.1, denoise=True).samples)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    x_sharded = jax.device_put(x, sharding)
    assert len(x_sharded.sharding.device_set) == 8
    sharded = run(x_sharded, jax.random.key(2))
    unsharded = run(jax.device_put(x, jax.devices()[0]), jax.random.key(2))
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(unsharded), rtol=1e-5, atol=1e-5)
    print("SHARDED_OK")
    """
)


def test_sharded_batch_gives_same_samples():
    result = run_python(SHARDED_SCRIPT, devices=8, timeout=300)
    assert result.returncode == 0 and "SHARDED_OK" in result.stdout, result.stderr[-3000:]


DRAW_SAMPLES_SHARDED = """
import jax, numpy as np
from configs import toy
from ncsn_jax import config_lib, generate, models, parallel

assert jax.device_count() == 8, jax.devices()
config = toy.get_config()
config.model.hidden_dims = (32, 32)
config.sampling.n_steps_each = 3
config.sampling.n_interpolations = 2
shape = (4, 4, 1)  # the MLP flattens any example shape: images for inpainting without a conv net
model = models.create(config)
params = models.init_variables(model, jax.random.PRNGKey(0), (1, *shape))["params"]
sigmas = config_lib.sigmas(config)
reference = np.random.default_rng(0).uniform(size=(16, *shape)).astype(np.float32)

spread = []  # pieces the sampler's output is split into along the batch (it follows the input batch)
gather = parallel.to_host
parallel.to_host = lambda x: (spread.append(x.shape[0] // x.addressable_shards[0].data.shape[0]), gather(x))[1]
for method in ("annealed_langevin", "pc", "inpainting", "interpolation"):
    drawn = {}
    for n_devices in (8, 1):
        spread.clear()
        drawn[n_devices] = generate.draw_samples(
            config, model, params, sigmas, jax.random.PRNGKey(5), 16, shape,
            parallel.create_mesh(jax.devices()[:n_devices]), method=method,
            reference=reference if method == "inpainting" else None,
        ).samples
        assert spread[0] == n_devices, (method, n_devices, spread)
    assert drawn[8].shape == (16, *shape) and np.all(np.isfinite(drawn[8])), method
    np.testing.assert_allclose(drawn[8], drawn[1], rtol=1e-5, atol=1e-5, err_msg=method)
print("DRAW_SAMPLES_SHARDED_OK")
"""


@pytest.mark.slow
def test_draw_samples_splits_every_method_over_the_mesh():
    """``generate.draw_samples`` runs every method the same way: its chains split over all 8 devices of the
    mesh it is given (1 device: on that one), with the same samples either way."""
    result = run_python(DRAW_SAMPLES_SHARDED, devices=8, timeout=300)
    assert result.returncode == 0 and "DRAW_SAMPLES_SHARDED_OK" in result.stdout, result.stderr[-3000:]


def test_level_finite_flags_first_nonfinite_level():
    sigmas = jnp.array([8.0, 4.0, 2.0, 1.0])

    def breaks_below_three(x, sigma):  # NaN score from σ = 2 on
        return jnp.where(sigma[:, None] < 3.0, jnp.nan, -x)

    x_init = jnp.ones((4, 3))
    samples, trajectory, level_finite = sampling.annealed_langevin_dynamics(
        breaks_below_three,
        x_init,
        sigmas,
        jax.random.key(19),
        n_steps_each=2,
        step_lr=0.01,
    )
    assert trajectory is None
    np.testing.assert_array_equal(level_finite, [True, True, False, False])
    assert sampling.first_nonfinite_level(level_finite) == 2
    assert not np.isfinite(np.asarray(samples)).any()

    samples, trajectory, level_finite = sampling.annealed_langevin_dynamics(
        lambda x, sigma: -x,
        x_init,
        sigmas,
        jax.random.key(19),
        n_steps_each=2,
        step_lr=0.01,
        trajectory_every=2,
    )
    assert trajectory.shape == (4, 4, 3)
    assert sampling.first_nonfinite_level(level_finite) is None


def test_invalid_step_counts_are_rejected(toy):
    mixture, x_init = toy
    with pytest.raises(ValueError, match="n_steps_each"):
        sampling.annealed_langevin_dynamics(
            mixture.score, x_init, TOY_SIGMAS, jax.random.key(0), n_steps_each=0, step_lr=0.1
        )
    with pytest.raises(ValueError, match="trajectory_every"):
        sampling.langevin_dynamics(
            mixture.score, x_init, jax.random.key(0), n_steps=3, step_size=0.1, trajectory_every=0
        )


def test_toy_scatter_title_gives_the_step_and_the_weight_of_the_plus_five_mode(tmp_path, monkeypatch):
    """The picture of ``--mode=sample`` on the toy mixture names the checkpoint's step and the weight the
    README quotes (0.8 is the truth): here 3 of 4 samples near +5·1."""
    from configs import toy
    from ncsn_jax import generate, plotting

    titles = []
    monkeypatch.setattr(plotting, "save_scatter", lambda samples, path, **kw: titles.append(kw["title"]))
    samples = np.array([[5.0, 4.0], [6.0, 5.5], [-5.0, -5.0], [4.5, 5.0]], np.float32)
    generate.write_samples(samples, str(tmp_path), toy.get_config(), step=1500)
    assert titles == ["step 1500: 4 samples, weight of the +5 mode 0.750 (true 0.8)"]
    np.testing.assert_array_equal(np.load(tmp_path / "samples.npz")["samples"], samples)
