"""Score-matching objectives as pure JAX functions.

A score model ``s_θ(x) ≈ ∇ₓ log p(x)`` is fit by minimising the Fisher divergence

    F(θ) = ½ E_p ‖s_θ(x) − ∇ₓ log p(x)‖²,

which contains the unknown data score. Integrating by parts (Hyvärinen 2005) removes it — the *implicit*
score-matching identity, equal to F(θ) up to a constant that does not depend on θ:

    J_ESM(θ) = E_p[ ½‖s_θ(x)‖² + tr(∇ₓ s_θ(x)) ].                              (exact_score_matching)

The trace needs the full D×D Jacobian. Hutchinson's identity ``tr(M) = E_v[vᵀMv]`` for any random ``v`` with
``E[vvᵀ] = I`` replaces it by one Jacobian-vector product per projection (``hutchinson_trace``), which gives
sliced score matching (Song, Garg, Shi & Ermon 2019):

    J_SSM(θ)    = E_p E_v[ vᵀ∇ₓs_θ(x)v + ½(vᵀs_θ(x))² ],                       (sliced_score_matching)
    J_SSM-VR(θ) = E_p E_v[ vᵀ∇ₓs_θ(x)v ] + ½‖s_θ(x)‖²    (E_v ½(vᵀs)² = ½‖s‖² taken in closed form).

Denoising score matching (Vincent 2011) needs no derivative of s at all: with ``x̃ = x + σz``, ``z ~ N(0, I)``,

    J_DSM(θ) = ½ E_{x,z} ‖s_θ(x̃, σ) + (x̃ − x)/σ²‖²                          (denoising_score_matching)

is minimised by the score of the σ-smoothed data ``p_σ = p ∗ N(0, σ²I)``. NCSN (Song & Ermon 2019) trains one
noise-conditional network on L levels ``σ₁ > … > σ_L``: every example draws its own level uniformly and its loss
is weighted by ``λ(σ) = σ^anneal_power`` (σ² in the paper, which makes ``λ(σ)·‖target‖² = ‖z‖²`` O(1) at every
level). ``annealed_sliced_score_matching`` and ``annealed_exact_score_matching`` are the same construction with
the sliced / exact objective of ``s(·, σ)`` at ``x̃`` in place of the denoising one.

Conventions
-----------
* Unconditional score: ``score_fn(x) -> s``; noise-conditional: ``score_fn(x, sigma) -> s`` with ``x, s`` of
  shape ``(B, *dims)`` and ``sigma`` of shape ``(B,)``. Data dimension ``D = prod(dims)``.
* Every loss returns ``(loss, aux)``: ``loss`` the scalar batch mean, ``aux`` a dict with
  ``"per_example_loss"`` ``(B,)`` float32 and, for the noise-conditional losses, ``"sigma_idx"`` ``(B,)`` int32
  (the level index each example drew, for per-level logging). ``hutchinson_trace`` returns a ``(B,)`` array.
* Randomness: all draws (level indices, noise, projections) are made for the whole batch from the given key
  with ``jax.random``; with ``jax_threefry_partitionable`` (the default) the values do not depend on how the
  batch is sharded across devices. The noise-conditional losses split their key the same way, so for one key
  ``denoising_score_matching``, ``annealed_sliced_score_matching`` and ``annealed_exact_score_matching``
  perturb every example with the same level and the same noise.
* Losses are computed in float32 (float64 when ``x`` is float64), whatever the score's dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import chex
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from ncsn_jax import errors

__all__ = [
    "EXACT_SM_MAX_JACOBIAN_ENTRIES",
    "PROJECTIONS",
    "LOSSES",
    "check_exact_affordable",
    "exact_score_matching",
    "hutchinson_trace",
    "sliced_score_matching",
    "denoising_score_matching",
    "annealed_sliced_score_matching",
    "annealed_exact_score_matching",
    "get_loss_fn",
]

Array = jax.Array
ScoreFn = Callable[[Array], Array]
ConditionalScoreFn = Callable[[Array, Array], Array]
LossAux = dict[str, Array]
Projection = Literal["rademacher", "gaussian", "sphere"]

PROJECTIONS: tuple[str, ...] = ("rademacher", "gaussian", "sphere")
"""Valid ``projection`` names; each distribution has ``E[vvᵀ] = I``."""

EXACT_SM_MAX_JACOBIAN_ENTRIES: int = 2**27
"""Budget of exact score matching: the most per-example Jacobian entries ``B·D²`` one loss evaluation may form
(2**27 ≈ 1.3e8, 512 MiB in float32 for the Jacobian alone; its gradient and the D tangent copies of every
activation come on top). Batch 128 of 784-dimensional data (MNIST) fits; batch 128 at D = 3072 (CIFAR-10)
needs 9× the budget, and D forward passes per step on top."""


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _compute_dtype(x: Array) -> jnp.dtype:
    """float32, or float64 when ``x`` already is."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _check_batch(x: Array) -> None:
    """``x`` must be a batch ``(B, *dims)`` with at least one data dimension."""
    if x.ndim < 2:
        raise ValueError(
            f"x must have shape (B, *dims) with at least one data dimension; got shape {x.shape}."
        )


