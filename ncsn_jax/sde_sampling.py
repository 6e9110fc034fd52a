"""Samplers of the VE SDE (:mod:`ncsn_jax.sde`): predictor–corrector (PC) and the probability-flow ODE.

Both reverse ``dx = g(t) dW`` from the prior ``N(0, σ_max² I)`` at t = 1 to the data at t ≈ 0 with a
noise-conditional score ``score_fn(x, sigma)`` (``sigma`` of shape ``(B,)``; ``s(x, σ(t)) ≈ ∇ₓ log p_t``),
following score_sde (Song et al., 2021):

* :func:`pc_sampler` — one ``lax.scan`` over the N levels ``σ₁ > … > σ_N`` of :attr:`VESDE.discrete_sigmas`
  (time grid ``tᵢ = 1 − i/(N − 1)``, ``σ(tᵢ) = σᵢ``). At level i: ``n_steps_corrector`` corrector steps, then
  one predictor step, each using ``s(x, σᵢ)``. With ``sde = VESDE.from_sigmas(model.sigmas)`` the score is
  only ever asked for the model's own levels, so this works for NCSN v1 too.

  Predictors (``σ_{N+1} = 0`` after the last level):

  - ``"reverse_diffusion"`` (score_sde's default for VE): ``x ← x + (σᵢ² − σᵢ₊₁²) s + √(σᵢ² − σᵢ₊₁²) z``,
    the reverse of the forward chain's discretisation :meth:`VESDE.discretize`.
  - ``"ancestral"`` (SMLD ancestral sampling, score_sde's ``ancestral_sampling``):
    ``x ← x + (σᵢ² − σᵢ₊₁²) s + √(σᵢ₊₁² (σᵢ² − σᵢ₊₁²) / σᵢ²) z``.
  - ``"euler_maruyama"``: ``x ← x + g(tᵢ)² s Δt + g(tᵢ) √Δt z`` with ``Δt = 1/N`` (score_sde's step size).
  - ``"none"``: corrector only.

  Corrector ``"langevin"`` (score_sde's ``LangevinCorrector`` for VE): the step size comes from a target
  signal-to-noise ratio ``r = snr``::

      ε = 2 (r ‖z‖ / ‖s‖)²,   x ← x + ε s + √(2ε) z,

  with ``‖z‖`` and ``‖s‖`` the per-example norms averaged over the whole batch (as score_sde's pmean over
  devices). That is our Langevin step ``x + (α/2) s + √α z`` with ``α = 2ε`` (:mod:`ncsn_jax.sampling`'s
  convention). A batch whose score is exactly zero (e.g. an untrained network) gets ε = 0 instead of NaN.
  For a Gaussian target ``N(μ, vI)`` the chain's stationary variance is ``v (1 + snr²)`` per coordinate
  (ε → 2 snr² v²/w at variance w, and w = v/(1 − ε/(2v))).

  ``denoise=True`` returns the last update's noise-free mean, as score_sde: with a predictor, the
  predictor's mean at the last level, which for ``"reverse_diffusion"`` and ``"ancestral"`` is Tweedie's
  ``x + σ_N² s(x, σ_N)`` (NCSNv2's denoising step) — no extra score evaluation.

* :func:`ode_sampler` — integrates the probability-flow ODE ``dx/dt = −½ g(t)² s(x, σ(t))`` from t = 1 down
  to ``eps`` with diffrax's adaptive Runge–Kutta (Tsit5 or Dopri5, PID step-size control on the whole batch
  as one state, as score_sde's ``solve_ivp`` on the flattened batch). Deterministic: the samples are a
  function of ``x_init``; :func:`ode_encode` integrates forward (t = eps → 1) and is its inverse to solver
  tolerance. A deterministic flow carries the mismatch between ``N(0, σ_max² I)`` and the true ``p_1`` into
  the samples (on NCSN's toy mixture the heavy mode gets ≈ 0.746 at σ_max = 20, ≈ 0.788 at σ_max = 100).
  Needs a model that accepts any σ (:func:`ncsn_jax.sde.check_continuous_sigma`).

Randomness (PC). The predictor noise of level ``i`` is ``normal(fold_in(fold_in(key, 0), i), x.shape)`` and
the corrector noise of its ``j``-th step ``normal(fold_in(fold_in(key, 1), i·n_steps_corrector + j),
x.shape)``, drawn for the whole batch, so ``jit`` and sharded batches give the same samples as one device.

Cost. Every sampler returns ``n_evaluations``, the number of calls of ``score_fn`` on the batch: PC
``N·(n_steps_corrector·[corrector] + [predictor])``; ODE ``1 + (stages − 1)·steps`` for diffrax's
first-same-as-last Runge–Kutta methods (7 stages for both Tsit5 and Dopri5; ``steps`` counts accepted and
rejected steps), ``+ 1`` with ``denoise``.

Example::

    sde = VESDE(sigma_min=0.01, sigma_max=100.0, N=1000)
    x_T = sde.prior_sampling(jax.random.key(0), (5000, 2))
    pc = jax.jit(lambda x, key: pc_sampler(mixture.score, sde, x, key))(x_T, jax.random.key(1))
    ode = jax.jit(lambda x: ode_sampler(mixture.score, sde, x))(x_T)
    pc.samples, ode.samples, ode.n_evaluations
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import chex
import diffrax
import jax
import jax.numpy as jnp

from ncsn_jax.sampling import _check_positive_int, _langevin_update, _step_noise
from ncsn_jax.sde import VESDE

Array = jax.Array
NoiseConditionalScoreFn = Callable[[Array, Array], Array]

PREDICTORS: tuple[str, ...] = ("reverse_diffusion", "ancestral", "euler_maruyama", "none")
CORRECTORS: tuple[str, ...] = ("langevin", "none")
ODE_SOLVERS: dict[str, type[diffrax.AbstractRungeKutta]] = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}

_PREDICTOR_STREAM = 0  # fold_in index of the per-level predictor noise
_CORRECTOR_STREAM = 1  # fold_in index of the per-step corrector noise


class SDESamples(NamedTuple):
    """A sampler's output: ``samples`` ``(B, *dims)`` and ``n_evaluations``, the calls of ``score_fn``."""

    samples: Array
    n_evaluations: Array | int


