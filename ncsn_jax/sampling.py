"""Langevin samplers for score-based models: plain, annealed (NCSN), inpainting and interpolation.

Every sampler is a pure function of explicit arrays and a PRNG key, built on ``jax.lax.scan`` (no Python
loop over steps), and can be wrapped in ``jax.jit`` with the step counts static, e.g.::

    sample = jax.jit(lambda x, key: annealed_langevin_dynamics(
        score_fn, x, sigmas, key, n_steps_each=100, step_lr=0.1).samples)

Every sampler returns a :class:`SamplerOutput` ``(samples, trajectory, level_finite)``, whatever was asked.

Step-size convention (NCSN's Algorithm 1, Song & Ermon, 2019)::

    x ← x + (αᵢ/2) s(x, σᵢ) + √αᵢ z,   z ~ N(0, I),   αᵢ = step_lr · σᵢ² / σ_L².

The NCSNv2 paper and both reference PyTorch code bases write ``x ← x + αᵢ s + √(2αᵢ) z`` instead: the same
chain with half the step, so their ``step_lr`` values are half of ours (configs ported from them double
them; :func:`ncsn_jax.noise.langevin_step_lr` returns either convention).

Randomness. The Langevin noise of global step ``t`` (counting over all levels, from 0) is
``jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, 0), t), x.shape)``, drawn for the whole
batch at once, so the same key gives the same samples under ``jit``, ``vmap`` or a sharded batch, and
:func:`annealed_langevin_inpainting` with an all-zero mask reproduces :func:`annealed_langevin_dynamics`
with the same key. Auxiliary noise (the inpainting reference noise) uses the stream ``fold_in(key, 1)``.

Trajectories. With ``trajectory_every=k`` a sampler's ``trajectory`` is not None: ``trajectory[j]`` is the iterate after ``(j + 1)·k`` Langevin updates, ``j < n_total // k`` (the initial
state and the ``denoise`` step are not included). It is thinned inside the scan (an outer scan over saved
frames, an inner scan over ``k`` steps, then a scan over the remaining ``n_total mod k`` steps), so memory
is ``n_total // k`` frames, never ``n_total``.

Diagnostics. ``level_finite`` is an ``(L,)`` boolean (``(1,)`` for plain Langevin dynamics):
``level_finite[i]`` is True iff every iterate produced at level ``i`` (the denoising step counts as level
``L − 1``) is finite. :func:`first_nonfinite_level` turns it into the index to report,
e.g. ``f"sampling produced non-finite values at noise level {i} (σ={sigmas[i]:.4g})"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ScoreFn = Callable[[Array], Array]
NoiseConditionalScoreFn = Callable[[Array, Array], Array]

_LANGEVIN_STREAM = 0  # fold_in index of the per-step Langevin noise
_REFERENCE_STREAM = 1  # fold_in index of the per-level noise added to inpainting's known pixels


class SamplerOutput(NamedTuple):
    """What every sampler returns.

    Attributes:
      samples: the final iterates, ``(B, *dims)`` (``(n_rows, n_interpolations, *dims)`` for
        :func:`interpolate`).
      trajectory: every ``k``-th iterate stacked on a leading axis when ``trajectory_every=k`` was given,
        else None (module docstring).
      level_finite: ``(L,)`` bool, whether every iterate of each noise level was finite (``(1,)`` for
        :func:`langevin_dynamics`); see :func:`first_nonfinite_level`.
    """

    samples: Array
    trajectory: Array | None
    level_finite: Array


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------


def _step_noise(stream_key: Array, step: Array, shape: tuple[int, ...], dtype) -> Array:
    """Standard normal noise of global step ``step``: ``normal(fold_in(stream_key, step), shape)``."""
    return jax.random.normal(jax.random.fold_in(stream_key, step), shape, dtype)


def _langevin_update(x: Array, score: Array, alpha: Array, noise: Array) -> Array:
    """``x + (α/2) s + √α z`` in the dtype of ``x``."""
    chex.assert_equal_shape([x, score, noise])
    alpha = jnp.asarray(alpha, x.dtype)
    return (x + 0.5 * alpha * score + jnp.sqrt(alpha) * noise).astype(x.dtype)


def _all_finite(x: Array) -> Array:
    return jnp.all(jnp.isfinite(x))


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive Python int (static under jit), got {value!r}")
    return int(value)


def _run_scan(step_fn, state, n_steps: int, trajectory_every: int | None, frame_fn):
    """Applies ``state ← step_fn(state, t)`` for ``t = 0 .. n_steps − 1`` with ``lax.scan``.

    Returns ``(state, trajectory)``; ``trajectory`` is None unless ``trajectory_every = k`` is given, in
    which case it stacks ``frame_fn(state)`` after every ``k``-th step (nested scans, ``n_steps // k``
    frames kept in memory).
    """

    def scan_steps(state, steps):
        state, _ = jax.lax.scan(lambda carry, t: (step_fn(carry, t), None), state, steps)
        return state

    if trajectory_every is None:
        return scan_steps(state, jnp.arange(n_steps)), None

    k = trajectory_every
    n_frames, n_tail = divmod(n_steps, k)

    def frame(state, frame_index):
        state = scan_steps(state, frame_index * k + jnp.arange(k))
        return state, frame_fn(state)

    state, trajectory = jax.lax.scan(frame, state, jnp.arange(n_frames))
    if n_tail:
        state = scan_steps(state, n_frames * k + jnp.arange(n_tail))
    return state, trajectory


def _as_sigmas(sigmas) -> Array:
    sigmas = jnp.asarray(sigmas, jnp.float32)
    chex.assert_rank(sigmas, 1)
    return sigmas


def _annealed_chain(
    score_fn: NoiseConditionalScoreFn,
    x_init: Array,
    sigmas: Array,
    *,
    n_steps_each: int,
    step_lr,
    denoise: bool,
    trajectory_every: int | None,
    noise_fn: Callable[[Array], Array],
    constrain: Callable[[Array, Array], Array] = lambda x, level: x,
    finalize: Callable[[Array], Array] = lambda x: x,
):
    """Shared body of the annealed samplers (Algorithm 1 of NCSN over a flattened (level, step) index).

    Global step ``t`` runs at level ``i = t // n_steps_each``:
    ``x ← constrain(x + (αᵢ/2) s(x', σᵢ) + √αᵢ noise_fn(t), i)`` with ``x' = constrain(x, i)``.
    """
    n_steps_each = _check_positive_int("n_steps_each", n_steps_each)
    if trajectory_every is not None:
        trajectory_every = _check_positive_int("trajectory_every", trajectory_every)
    num_levels = sigmas.shape[0]
    batch_size = x_init.shape[0]
    sigma_min = sigmas[-1]

    def sigma_batch(sigma: Array) -> Array:
        return jnp.full((batch_size,), sigma, dtype=sigmas.dtype)

    def step(state, t):
        x, level_finite = state
        level = t // n_steps_each
        sigma = sigmas[level]
        alpha = step_lr * (sigma / sigma_min) ** 2
        x = constrain(x, level)
        score = score_fn(x, sigma_batch(sigma))
        chex.assert_shape(score, x.shape)
        x = constrain(_langevin_update(x, score, alpha, noise_fn(t)), level)
        level_finite = level_finite.at[level].set(level_finite[level] & _all_finite(x))
        return x, level_finite

    level_finite = jnp.ones((num_levels,), bool)
    (x, level_finite), trajectory = _run_scan(
        step,
        (x_init, level_finite),
        num_levels * n_steps_each,
        trajectory_every,
        frame_fn=lambda state: state[0],
    )
    if denoise:
        score = score_fn(x, sigma_batch(sigma_min))
        chex.assert_shape(score, x.shape)
        x = (x + sigma_min**2 * score).astype(x.dtype)
        level_finite = level_finite.at[-1].set(level_finite[-1] & _all_finite(x))
    return SamplerOutput(finalize(x), trajectory, level_finite)


# ----------------------------------------------------------------------------------------------------
# Public samplers
# ----------------------------------------------------------------------------------------------------


def langevin_dynamics(
    score_fn: ScoreFn,
    x_init: Array,
    key: Array,
    *,
    n_steps: int,
    step_size,
    trajectory_every: int | None = None,
) -> SamplerOutput:
    """Unadjusted Langevin dynamics ``x ← x + (ε/2) s(x) + √ε z``, ``z ~ N(0, I)``, for ``n_steps`` steps.

    For a Gaussian target ``N(μ, v I)`` the chain's stationary distribution is ``N(μ, v/(1 − ε/(4v)) I)``
    (discretisation bias; no Metropolis correction).

    Args:
      score_fn: unconditional score ``score_fn(x) -> s``, both ``(B, *dims)``.
      x_init: ``(B, *dims)`` initial state.
      key: PRNG key; step ``t`` uses ``normal(fold_in(fold_in(key, 0), t), x.shape)``.
      n_steps: number of steps (Python int, static under jit).
      step_size: ``ε`` (scalar; may be traced).
      trajectory_every: if an int ``k``, also return every ``k``-th iterate (see module docstring).

    Returns:
      :class:`SamplerOutput`: ``(B, *dims)`` samples, the ``(n_steps // k, B, *dims)`` trajectory if asked
      for, and ``level_finite`` of shape ``(1,)``.
    """
    n_steps = _check_positive_int("n_steps", n_steps)
    if trajectory_every is not None:
        trajectory_every = _check_positive_int("trajectory_every", trajectory_every)
    chex.assert_rank(x_init, {*range(1, 8)})
    noise_key = jax.random.fold_in(key, _LANGEVIN_STREAM)

    def step(state, t):
        x, finite = state
        score = score_fn(x)
        chex.assert_shape(score, x.shape)
        x = _langevin_update(x, score, step_size, _step_noise(noise_key, t, x.shape, x.dtype))
        return x, finite & _all_finite(x)

    (x, finite), trajectory = _run_scan(
        step, (x_init, jnp.array(True)), n_steps, trajectory_every, frame_fn=lambda state: state[0]
    )
    return SamplerOutput(x, trajectory, finite[None])


def annealed_langevin_dynamics(
    score_fn: NoiseConditionalScoreFn,
    x_init: Array,
    sigmas,
    key: Array,
    *,
    n_steps_each: int,
    step_lr,
    denoise: bool = False,
    trajectory_every: int | None = None,
) -> SamplerOutput:
    """Annealed Langevin dynamics, Algorithm 1 of NCSN (Song & Ermon, 2019).

    For each level ``σᵢ`` of the descending ``sigmas`` (``i = 1..L``), with ``αᵢ = step_lr·σᵢ²/σ_L²``,
    ``n_steps_each`` steps of::

        x ← x + (αᵢ/2) s(x, σᵢ) + √αᵢ z,   z ~ N(0, I).

    With ``denoise=True``, NCSNv2's final noise-free step ``x ← x + σ_L² s(x, σ_L)`` (Tweedie's formula,
    the posterior mean ``E[x₀ | x]`` under ``N(0, σ_L² I)`` noise).

    Convention: the reference PyTorch code (NCSN and NCSNv2) writes ``x ← x + α s + √(2α) z``, so its
    ``step_lr`` values are half of ours; configs ported from it double them (e.g. NCSNv2 CIFAR-10's 6.2e-6
    becomes 1.24e-5 here). NCSN's 2-D toy experiment (``σ`` 20 → 1, L = 10, T = 100, ``step_lr`` = 0.1) is
    written in our convention already.

    The whole schedule is one ``lax.scan`` over the flattened (level, step) index ``t``, level
    ``t // n_steps_each``; ``score_fn`` receives ``sigma`` as a ``(B,)`` array filled with ``σᵢ``.

    Args:
      score_fn: noise-conditional score ``score_fn(x, sigma) -> s`` with ``sigma`` of shape ``(B,)``.
      x_init: ``(B, *dims)`` initial state (e.g. uniform noise; NCSNv2 also uses data + σ₁ noise).
      sigmas: ``(L,)`` descending noise levels.
      key: PRNG key; global step ``t`` uses ``normal(fold_in(fold_in(key, 0), t), x.shape)``.
      n_steps_each: ``T``, steps per level (Python int, static under jit).
      step_lr: ``ε`` in our convention (scalar; may be traced).
      denoise: apply the final denoising step.
      trajectory_every: if an int ``k``, also return every ``k``-th iterate (``k = n_steps_each`` gives the
        state at the end of every level).

    Returns:
      :class:`SamplerOutput`: ``(B, *dims)`` samples; the ``(L·T // k, B, *dims)`` trajectory if
      ``trajectory_every`` was given, else None; the ``(L,)`` per-level finiteness flags ``level_finite``.
    """
    sigmas = _as_sigmas(sigmas)
    chex.assert_rank(x_init, {*range(1, 8)})
    noise_key = jax.random.fold_in(key, _LANGEVIN_STREAM)
    return _annealed_chain(
        score_fn,
        x_init,
        sigmas,
        n_steps_each=n_steps_each,
        step_lr=step_lr,
        denoise=denoise,
        trajectory_every=trajectory_every,
        noise_fn=lambda t: _step_noise(noise_key, t, x_init.shape, x_init.dtype),
    )


def annealed_langevin_inpainting(
    score_fn: NoiseConditionalScoreFn,
    x_ref: Array,
    mask: Array,
    x_init: Array,
    sigmas,
    key: Array,
    *,
    n_steps_each: int,
    step_lr,
    denoise: bool = False,
    trajectory_every: int | None = None,
) -> SamplerOutput:
    """Inpainting with annealed Langevin dynamics (NCSN, Song & Ermon, 2019, §5).

    Known entries (``mask == 1``) are clamped to a noisy copy of the reference, unknown ones follow
    Algorithm 1. At each level ``σᵢ`` one noise draw ``zᵢ`` (per level, as in NCSN's
    ``anneal_Langevin_dynamics_inpainting``) gives ``yᵢ = x_ref + σᵢ zᵢ``; every step is::

        x ← m ⊙ yᵢ + (1 − m) ⊙ x
        x ← x + (αᵢ/2) s(x, σᵢ) + √αᵢ z
        x ← m ⊙ yᵢ + (1 − m) ⊙ x

    so the score always sees known entries at the noise level it is conditioned on. After the last level
    (and the optional denoising step ``x ← x + σ_L² s(x, σ_L)``), known entries are set to ``x_ref``
    exactly (trajectory frames show them as ``yᵢ``). NCSNv2's version redraws ``zᵢ`` at every step; per
    level is NCSN's original.

    With an all-zero mask this is :func:`annealed_langevin_dynamics` with the same key, value for value.

    Args:
      score_fn: noise-conditional score ``score_fn(x, sigma) -> s`` with ``sigma`` of shape ``(B,)``.
      x_ref: ``(B, *dims)`` reference data supplying the known entries.
      mask: 1 (or True) where ``x_ref`` is known, 0 elsewhere; broadcastable to ``x_ref`` (e.g. ``(*dims)``).
      x_init: ``(B, *dims)`` initial state.
      sigmas: ``(L,)`` descending noise levels.
      key: PRNG key; Langevin noise as in :func:`annealed_langevin_dynamics`, level ``i``'s reference
        noise ``zᵢ`` is ``normal(fold_in(fold_in(key, 1), i), x.shape)``.
      n_steps_each, step_lr, denoise, trajectory_every: as in :func:`annealed_langevin_dynamics`.

    Returns:
      As :func:`annealed_langevin_dynamics`; known entries of ``samples`` equal ``x_ref``.
    """
    sigmas = _as_sigmas(sigmas)
    chex.assert_equal_shape([x_ref, x_init])
    known = jnp.broadcast_to(jnp.asarray(mask).astype(bool), x_ref.shape)
    x_ref = x_ref.astype(x_init.dtype)
    noise_key = jax.random.fold_in(key, _LANGEVIN_STREAM)
    reference_key = jax.random.fold_in(key, _REFERENCE_STREAM)

    def constrain(x, level):
        noisy_reference = x_ref + sigmas[level] * _step_noise(reference_key, level, x.shape, x.dtype)
        return jnp.where(known, noisy_reference.astype(x.dtype), x)

    return _annealed_chain(
        score_fn,
        x_init,
        sigmas,
        n_steps_each=n_steps_each,
        step_lr=step_lr,
        denoise=denoise,
        trajectory_every=trajectory_every,
        noise_fn=lambda t: _step_noise(noise_key, t, x_init.shape, x_init.dtype),
        constrain=constrain,
        finalize=lambda x: jnp.where(known, x_ref, x),
    )


def interpolation_weights(n_interpolations: int) -> tuple[Array, Array]:
    """Spherical weights ``(cos(πλ/2), sin(πλ/2))`` for ``λ = linspace(0, 1, n_interpolations)``.

    Computed as ``(sin(π(1−λ)/2), sin(πλ/2))`` so that both end points are exactly ``(1, 0)`` and
    ``(0, 1)``; ``w_p² + w_q² = 1``, so the interpolated noise is again standard normal.
    """
    n_interpolations = _check_positive_int("n_interpolations", n_interpolations)
    if n_interpolations < 2:
        raise ValueError(f"n_interpolations must be >= 2, got {n_interpolations}")
    lam = jnp.linspace(0.0, 1.0, n_interpolations, dtype=jnp.float32)
    return jnp.sin(0.5 * jnp.pi * (1.0 - lam)), jnp.sin(0.5 * jnp.pi * lam)


def interpolate(
    score_fn: NoiseConditionalScoreFn,
    x_init: Array,
    sigmas,
    key: Array,
    *,
    n_interpolations: int,
    n_steps_each: int,
    step_lr,
    denoise: bool = False,
    trajectory_every: int | None = None,
) -> SamplerOutput:
    """NCSNv2's interpolation between two noise seeds (``anneal_Langevin_dynamics_interpolation``).

    Each row ``r`` of ``x_init`` starts ``n_interpolations`` chains from the same state ``x_init[r]``. The
    chains differ only in their Langevin noise: at every step two endpoint noises ``z_p, z_q ~ N(0, I)``
    are drawn per row and chain ``j`` uses their spherical interpolation (NCSNv2 reference code)::

        z_j = cos(π λ_j / 2) z_p + sin(π λ_j / 2) z_q,   λ_j = j / (n_interpolations − 1),

    which is again ``N(0, I)`` (see :func:`interpolation_weights`), followed by annealed Langevin
    dynamics exactly as in :func:`annealed_langevin_dynamics`. With ``key_p, key_q =
    jax.random.split(key)``, ``z_p`` and ``z_q`` are the Langevin noises of
    ``annealed_langevin_dynamics(score_fn, x_init, sigmas, key_p)`` and ``(..., key_q)``, so column 0 and
    column −1 are those two independent runs and the columns between interpolate them. The reference
    has no denoising step here (``denoise=False`` by default; ``True`` applies it to every chain).

    Args:
      score_fn: noise-conditional score ``score_fn(x, sigma) -> s`` with ``sigma`` of shape ``(B,)``;
        called on batches of ``n_rows · n_interpolations``.
      x_init: ``(n_rows, *dims)`` initial state of each row (reference: uniform, or data + σ₁ noise).
      sigmas: ``(L,)`` descending noise levels.
      key: PRNG key, split into the two endpoint keys.
      n_interpolations: chains per row, ``≥ 2`` (end points included).
      n_steps_each, step_lr, denoise, trajectory_every: as in :func:`annealed_langevin_dynamics`.

    Returns:
      :class:`SamplerOutput` with ``(n_rows, n_interpolations, *dims)`` samples; a trajectory, if asked
      for, is ``(n_frames, n_rows, n_interpolations, *dims)``.
    """
    sigmas = _as_sigmas(sigmas)
    chex.assert_rank(x_init, {*range(1, 8)})
    n_rows, *dims = x_init.shape
    weight_p, weight_q = interpolation_weights(n_interpolations)
    key_p, key_q = jax.random.split(key)
    noise_key_p = jax.random.fold_in(key_p, _LANGEVIN_STREAM)
    noise_key_q = jax.random.fold_in(key_q, _LANGEVIN_STREAM)
    column = (None, slice(None)) + (None,) * len(dims)  # (n_interpolations,) -> (1, n, 1, ...)
    weight_p, weight_q = weight_p[column].astype(x_init.dtype), weight_q[column].astype(x_init.dtype)
    flat_shape = (n_rows * n_interpolations, *dims)

    def noise_fn(t):
        z_p = _step_noise(noise_key_p, t, x_init.shape, x_init.dtype)[:, None]
        z_q = _step_noise(noise_key_q, t, x_init.shape, x_init.dtype)[:, None]
        return (weight_p * z_p + weight_q * z_q).reshape(flat_shape)

    x_start = jnp.broadcast_to(x_init[:, None], (n_rows, n_interpolations, *dims)).reshape(flat_shape)
    samples, trajectory, level_finite = _annealed_chain(
        score_fn,
        x_start,
        sigmas,
        n_steps_each=n_steps_each,
        step_lr=step_lr,
        denoise=denoise,
        trajectory_every=trajectory_every,
        noise_fn=noise_fn,
    )
    samples = samples.reshape(n_rows, n_interpolations, *dims)
    if trajectory is not None:
        trajectory = trajectory.reshape(trajectory.shape[0], n_rows, n_interpolations, *dims)
    return SamplerOutput(samples, trajectory, level_finite)


def first_nonfinite_level(level_finite) -> int | None:
    """Index of the first noise level whose iterates were not all finite, or None if all were.

    Args:
      level_finite: a sampler's ``level_finite`` (a concrete array; call outside ``jit``).
    """
    flags = np.asarray(level_finite, dtype=bool)
    if flags.ndim != 1:
        raise ValueError(f"level_finite must be 1-D, got shape {flags.shape}")
    bad = np.flatnonzero(~flags)
    return int(bad[0]) if bad.size else None


__all__ = [
    "SamplerOutput",
    "langevin_dynamics",
    "annealed_langevin_dynamics",
    "annealed_langevin_inpainting",
    "interpolate",
    "interpolation_weights",
    "first_nonfinite_level",
]