def _sum_data_dims(values: Array, n_leading: int = 1, keepdims: bool = False) -> Array:
    """Sums over every axis after the first ``n_leading`` (batch / projection) axes."""
    return jnp.sum(values, axis=tuple(range(n_leading, values.ndim)), keepdims=keepdims)


def _sharding_like(x: Array, *, leading_axes: int = 0, batch_only: bool = False) -> NamedSharding:
    """The sharding of ``x``'s type, for random draws laid out like the batch.

    Under an explicit mesh (sharding in types) the draws are then sharded like the batch instead of replicated;
    elsewhere the spec is empty and this changes nothing. ``leading_axes`` unsharded axes are prepended (the
    projection axis); ``batch_only`` keeps just the batch axis, for per-example ``(B,)`` draws. The values
    never depend on the sharding (threefry is partitionable).
    """
    sharding = jax.typeof(x).sharding
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    if batch_only:
        spec = spec[:1]
    return NamedSharding(sharding.mesh, PartitionSpec(*((None,) * leading_axes), *spec))


def _sample_projections(key: Array, x: Array, n_projections: int, projection: str) -> Array:
    """Draws projection vectors of shape ``(P, *x.shape)`` with ``E[vvᵀ] = I`` over the data dims of ``x``.

    * ``"rademacher"``: independent ±1 entries.
    * ``"gaussian"``:   v ~ N(0, I).
    * ``"sphere"``:     v uniform on the sphere of radius √D in ``R^D`` (one sphere per (projection, example)).
    """
    shape = (n_projections,) + x.shape
    out_sharding = _sharding_like(x, leading_axes=1)
    if projection == "rademacher":
        return jax.random.rademacher(key, shape, dtype=x.dtype, out_sharding=out_sharding)
    if projection == "gaussian":
        return jax.random.normal(key, shape, dtype=x.dtype, out_sharding=out_sharding)
    if projection == "sphere":
        v = jax.random.normal(key, shape, dtype=x.dtype, out_sharding=out_sharding)
        dim = math.prod(x.shape[1:])
        norm = jnp.sqrt(_sum_data_dims(v**2, n_leading=2, keepdims=True))
        return v * (math.sqrt(dim) / norm)
    raise _unknown_projection(projection)


def _unknown_projection(projection: str) -> ValueError:
    return ValueError(
        f"Unknown projection {projection!r}; valid projections are {', '.join(map(repr, PROJECTIONS))}."
    )


def _validate_projection(projection: str, n_projections: int) -> None:
    """Raises ValueError for an unknown projection name or ``n_projections < 1`` (before any tracing)."""
    if projection not in PROJECTIONS:
        raise _unknown_projection(projection)
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1; got {n_projections}.")


def _jvp_with_projections(fn: ScoreFn, x: Array, v: Array) -> tuple[Array, Array]:
    """``(fn(x), J v)`` for a stack of tangents ``v`` of shape ``(P, *x.shape)``, ``J = ∇ₓ fn(x)``.

    One ``jax.jvp`` per projection, vectorised with ``vmap`` over the tangent only: the primal ``fn(x)`` does not
    depend on the tangent, so it is computed once (its projection axis is a broadcast, dropped again here).
    ``fn`` maps a batch to a batch example by example, so the batched tangent gives the per-example products
    ``J_b v_b``. No Jacobian is formed.
    """
    fx, jv = jax.vmap(lambda tangent: jax.jvp(fn, (x,), (tangent,)))(v)
    return fx[0], jv