class ODEEncoding(NamedTuple):
    """:func:`ode_encode`'s output: ``latents`` ``(B, *dims)`` at t = 1 and the calls of ``score_fn``."""

    latents: Array
    n_evaluations: Array


# ----------------------------------------------------------------------------------------------------
# Predictor–corrector sampling
# ----------------------------------------------------------------------------------------------------


def _per_example_norm_mean(values: Array) -> Array:
    """Mean over the batch of the per-example Euclidean norms ``‖v_b‖`` (float32)."""
    flat = values.reshape(values.shape[0], -1).astype(jnp.float32)
    return jnp.mean(jnp.sqrt(jnp.sum(flat**2, axis=-1)))


def langevin_corrector_step_size(score: Array, noise: Array, snr) -> Array:
    """score_sde's Langevin corrector step ``ε = 2 (snr · mean_b ‖z_b‖ / mean_b ‖s_b‖)²`` (0 if ``s ≡ 0``).

    The update is ``x + ε s + √(2ε) z``, i.e. our ``x + (α/2) s + √α z`` with ``α = 2ε``.
    """
    score_norm = _per_example_norm_mean(score)
    noise_norm = _per_example_norm_mean(noise)
    ratio = snr * noise_norm / jnp.where(score_norm > 0, score_norm, 1.0)
    return jnp.where(score_norm > 0, 2.0 * ratio**2, 0.0)


def _predictor_update(
    predictor: str, sde: VESDE, score: Array, x: Array, level: Array, noise: Array
) -> tuple[Array, Array]:
    """``(x_next, x_mean)`` of one predictor step from level ``level`` (see the module docstring)."""
    sigma, sigma_next = sde.level_sigmas(level)
    if predictor in ("reverse_diffusion", "ancestral"):
        variance_removed = sigma**2 - sigma_next**2
        x_mean = x + variance_removed * score
        if predictor == "reverse_diffusion":
            std = jnp.sqrt(variance_removed)
        else:
            std = jnp.sqrt(sigma_next**2 * variance_removed / sigma**2)
    elif predictor == "euler_maruyama":
        dt = 1.0 / sde.N
        g = sde.diffusion(jnp.asarray(sde.discrete_times)[level])
        x_mean = x + g**2 * dt * score
        std = g * math.sqrt(dt)
    else:  # pragma: no cover - validated by pc_sampler
        raise AssertionError(predictor)
    x_mean = x_mean.astype(x.dtype)
    return (x_mean + std * noise).astype(x.dtype), x_mean


