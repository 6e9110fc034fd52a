"""Exact log-likelihoods of score models through the probability-flow ODE (Song et al., 2021, §4.3, App. D).

The probability-flow ODE ``dx/dt = f̃(x, t) = f − ½ g(t)² s(x, σ(t))`` of the VE SDE (:mod:`ncsn_jax.sde`)
is a continuous normalising flow with the marginals ``p_t`` of the SDE, so the instantaneous
change-of-variables formula (Chen et al., 2018) gives the density of the model at t = eps::

    log p_eps(x) = log p_1(x(1)) + ∫_eps^1 ∇ₓ·f̃(x(t), t) dt,      x(eps) = x,

with ``p_1`` replaced by the prior ``N(0, σ_max² I)``. :func:`log_likelihood` integrates ``x`` and the
running integral together forward in time with diffrax (:func:`ncsn_jax.sde_sampling.solve_ode`). The
divergence ``∇ₓ·f̃ = −½ g² tr ∇ₓ s`` is either

* exact — the trace of the per-example Jacobian from D forward-mode JVPs (memory ``B·D²``, for
  ``D ≤ MAX_EXACT_DIVERGENCE_DIM``), or
* Hutchinson's estimate :func:`ncsn_jax.losses.hutchinson_trace`, ``vᵀ (∇ₓ f̃) v`` with one ``jax.jvp`` per
  projection and the projections ``v`` drawn once from ``key`` and kept fixed over the whole integration
  (FFJORD, score_sde): an unbiased estimate of ``log p_eps(x)``.

What is computed is the density of ``p_eps = p_data ∗ N(0, σ(eps)² I)`` under the model; for data with a
σ_min-noise floor this is the model's density of the data itself. The prior mismatch ``N(0, σ_max² I)`` vs
the true ``p_1 = p_data ∗ N(0, σ_max² I)`` adds ``log N(x(1); 0, σ_max²) − log p_1(x(1)) ≈ −x(1)·E[x]/σ_max²``
per example, of order ``‖E_data[x]‖ / σ_max``: on NCSN's 2-D toy mixture (‖E[x]‖ = 4.2) at most 0.14 nats
over 500 examples at σ_max = 100, 0.054 at 300, 0.017 at 10³; for [0, 1] images of D = 3072 at σ_max = 50,
≈ 0.5 nats, a few 10⁻⁴ bits/dim.

Bits per dimension of images: :func:`bits_per_dim`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from ncsn_jax import losses
from ncsn_jax.sde import VESDE
from ncsn_jax.sde_sampling import solve_ode

Array = jax.Array
NoiseConditionalScoreFn = Callable[[Array, Array], Array]

MAX_EXACT_DIVERGENCE_DIM = 1024
"""Largest data dimension D for the exact divergence (its Jacobians take ``B·D²`` floats per evaluation)."""


class LogLikelihood(NamedTuple):
    """:func:`log_likelihood`'s output.

    Attributes:
      log_p: ``(B,)`` float32 ``log p_eps(x)`` in nats (Hutchinson: an unbiased estimate).
      latents: ``(B, *dims)`` the ODE's end point ``x(1)``, the inputs' latent codes.
      n_evaluations: int32 scalar, evaluations of the ODE's right-hand side — each one score evaluation
        with its divergence (D JVPs exact, ``n_projections`` JVPs Hutchinson).
    """

    log_p: Array
    latents: Array
    n_evaluations: Array


def log_likelihood(
    score_fn: NoiseConditionalScoreFn,
    sde: VESDE,
    x: Array,
    key: Array | None = None,
    *,
    exact_divergence: bool = False,
    n_projections: int = 1,
    projection: losses.Projection = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    solver: str = "tsit5",
    max_steps: int = 4096,
) -> LogLikelihood:
    """Per-example ``log p_eps(x)`` in nats from the probability-flow ODE (module docstring).

    ``log p_eps(x) = log N(x(1); 0, σ_max² I) + ∫_eps^1 ∇ₓ·f̃(x(t), t) dt`` with the ODE and the integral
    solved together from t = eps to 1.

    Args:
      score_fn: noise-conditional score ``score_fn(x, sigma)``, ``sigma`` ``(B,)``; must accept any σ > 0
        (:func:`ncsn_jax.sde.check_continuous_sigma`) and act example by example.
      sde: the VE SDE (σ_min, σ_max).
      x: ``(B, *dims)`` data (images: dequantized, in the model's data space).
      key: PRNG key of the Hutchinson projections (unused, may be None, with ``exact_divergence``).
      exact_divergence: exact Jacobian trace (``D ≤ MAX_EXACT_DIVERGENCE_DIM``) instead of Hutchinson's.
      n_projections: Hutchinson projections per example (fixed over the integration).
      projection: their distribution, one of :data:`ncsn_jax.losses.PROJECTIONS`.
      rtol, atol, eps, solver, max_steps: as in :func:`ncsn_jax.sde_sampling.ode_sampler`.

    Returns:
      :class:`LogLikelihood` ``(log_p, latents, n_evaluations)``.
    """
    chex.assert_rank(x, {*range(2, 8)})
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps (the ODE's start time at the data) must be in [0, 1); got {eps}.")
    dim = math.prod(x.shape[1:])
    if exact_divergence:
        if dim > MAX_EXACT_DIVERGENCE_DIM:
            raise ValueError(
                f"The exact divergence needs the full {dim}×{dim} Jacobian per example (D = {dim} > "
                f"{MAX_EXACT_DIVERGENCE_DIM}); use Hutchinson's estimate (exact_divergence=False)."
            )
    else:
        if key is None:
            raise ValueError("Hutchinson's divergence estimate needs a PRNG key for its projections.")
        if projection not in losses.PROJECTIONS:
            raise ValueError(f"Unknown projection {projection!r}; valid: {', '.join(losses.PROJECTIONS)}.")
        if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
            raise ValueError(f"n_projections must be a positive int; got {n_projections!r}.")
    x = x.astype(jnp.float32)

    def vector_field(t: Array, state: tuple[Array, Array]) -> tuple[Array, Array]:
        y, _ = state
        drift = lambda z: sde.probability_flow_drift(score_fn, z, t)
        if exact_divergence:
            velocity, divergence = losses._score_and_exact_trace(drift, y)
        else:
            velocity = drift(y)
            divergence = losses.hutchinson_trace(
                drift, y, key, n_projections=n_projections, projection=projection
            )
        return velocity, divergence.astype(jnp.float32)

    (latents, integral), n_evaluations = solve_ode(
        vector_field,
        (x, jnp.zeros((x.shape[0],), jnp.float32)),
        t0=eps,
        t1=1.0,
        rtol=rtol,
        atol=atol,
        solver=solver,
        max_steps=max_steps,
    )
    return LogLikelihood(
        log_p=sde.prior_logp(latents) + integral, latents=latents, n_evaluations=n_evaluations
    )


def bits_per_dim(log_p_nats: Array, dim: int, *, num_levels: int = 256, data_scale: float = 1.0) -> Array:
    """Bits per dimension of discrete data from the density of its uniformly dequantized version.

    Convention (:mod:`ncsn_jax.datasets`): integer values ``v ∈ {0, …, K − 1}`` (K = ``num_levels``: 256
    for 8-bit images, 17 for the 8×8 digits) are dequantized to ``x = c (v + u)/K`` with ``u ~ U[0, 1)^D``
    and ``c = data_scale`` (1 for our ``[0, 1)`` data). Each ``v`` owns the cube ``c(v + [0, 1)^D)/K`` of
    volume ``(c/K)^D``, so with Jensen's inequality the model's discrete probability satisfies::

        log P(v) = log ∫_cube p(x) dx ≥ E_u[log p(x)] + D log(c/K),

    and the bound in bits per dimension is::

        bpd = −log p(x) / (D ln 2) + log₂ K − log₂ c     (8-bit images in [0, 1): + 8 bits).

    score_sde's offset ``7 − inverse_scaler(−1)`` is the same formula for K = 256: +8 for data in [0, 1),
    +7 for data rescaled to [−1, 1] (c = 2). Average over ``u`` and the test set to report it.

    Args:
      log_p_nats: per-example ``log p(x)`` in nats (e.g. :attr:`LogLikelihood.log_p`).
      dim: the data dimension ``D`` (e.g. 32·32·3).
      num_levels: ``K``, the number of discrete values per dimension.
      data_scale: ``c``, the width of the interval the K bins tile in the model's data space.

    Returns:
      Per-example bits/dim, shaped like ``log_p_nats``.
    """
    if dim < 1 or num_levels < 2 or not data_scale > 0:
        raise ValueError(
            f"bits_per_dim needs dim >= 1, num_levels >= 2, data_scale > 0; got {dim}, {num_levels}, "
            f"{data_scale}."
        )
    offset = math.log2(num_levels) - math.log2(data_scale)
    return -jnp.asarray(log_p_nats, jnp.float32) / (dim * math.log(2.0)) + offset


__all__ = ["MAX_EXACT_DIVERGENCE_DIM", "LogLikelihood", "log_likelihood", "bits_per_dim"]