def check_exact_affordable(batch_shape: tuple[int, ...]) -> None:
    """Raises :class:`~ncsn_jax.errors.UserError` when exact score matching of a ``(B, *dims)`` batch would form more than
    ``EXACT_SM_MAX_JACOBIAN_ENTRIES`` Jacobian entries ``B·D²``, ``D = prod(dims)``.

    The exact losses call it while tracing (shapes are static), so the error comes before XLA compiles or
    allocates anything; a training loop may call it with the global batch shape before building its step.
    """
    batch, dim = int(batch_shape[0]), math.prod(batch_shape[1:])
    entries = batch * dim * dim
    if entries > EXACT_SM_MAX_JACOBIAN_ENTRIES:
        largest_batch = EXACT_SM_MAX_JACOBIAN_ENTRIES // (dim * dim)
        fix = f"or a batch of at most {largest_batch}" if largest_batch else "a batch cannot make it fit"
        raise errors.UserError(
            f"Exact score matching forms the full per-example Jacobian: B·D² = {batch}·{dim}² = "
            f"{entries:.3g} entries ({4 * entries / 2**30:.3g} GiB in float32), over the budget "
            f"losses.EXACT_SM_MAX_JACOBIAN_ENTRIES = {EXACT_SM_MAX_JACOBIAN_ENTRIES:.3g}, and costs D = {dim} "
            f"forward passes per step. Use loss 'ssm_vr' (sliced score matching with variance reduction: the "
            f"same objective in expectation at the cost of about two forward passes, for any D) or 'dsm' "
            f"({fix})."
        )


def _score_and_exact_trace(score_fn: ScoreFn, x: Array) -> tuple[Array, Array]:
    """``(s(x), tr ∇ₓ s(x))`` per example, the trace from the full per-example Jacobian in forward mode.

    The D columns ``∇ₓs(x_b) e_d`` of every example's Jacobian come from D ``jax.jvp`` calls with the standard
    basis tangents ``e_d`` (what ``jax.jacfwd`` does), vectorised over d on the whole batch: ``score_fn`` sees
    the batch as it is (shape and sharding), and the score itself is computed once. Memory ``B·D²``: a batch
    over ``EXACT_SM_MAX_JACOBIAN_ENTRIES`` raises ``UserError`` (``check_exact_affordable``) at trace time.
    """
    check_exact_affordable(x.shape)
    dims = x.shape[1:]
    dim = math.prod(dims)
    basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + dims)  # e_d, broadcast over the batch
    s, columns = jax.vmap(lambda e_d: jax.jvp(score_fn, (x,), (e_d * jnp.ones_like(x),)))(basis)
    columns = columns.reshape((dim, x.shape[0], dim))  # columns[d, b] = ∇ₓs(x_b) e_d
    trace = jnp.einsum("dbd->b", columns)
    return s[0], trace


def _perturb(x: Array, sigmas: Array, key: Array) -> tuple[Array, Array, Array, Array, Array]:
    """Draws a level per example and perturbs the batch: ``x̃ = x + σ z``.

    The key is split into ``(level_key, noise_key, projection_key)`` — the same split in every noise-conditional
    loss, so the perturbation depends only on ``key``, not on which loss uses it.

    Returns:
      ``(x̃, z, sigma, sigma_idx, projection_key)`` with ``x̃, z`` of ``x.shape``, ``sigma`` ``(B,)`` float,
      ``sigma_idx`` ``(B,)`` int32 uniform on ``{0, …, L−1}``.
    """
    chex.assert_rank(sigmas, 1)
    x = jnp.asarray(x, _compute_dtype(x))
    level_key, noise_key, projection_key = jax.random.split(key, 3)
    sigma_idx = jax.random.randint(
        level_key,
        x.shape[:1],
        0,
        sigmas.shape[0],
        dtype=jnp.int32,
        out_sharding=_sharding_like(x, batch_only=True),
    )
    sigma = jnp.asarray(sigmas, x.dtype).at[sigma_idx].get(out_sharding=_sharding_like(x, batch_only=True))
    z = jax.random.normal(noise_key, x.shape, dtype=x.dtype, out_sharding=_sharding_like(x))
    x_tilde = x + _expand_to(sigma, x) * z
    return x_tilde, z, sigma, sigma_idx, projection_key