def pc_sampler(
    score_fn: NoiseConditionalScoreFn,
    sde: VESDE,
    x_init: Array,
    key: Array,
    *,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_steps_corrector: int = 1,
    denoise: bool = True,
) -> SDESamples:
    """Predictor–corrector sampling of the reverse VE SDE on the N levels of ``sde`` (score_sde's PC).

    For each level ``i = 0 … N − 1`` (σᵢ = ``sde.discrete_sigmas[i]``, descending): ``n_steps_corrector``
    Langevin corrector steps at σᵢ, then one predictor step from σᵢ to σᵢ₊₁ (σ_N = 0); formulas in the
    module docstring. The whole run is one ``lax.scan`` over the levels.

    Args:
      score_fn: noise-conditional score ``score_fn(x, sigma) -> s``, ``sigma`` of shape ``(B,)``.
      sde: the VE SDE; for an index-conditioned model use ``VESDE.from_sigmas(model.sigmas)``.
      x_init: ``(B, *dims)`` initial state, normally ``sde.prior_sampling(key, shape)``.
      key: PRNG key of the predictor and corrector noise (streams in the module docstring).
      predictor: one of :data:`PREDICTORS`.
      corrector: one of :data:`CORRECTORS`.
      snr: the corrector's target signal-to-noise ratio ``r`` (score_sde: 0.16 for VE on CIFAR-10).
      n_steps_corrector: corrector steps per level (Python int).
      denoise: return the last update's mean (see the module docstring) instead of its noisy state.

    Returns:
      :class:`SDESamples` with ``n_evaluations = N·(n_steps_corrector·[corrector] + [predictor])``.
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"Unknown predictor {predictor!r}; valid: {', '.join(PREDICTORS)}.")
    if corrector not in CORRECTORS:
        raise ValueError(f"Unknown corrector {corrector!r}; valid: {', '.join(CORRECTORS)}.")
    if predictor == "none" and corrector == "none":
        raise ValueError("pc_sampler needs a predictor or a corrector; both are 'none'.")
    n_steps_corrector = _check_positive_int("n_steps_corrector", n_steps_corrector)
    chex.assert_rank(x_init, {*range(2, 8)})
    if not isinstance(sde, VESDE):
        raise TypeError(f"pc_sampler needs an ncsn_jax.sde.VESDE; got {type(sde).__name__}.")
    batch_size = x_init.shape[0]
    sigmas = jnp.asarray(sde.discrete_sigmas)
    predictor_key = jax.random.fold_in(key, _PREDICTOR_STREAM)
    corrector_key = jax.random.fold_in(key, _CORRECTOR_STREAM)

    def score_at(x: Array, level: Array) -> Array:
        score = score_fn(x, jnp.full((batch_size,), sigmas[level], jnp.float32))
        chex.assert_shape(score, x.shape)
        return score

    def corrector_steps(x: Array, x_mean: Array, level: Array) -> tuple[Array, Array]:
        def step(carry, j):
            x, _ = carry
            score = score_at(x, level)
            noise = _step_noise(corrector_key, level * n_steps_corrector + j, x.shape, x.dtype)
            epsilon = langevin_corrector_step_size(score, noise, snr)
            x_mean = (x + epsilon * score).astype(x.dtype)
            return (_langevin_update(x, score, 2.0 * epsilon, noise), x_mean), None

        (x, x_mean), _ = jax.lax.scan(step, (x, x_mean), jnp.arange(n_steps_corrector))
        return x, x_mean

    def level_step(carry, level):
        x, x_mean = carry
        if corrector == "langevin":
            x, x_mean = corrector_steps(x, x_mean, level)
        if predictor != "none":
            noise = _step_noise(predictor_key, level, x.shape, x.dtype)
            x, x_mean = _predictor_update(predictor, sde, score_at(x, level), x, level, noise)
        return (x, x_mean), None

    (x, x_mean), _ = jax.lax.scan(level_step, (x_init, x_init), jnp.arange(sde.N))
    per_level = (n_steps_corrector if corrector != "none" else 0) + (predictor != "none")
    return SDESamples(samples=x_mean if denoise else x, n_evaluations=sde.N * per_level)


# ----------------------------------------------------------------------------------------------------
# Probability-flow ODE
# ----------------------------------------------------------------------------------------------------


def _ode_solver(solver: str) -> diffrax.AbstractRungeKutta:
    if solver not in ODE_SOLVERS:
        raise ValueError(f"Unknown ODE solver {solver!r}; valid: {', '.join(ODE_SOLVERS)}.")
    return ODE_SOLVERS[solver]()


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps (the ODE's end time near the data) must be in [0, 1); got {eps}.")


def solve_ode(
    vector_field: Callable[[Array, object], object],
    y0,
    *,
    t0: float,
    t1: float,
    rtol: float,
    atol: float,
    solver: str,
    max_steps: int,
):
    """Integrates ``dy/dt = vector_field(t, y)`` from ``t0`` to ``t1`` (either direction) with diffrax.

    Adaptive ``solver`` (:data:`ODE_SOLVERS`) with a PID controller on the RMS norm of the whole state
    ``y`` (a pytree), initial step chosen automatically. Used by the ODE sampler and the likelihood.

    Returns:
      ``(y(t1), n_evaluations)``: the number of ``vector_field`` calls, ``1 + (stages − 1)·steps`` for
      diffrax's first-same-as-last Runge–Kutta methods (accepted and rejected steps).
    """
    method = _ode_solver(solver)
    tableau = method.tableau
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: vector_field(t, y)),
        method,
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
    )
    y1 = jax.tree.map(lambda leaf: leaf[0], solution.ys)
    steps = solution.stats["num_steps"]
    per_step = tableau.num_stages - 1 if tableau.fsal else tableau.num_stages
    return y1, (int(tableau.fsal) + per_step * steps).astype(jnp.int32)


def ode_sampler(
    score_fn: NoiseConditionalScoreFn,
    sde: VESDE,
    x_init: Array,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    solver: str = "tsit5",
    denoise: bool = False,
    max_steps: int = 4096,
) -> SDESamples:
    """Samples by integrating the probability-flow ODE ``dx/dt = −½ g(t)² s(x, σ(t))`` from t = 1 to ``eps``.

    The result is a sample of ``p_eps = p_data ∗ N(0, σ(eps)² I)`` (σ(eps) ≈ σ_min) if ``x_init`` is one of
    ``p_1``; with ``denoise`` Tweedie's step ``x + σ(eps)² s(x, σ(eps))`` follows (score_sde's
    ``noise_removal``, one more evaluation).

    Args:
      score_fn: noise-conditional score ``score_fn(x, sigma)``, ``sigma`` ``(B,)``; must accept any σ > 0.
      sde: the VE SDE (only σ_min, σ_max are used, not N).
      x_init: ``(B, *dims)`` start at t = 1, normally ``sde.prior_sampling(key, shape)``.
      rtol, atol: the adaptive solver's tolerances (on the whole batch as one state).
      eps: end time near the data, ``0 ≤ eps < 1``.
      solver: ``"tsit5"`` or ``"dopri5"`` (score_sde used RK45, i.e. Dormand–Prince 5(4)).
      denoise: apply the final denoising step.
      max_steps: the solver's step limit (diffrax raises when it is reached).

    Returns:
      :class:`SDESamples` (``n_evaluations`` a traced int32 scalar).
    """
    _check_eps(eps)
    chex.assert_rank(x_init, {*range(2, 8)})
    samples, n_evaluations = solve_ode(
        lambda t, x: sde.probability_flow_drift(score_fn, x, t),
        x_init,
        t0=1.0,
        t1=eps,
        rtol=rtol,
        atol=atol,
        solver=solver,
        max_steps=max_steps,
    )
    if denoise:
        sigma = sde.sigma(eps)
        score = score_fn(samples, jnp.full((samples.shape[0],), sigma, jnp.float32))
        chex.assert_shape(score, samples.shape)
        samples = (samples + sigma**2 * score).astype(samples.dtype)
        n_evaluations = n_evaluations + 1
    return SDESamples(samples=samples, n_evaluations=n_evaluations)


def ode_encode(
    score_fn: NoiseConditionalScoreFn,
    sde: VESDE,
    x: Array,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    solver: str = "tsit5",
    max_steps: int = 4096,
) -> ODEEncoding:
    """The probability-flow ODE forward, from data ``x`` at t = ``eps`` to its latent code at t = 1.

    The inverse of :func:`ode_sampler` (without ``denoise``) up to solver tolerance; latents of data are
    distributed as ``p_1 ≈ N(0, σ_max² I)``. Arguments as in :func:`ode_sampler`.
    """
    _check_eps(eps)
    chex.assert_rank(x, {*range(2, 8)})
    latents, n_evaluations = solve_ode(
        lambda t, y: sde.probability_flow_drift(score_fn, y, t),
        x,
        t0=eps,
        t1=1.0,
        rtol=rtol,
        atol=atol,
        solver=solver,
        max_steps=max_steps,
    )
    return ODEEncoding(latents=latents, n_evaluations=n_evaluations)


__all__ = [
    "PREDICTORS",
    "CORRECTORS",
    "ODE_SOLVERS",
    "SDESamples",
    "ODEEncoding",
    "langevin_corrector_step_size",
    "pc_sampler",
    "ode_sampler",
    "ode_encode",
    "solve_ode",
]