def _expand_to(per_example: Array, x: Array) -> Array:
    """Reshapes ``(B,)`` to ``(B, 1, …, 1)`` to broadcast against ``x``."""
    return per_example.reshape(per_example.shape + (1,) * (x.ndim - 1))


def _conditioned(score_fn: ConditionalScoreFn, sigma: Array) -> ScoreFn:
    """``x ↦ score_fn(x, sigma)`` for a fixed per-example ``sigma`` ``(B,)``."""
    return lambda x: score_fn(x, sigma)


# ----------------------------------------------------------------------------------------------------------------
# Unconditional objectives
# ----------------------------------------------------------------------------------------------------------------


def exact_score_matching(score_fn: ScoreFn, x: Array) -> tuple[Array, LossAux]:
    """Implicit (exact) score matching of Hyvärinen (2005).

        ℓ(x) = ½‖s(x)‖² + tr(∇ₓ s(x)),        loss = mean_b ℓ(x_b),

    with the trace taken from the full per-example Jacobian in forward mode (D Jacobian-vector products with
    the standard basis, as ``jax.jacfwd`` computes it; memory ``B·D²``).
    For small D only (toy data, tests); use ``sliced_score_matching`` or ``denoising_score_matching`` otherwise.

    Args:
      score_fn: unconditional score, ``(B, *dims) -> (B, *dims)``, example by example.
      x: batch ``(B, *dims)``; the data dims are flattened to ``D = prod(dims)`` for the Jacobian.

    Returns:
      ``(loss, aux)``: ``loss`` the scalar mean of ℓ; ``aux = {"per_example_loss": (B,) ℓ}``.

    Raises:
      UserError: ``B·D² > EXACT_SM_MAX_JACOBIAN_ENTRIES`` (``check_exact_affordable``), at trace time.
    """
    _check_batch(x)
    dtype = _compute_dtype(x)
    s, trace = _score_and_exact_trace(score_fn, jnp.asarray(x, dtype))
    chex.assert_equal_shape([s, x])
    per_example_loss = 0.5 * _sum_data_dims(s.astype(dtype) ** 2) + trace.astype(dtype)
    return jnp.mean(per_example_loss), {"per_example_loss": per_example_loss}


def hutchinson_trace(
    fn: ScoreFn,
    x: Array,
    key: Array,
    *,
    n_projections: int = 1,
    projection: Projection = "rademacher",
) -> Array:
    """Hutchinson's unbiased per-example estimate of ``tr(∇ₓ fn(x))``.

        tr(J) ≈ (1/P) Σ_p v_pᵀ J v_p,     v_p i.i.d. with E[vvᵀ] = I,   J = ∇ₓ fn(x_b),

    each ``J v`` from one ``jax.jvp`` (the Jacobian is never formed, so the cost is P forward passes for any D).
    The variance per projection is ``2(‖M‖_F² − Σᵢ Mᵢᵢ²)`` for Rademacher, ``2‖M‖_F²`` for Gaussian and
    ``2D/(D+2)·(‖M‖_F² − tr(M)²/D)`` for the sphere, with ``M = (J + Jᵀ)/2``: Rademacher is exact for diagonal J.

    Args:
      fn: function of the batch ``(B, *dims) -> (B, *dims)`` acting example by example.
      x: batch ``(B, *dims)``.
      key: PRNG key for the projections (drawn for the whole batch).
      n_projections: number P of projection vectors per example.
      projection: ``"rademacher"`` (±1 entries), ``"gaussian"`` (N(0, I)) or ``"sphere"`` (uniform on the sphere
        of radius √D).

    Returns:
      ``(B,)`` trace estimates (float32, or float64 for float64 ``x``).
    """
    _check_batch(x)
    _validate_projection(projection, n_projections)
    dtype = _compute_dtype(x)
    x = jnp.asarray(x, dtype)
    v = _sample_projections(key, x, n_projections, projection)
    fx, jv = _jvp_with_projections(fn, x, v)
    chex.assert_equal_shape([fx, x])
    return jnp.mean(_sum_data_dims(v * jv.astype(dtype), n_leading=2), axis=0)


def sliced_score_matching(
    score_fn: ScoreFn,
    x: Array,
    key: Array,
    *,
    n_projections: int = 1,
    projection: Projection = "rademacher",
    variance_reduction: bool = False,
) -> tuple[Array, LossAux]:
    """Sliced score matching (Song et al. 2019), an unbiased estimate of exact score matching.

        SSM:     ℓ(x) = (1/P) Σ_p [ v_pᵀ ∇ₓs(x) v_p + ½ (v_pᵀ s(x))² ],
        SSM-VR:  ℓ(x) = (1/P) Σ_p   v_pᵀ ∇ₓs(x) v_p + ½ ‖s(x)‖²,

    with ``E[vvᵀ] = I`` so ``E_v ℓ = ½‖s‖² + tr(∇ₓs)`` in both cases; SSM-VR has the smaller variance.
    ``s(x)`` and every ``∇ₓs(x) v`` come from ``jax.jvp`` (the score is evaluated once).

    Args:
      score_fn: unconditional score, ``(B, *dims) -> (B, *dims)``, example by example.
      x: batch ``(B, *dims)``.
      key: PRNG key for the projections.
      n_projections: number P of projections per example.
      projection: ``"rademacher"``, ``"gaussian"`` or ``"sphere"`` (see ``hutchinson_trace``).
      variance_reduction: use ``½‖s‖²`` in place of ``½(vᵀs)²`` (SSM-VR).

    Returns:
      ``(loss, aux)``: ``loss = mean_b ℓ(x_b)``; ``aux = {"per_example_loss": (B,) ℓ}``.
    """
    _check_batch(x)
    _validate_projection(projection, n_projections)
    dtype = _compute_dtype(x)
    x = jnp.asarray(x, dtype)
    per_example_loss = _sliced_per_example(
        score_fn,
        x,
        key,
        n_projections=n_projections,
        projection=projection,
        variance_reduction=variance_reduction,
    )
    return jnp.mean(per_example_loss), {"per_example_loss": per_example_loss}


def _sliced_per_example(
    score_fn: ScoreFn, x: Array, key: Array, *, n_projections: int, projection: str, variance_reduction: bool
) -> Array:
    """Per-example sliced SM ℓ(x) (see ``sliced_score_matching``), ``(B,)``."""
    dtype = x.dtype
    v = _sample_projections(key, x, n_projections, projection)
    s, jv = _jvp_with_projections(score_fn, x, v)
    chex.assert_equal_shape([s, x])
    s, jv = s.astype(dtype), jv.astype(dtype)
    trace_term = jnp.mean(_sum_data_dims(v * jv, n_leading=2), axis=0)
    if variance_reduction:
        norm_term = 0.5 * _sum_data_dims(s**2)
    else:
        norm_term = jnp.mean(0.5 * _sum_data_dims(v * s[None], n_leading=2) ** 2, axis=0)
    return trace_term + norm_term


# ----------------------------------------------------------------------------------------------------------------
# Noise-conditional (annealed) objectives
# ----------------------------------------------------------------------------------------------------------------


def denoising_score_matching(
    score_fn: ConditionalScoreFn,
    x: Array,
    sigmas: Array,
    key: Array,
    *,
    anneal_power: float = 2.0,
) -> tuple[Array, LossAux]:
    """NCSN's annealed denoising score matching (Vincent 2011; Song & Ermon 2019, §4.2).

    Each example draws a level index ``i ~ U{0, …, L−1}``, ``σ = sigmas[i]``, noise ``z ~ N(0, I)`` and

        x̃ = x + σ z,
        ℓ(x) = σ^anneal_power · ½ ‖s(x̃, σ) + (x̃ − x)/σ²‖²     (summed over data dims),
        loss = mean_b ℓ(x_b).

    The target ``−(x̃ − x)/σ² = ∇_x̃ log N(x̃; x, σ²I)`` is computed as ``−z/σ``: algebraically equal, and free of
    the cancellation in ``x̃ − x`` that costs precision at small σ (e.g. 0.01). A one-element ``sigmas`` is
    single-scale DSM; with ``anneal_power = 2``, ``ℓ = ½‖σ s(x̃, σ) + z‖²``.

    Args:
      score_fn: noise-conditional score ``(x (B, *dims), sigma (B,)) -> (B, *dims)``.
      x: clean batch ``(B, *dims)``.
      sigmas: ``(L,)`` noise levels, descending (σ₁ > … > σ_L).
      key: PRNG key; split into (level, noise, projection) keys like every noise-conditional loss here.
      anneal_power: exponent of the level weighting λ(σ) = σ^anneal_power.

    Returns:
      ``(loss, aux)``: ``loss = mean_b ℓ``; ``aux = {"per_example_loss": (B,) ℓ, "sigma_idx": (B,) int32}``.
    """
    _check_batch(x)
    x_tilde, z, sigma, sigma_idx, _ = _perturb(x, sigmas, key)
    s = score_fn(x_tilde, sigma)
    chex.assert_equal_shape([s, x])
    target = -z / _expand_to(sigma, x)
    per_example_loss = 0.5 * _sum_data_dims((s.astype(target.dtype) - target) ** 2) * sigma**anneal_power
    return jnp.mean(per_example_loss), {"per_example_loss": per_example_loss, "sigma_idx": sigma_idx}


def annealed_sliced_score_matching(
    score_fn: ConditionalScoreFn,
    x: Array,
    sigmas: Array,
    key: Array,
    *,
    n_projections: int = 1,
    projection: Projection = "rademacher",
    variance_reduction: bool = True,
    anneal_power: float = 2.0,
) -> tuple[Array, LossAux]:
    """NCSN's annealed sliced score matching (``anneal_sliced_score_estimation[_vr]`` of the reference code).

    Each example draws ``σ = sigmas[i]``, ``i ~ U{0, …, L−1}``, is perturbed to ``x̃ = x + σz`` and scored with the
    sliced objective of ``s(·, σ)`` at ``x̃``, weighted by σ^anneal_power:

        ℓ(x) = σ^anneal_power · (1/P) Σ_p [ v_pᵀ ∇_x̃ s(x̃, σ) v_p + ½ (v_pᵀ s(x̃, σ))² ]      (SSM)
        ℓ(x) = σ^anneal_power · ( (1/P) Σ_p v_pᵀ ∇_x̃ s(x̃, σ) v_p + ½ ‖s(x̃, σ)‖² )         (SSM-VR, default)

    In expectation over v this is ``annealed_exact_score_matching`` (same key → same x̃ and levels).

    Args:
      score_fn: noise-conditional score ``(x (B, *dims), sigma (B,)) -> (B, *dims)``.
      x: clean batch ``(B, *dims)``.
      sigmas: ``(L,)`` noise levels, descending.
      key: PRNG key; split into (level, noise, projection) keys.
      n_projections: number P of projections per example.
      projection: ``"rademacher"``, ``"gaussian"`` or ``"sphere"``.
      variance_reduction: SSM-VR (``½‖s‖²``) instead of SSM (``½(vᵀs)²``).
      anneal_power: exponent of the level weighting λ(σ) = σ^anneal_power.

    Returns:
      ``(loss, aux)``: ``loss = mean_b ℓ``; ``aux = {"per_example_loss": (B,) ℓ, "sigma_idx": (B,) int32}``.
    """
    _check_batch(x)
    _validate_projection(projection, n_projections)
    x_tilde, _, sigma, sigma_idx, projection_key = _perturb(x, sigmas, key)
    sliced = _sliced_per_example(
        _conditioned(score_fn, sigma),
        x_tilde,
        projection_key,
        n_projections=n_projections,
        projection=projection,
        variance_reduction=variance_reduction,
    )
    per_example_loss = sliced * sigma**anneal_power
    return jnp.mean(per_example_loss), {"per_example_loss": per_example_loss, "sigma_idx": sigma_idx}


def annealed_exact_score_matching(
    score_fn: ConditionalScoreFn,
    x: Array,
    sigmas: Array,
    key: Array,
    *,
    anneal_power: float = 2.0,
) -> tuple[Array, LossAux]:
    """Annealed exact score matching: the noise-conditional form of ``exact_score_matching``.

    Each example draws ``σ = sigmas[i]``, ``i ~ U{0, …, L−1}``, ``x̃ = x + σz`` and

        ℓ(x) = σ^anneal_power · ( ½ ‖s(x̃, σ)‖² + tr(∇_x̃ s(x̃, σ)) ),     loss = mean_b ℓ,

    the trace from the full per-example Jacobian (forward mode): for small D only. Uses the same key split as
    the other noise-conditional losses, so it is the exact expectation of ``annealed_sliced_score_matching``
    over the projections for the same key.

    Args:
      score_fn: noise-conditional score ``(x (B, *dims), sigma (B,)) -> (B, *dims)``.
      x: clean batch ``(B, *dims)``.
      sigmas: ``(L,)`` noise levels, descending.
      key: PRNG key; split into (level, noise, projection) keys (the projection key is unused).
      anneal_power: exponent of the level weighting λ(σ) = σ^anneal_power.

    Returns:
      ``(loss, aux)``: ``loss = mean_b ℓ``; ``aux = {"per_example_loss": (B,) ℓ, "sigma_idx": (B,) int32}``.

    Raises:
      UserError: ``B·D² > EXACT_SM_MAX_JACOBIAN_ENTRIES`` (``check_exact_affordable``), at trace time.
    """
    _check_batch(x)
    check_exact_affordable(x.shape)
    x_tilde, _, sigma, sigma_idx, _ = _perturb(x, sigmas, key)
    s, trace = _score_and_exact_trace(_conditioned(score_fn, sigma), x_tilde)
    chex.assert_equal_shape([s, x])
    dtype = x_tilde.dtype
    exact = 0.5 * _sum_data_dims(s.astype(dtype) ** 2) + trace.astype(dtype)
    per_example_loss = exact * sigma**anneal_power
    return jnp.mean(per_example_loss), {"per_example_loss": per_example_loss, "sigma_idx": sigma_idx}


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------

LossFn = Callable[[ConditionalScoreFn, Array, Array, Array], tuple[Array, LossAux]]

# name -> (function, fixed keyword arguments, the options of ``get_loss_fn`` it accepts)
_REGISTRY: Mapping[str, tuple[Callable[..., tuple[Array, LossAux]], dict[str, Any], tuple[str, ...]]] = {
    "dsm": (denoising_score_matching, {}, ("anneal_power",)),
    "ssm": (
        annealed_sliced_score_matching,
        {"variance_reduction": False},
        ("anneal_power", "n_projections", "projection"),
    ),
    "ssm_vr": (
        annealed_sliced_score_matching,
        {"variance_reduction": True},
        ("anneal_power", "n_projections", "projection"),
    ),
    "exact": (annealed_exact_score_matching, {}, ("anneal_power",)),
}
LOSSES: tuple[str, ...] = tuple(_REGISTRY)
"""Names accepted by ``get_loss_fn``."""

_OPTIONS = ("anneal_power", "n_projections", "projection")


def get_loss_fn(name: str, **options: Any) -> LossFn:
    """The noise-conditional objective called ``name``, as ``loss_fn(score_fn, x, sigmas, key) -> (loss, aux)``.

    ========  ============================================================================
    name      objective
    ========  ============================================================================
    "dsm"     ``denoising_score_matching``
    "ssm"     ``annealed_sliced_score_matching(variance_reduction=False)``
    "ssm_vr"  ``annealed_sliced_score_matching(variance_reduction=True)``
    "exact"   ``annealed_exact_score_matching`` (``B·D² ≤ EXACT_SM_MAX_JACOBIAN_ENTRIES``)
    ========  ============================================================================

    Args:
      name: one of ``LOSSES``.
      **options: any of ``anneal_power``, ``n_projections``, ``projection``; each is passed to the objectives
        that take it and ignored by the others (so one training config serves every loss).

    Returns:
      ``loss_fn(score_fn, x, sigmas, key) -> (loss, aux)`` with ``aux`` holding ``"per_example_loss"`` and
      ``"sigma_idx"``.

    Raises:
      ValueError: unknown ``name`` (the message lists the valid names) or unknown ``projection``.
      TypeError: an option other than the three above.
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown loss {name!r}; valid losses are {', '.join(map(repr, LOSSES))}.")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"Unknown loss option(s) {unknown}; accepted options are {list(_OPTIONS)}.")
    loss, fixed, accepted = _REGISTRY[name]
    kwargs = {**fixed, **{option: value for option, value in options.items() if option in accepted}}
    if "projection" in kwargs or "n_projections" in kwargs:
        _validate_projection(kwargs.get("projection", "rademacher"), kwargs.get("n_projections", 1))
    return functools.partial(loss, **kwargs)
