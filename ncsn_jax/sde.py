"""The variance-exploding (VE) SDE behind NCSN's noise schedule (Song et al., 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations").

NCSN perturbs data with Gaussian noise of a geometric sequence of levels σ_max = σ₁ > … > σ_N = σ_min. Its
continuous-time limit is the VE SDE on t ∈ [0, 1]::

    dx = g(t) dW,      σ(t) = σ_min (σ_max/σ_min)^t,      g(t) = σ(t) √(2 log(σ_max/σ_min)),

so that ``d[σ²]/dt = g²``. As in score_sde, the marginal at time t is the data convolved with
``N(0, σ(t)² I)`` — the data at ``t = 0`` already carries σ_min's noise — so the score of ``p_t`` is the
noise-conditional score ``s(x, σ(t))`` every model here computes::

    p_t = p_data ∗ N(0, σ(t)² I),     ∇ₓ log p_t(x) = s(x, σ(t)),     p_1 ≈ N(0, σ_max² I) (the prior).

Reversing it with the score gives the reverse-time SDE and the probability-flow ODE (same marginals)::

    dx = [f − g² s(x, σ(t))] dt + g dW̄,          dx/dt = f − ½ g² s(x, σ(t)),          f = 0 here.

Discretisation on the model's own table. :attr:`VESDE.discrete_sigmas` is the geometric table of N levels
(:func:`ncsn_jax.noise.geometric_sigmas`, the same function that builds a model's table), placed on the time
grid :attr:`VESDE.discrete_times` ``tᵢ = 1 − i/(N − 1)``, i = 0 … N − 1, so that ``σ(tᵢ) = σᵢ`` exactly: the
predictor–corrector sampler then evaluates the score only at the model's own levels, which is what NCSN v1's
embedding-by-level network needs (build the SDE with :meth:`VESDE.from_sigmas`, which checks that the table
is geometric and keeps it bit for bit). score_sde's VE grid is
``linspace(1, ε, N)`` with ``ε = 10⁻³``; for VE σ(0) = σ_min is finite, so the grid can end at t = 0.

Continuous σ. The probability-flow ODE and the likelihood evaluate the score at every σ(t) the adaptive
solver visits. Index-conditioned NCSN v1 maps such a σ silently to its nearest level under ``jit``, so those
are wrong for it; :func:`check_continuous_sigma` gives the clear error the command line reports.

Example::

    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
    x_T = sde.prior_sampling(jax.random.key(0), (16, 32, 32, 3))
    sde_for_ncsn_v1 = VESDE.from_sigmas(model.sigmas)            # N = L levels, σ(tᵢ) = σᵢ
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import errors, noise

Array = jax.Array
NoiseConditionalScoreFn = Callable[[Array, Array], Array]

GEOMETRIC_RTOL = 1e-4
"""Relative tolerance within which :meth:`VESDE.from_sigmas` accepts a table as geometric (float32 tables)."""

CONTINUOUS_SIGMA_MODELS = (
    "the NCSNv2 family ('ncsnv2', 'ncsnv2_deeper', 'ncsnv2_deepest') and the MLP ('mlp')"
)


def _per_example(values: Array, x: Array) -> Array:
    """Reshapes ``(B,)`` to ``(B, 1, …, 1)`` to broadcast against ``x``."""
    return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


@dataclasses.dataclass(frozen=True)
class VESDE:
    """The VE SDE ``dx = σ(t) √(2 log(σ_max/σ_min)) dW`` with ``σ(t) = σ_min (σ_max/σ_min)^t``, t ∈ [0, 1].

    A frozen (hashable) dataclass of Python numbers, so it can be closed over or passed as a static argument
    under ``jax.jit``. Time arguments ``t`` are scalars or ``(B,)`` arrays (one time per example).

    Attributes:
      sigma_min: σ(0) = σ_N, the smallest level (> 0).
      sigma_max: σ(1) = σ₁, the largest level (> sigma_min); the prior is ``N(0, σ_max² I)``.
      N: number of discretisation levels of the predictor–corrector sampler (≥ 2).
      table: the model's own levels when built by :meth:`from_sigmas` (then :attr:`discrete_sigmas`
        returns them bit for bit), else None.
    """

    sigma_min: float
    sigma_max: float
    N: int
    table: tuple[float, ...] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        sigma_min, sigma_max = float(self.sigma_min), float(self.sigma_max)
        if not (math.isfinite(sigma_max) and 0.0 < sigma_min < sigma_max):
            raise ValueError(
                f"The VE SDE needs 0 < sigma_min < sigma_max; got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}."
            )
        if isinstance(self.N, bool) or not isinstance(self.N, (int, np.integer)) or self.N < 2:
            raise ValueError(f"The VE SDE needs N >= 2 discretisation levels (a Python int); got {self.N!r}.")
        object.__setattr__(self, "sigma_min", sigma_min)
        object.__setattr__(self, "sigma_max", sigma_max)
        object.__setattr__(self, "N", int(self.N))
        if self.table is not None and (len(self.table) != self.N or self.table[0] != sigma_max):
            raise ValueError(
                "A VE SDE's table must have N levels from sigma_max down; build it with from_sigmas."
            )

    @classmethod
    def from_sigmas(cls, sigmas: Sequence[float] | np.ndarray | Array) -> VESDE:
        """The VE SDE whose discretisation is a model's own descending geometric table ``σ₁ > … > σ_L``.

        ``VESDE(σ_L, σ₁, L)``: its :attr:`discrete_sigmas` equal ``sigmas`` (to ``GEOMETRIC_RTOL``) and
        ``σ(tᵢ) = σᵢ`` on :attr:`discrete_times`. A table that is not geometric cannot be a VE SDE's
        discretisation (σ(t) is exponential in t) and raises ``ValueError``.
        """
        table = np.asarray(sigmas, np.float64).reshape(-1)
        if table.size < 2 or not np.all(np.isfinite(table)) or np.any(table <= 0):
            raise ValueError(f"A VE SDE needs at least 2 positive noise levels; got {table.tolist()}.")
        if np.any(np.diff(table) >= 0):
            raise ValueError(
                f"The noise levels must be strictly descending (σ₁ > … > σ_L); got {table.tolist()[:8]}…"
            )
        geometric = cls(sigma_min=float(table[-1]), sigma_max=float(table[0]), N=int(table.size))
        expected = geometric.discrete_sigmas.astype(np.float64)
        mismatch = np.max(np.abs(table / expected - 1.0))
        if mismatch > GEOMETRIC_RTOL:
            worst = int(np.argmax(np.abs(table / expected - 1.0)))
            raise ValueError(
                f"The noise levels are not a geometric sequence, so no VE SDE passes through all of them: "
                f"level {worst} is {table[worst]:.6g}, the geometric table from {table[0]:.6g} to "
                f"{table[-1]:.6g} over {table.size} levels has {expected[worst]:.6g} (relative difference "
                f"{mismatch:.2g} > {GEOMETRIC_RTOL:g})."
            )
        return dataclasses.replace(geometric, table=tuple(float(s) for s in table))

    # ------------------------------------------------------------------------------------------------
    # The continuous-time process
    # ------------------------------------------------------------------------------------------------

    @property
    def log_ratio(self) -> float:
        """``log(σ_max/σ_min)``; ``g(t)² = 2 log(σ_max/σ_min) σ(t)²``."""
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t) -> Array:
        """``σ(t) = σ_min (σ_max/σ_min)^t = σ_min exp(t log(σ_max/σ_min))``, elementwise in ``t``."""
        t = jnp.asarray(t, jnp.float32)
        return self.sigma_min * jnp.exp(t * self.log_ratio)

    def time(self, sigma) -> Array:
        """The inverse of :meth:`sigma`: ``t(σ) = log(σ/σ_min) / log(σ_max/σ_min)``."""
        return jnp.log(jnp.asarray(sigma, jnp.float32) / self.sigma_min) / self.log_ratio

    def diffusion(self, t) -> Array:
        """``g(t) = σ(t) √(2 log(σ_max/σ_min))``, elementwise in ``t``."""
        return self.sigma(t) * math.sqrt(2.0 * self.log_ratio)

    def sde(self, x: Array, t) -> tuple[Array, Array]:
        """Drift and diffusion of ``dx = f dt + g dW``: ``(f, g) = (0, g(t))``, ``g`` of ``t``'s shape."""
        return jnp.zeros_like(x), self.diffusion(t)

    def marginal_prob(self, x: Array, t) -> tuple[Array, Array]:
        """Mean and standard deviation of ``p_t(· | x)``: ``(x, σ(t))`` (std of ``t``'s shape)."""
        return x, self.sigma(t)

    def prior_sampling(self, key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        """A draw from the prior ``N(0, σ_max² I)`` of the given shape."""
        return self.sigma_max * jax.random.normal(key, tuple(shape), dtype)

    def prior_logp(self, z: Array) -> Array:
        """``(B,)`` log-density of ``N(0, σ_max² I)``: ``−D/2 log(2π σ_max²) − ‖z‖²/(2σ_max²)``, D = prod(dims)."""
        chex.assert_rank(z, {*range(2, 8)})
        dim = math.prod(z.shape[1:])
        squared_norm = jnp.sum(jnp.square(z.astype(jnp.float32)), axis=tuple(range(1, z.ndim)))
        return -0.5 * dim * math.log(2.0 * math.pi * self.sigma_max**2) - squared_norm / (
            2.0 * self.sigma_max**2
        )

    def probability_flow_drift(self, score_fn: NoiseConditionalScoreFn, x: Array, t) -> Array:
        """The probability-flow ODE's velocity ``dx/dt = f − ½ g(t)² s(x, σ(t))`` for a scalar ``t``.

        ``score_fn(x, sigma)`` receives ``sigma = σ(t)`` as a ``(B,)`` array.
        """
        t = jnp.asarray(t, jnp.float32)
        chex.assert_rank(t, 0)
        sigma = jnp.full((x.shape[0],), self.sigma(t), jnp.float32)
        score = score_fn(x, sigma)
        chex.assert_shape(score, x.shape)
        drift, diffusion = self.sde(x, t)
        return (drift - 0.5 * diffusion**2 * score).astype(x.dtype)

    # ------------------------------------------------------------------------------------------------
    # The discretisation on N levels (the model's own table)
    # ------------------------------------------------------------------------------------------------

    @property
    def discrete_sigmas(self) -> np.ndarray:
        """``(N,)`` float32 descending table ``σᵢ = σ_max (σ_min/σ_max)^{i/(N−1)}``, i = 0 … N − 1.

        :func:`ncsn_jax.noise.geometric_sigmas` — the function that builds models' tables — so a model
        configured with the same ``sigma_max, sigma_min, num_scales`` has exactly these levels; with
        :meth:`from_sigmas`, the given table itself.
        """
        if self.table is not None:
            return np.asarray(self.table, np.float32)
        return noise.geometric_sigmas(self.sigma_max, self.sigma_min, self.N)

    @property
    def discrete_times(self) -> np.ndarray:
        """``(N,)`` float32 times ``tᵢ = 1 − i/(N − 1)``, with ``σ(tᵢ) = σᵢ`` (:attr:`discrete_sigmas`)."""
        return np.linspace(1.0, 0.0, self.N).astype(np.float32)

    def level_sigmas(self, level) -> tuple[Array, Array]:
        """``(σᵢ, σᵢ₊₁)`` for level index ``i`` (int array), with ``σ_N = 0`` after the last level.

        The reverse step from level ``i`` removes the variance ``σᵢ² − σᵢ₊₁²``; from the last level it goes
        to σ = 0 (for the reverse-diffusion predictor: Tweedie's denoising step ``x + σ_min² s``).
        """
        table = jnp.asarray(self.discrete_sigmas)
        level = jnp.asarray(level, jnp.int32)
        sigma = table[level]
        sigma_next = jnp.where(level + 1 < self.N, table[jnp.minimum(level + 1, self.N - 1)], 0.0)
        return sigma, sigma_next

    def level_of_time(self, t) -> Array:
        """The level index ``i = round((1 − t)(N − 1))`` of a grid time (int32, ``t``'s shape)."""
        t = jnp.asarray(t, jnp.float32)
        return jnp.clip(jnp.round((1.0 - t) * (self.N - 1)), 0, self.N - 1).astype(jnp.int32)

    def discretize(self, x: Array, t) -> tuple[Array, Array]:
        """SMLD (NCSN) discretisation ``x_{i+1} = x_i + f_i + G_i z`` of the forward SDE at grid time ``t``.

        ``f_i = 0`` and ``G_i = √(σᵢ² − σᵢ₊₁²)`` (``σ_N = 0``), with ``i`` the level of ``t``
        (:meth:`level_of_time`): the variance the forward chain adds between consecutive levels, read
        backwards. This is score_sde's ``VESDE.discretize`` on our descending table; the reverse-diffusion
        predictor steps ``x ← x + G_i² s(x, σᵢ) + G_i z``.

        Returns:
          ``(f, G)``: ``f`` like ``x`` (zeros), ``G`` of ``t``'s shape.
        """
        sigma, sigma_next = self.level_sigmas(self.level_of_time(t))
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - sigma_next**2)


# ----------------------------------------------------------------------------------------------------
# Which models accept a continuous σ
# ----------------------------------------------------------------------------------------------------


def supports_continuous_sigma(model: Any) -> bool:
    """Whether a score network accepts any σ > 0 (not only the levels of a stored table).

    Index-conditioned networks (NCSN v1's ``CondRefineNetDilated``) carry their table as ``model.sigmas``
    and look each σ up by nearest level; the NCSNv2 family and the MLP take σ itself.
    """
    return getattr(model, "sigmas", None) is None


def check_continuous_sigma(model: Any, purpose: str) -> None:
    """Raises :class:`~ncsn_jax.errors.UserError` for a model that only accepts its own σ table, where ``purpose`` needs any σ.

    Args:
      model: the score network (a ``flax.linen.Module``).
      purpose: what needs the continuous σ, e.g. ``"the probability-flow ODE sampler"`` or
        ``"likelihood (bits/dim) evaluation"``.
    """
    if supports_continuous_sigma(model):
        return
    table = np.asarray(model.sigmas, np.float64)
    raise errors.UserError(
        f"{purpose} evaluates the score at every σ(t) an adaptive ODE solver visits, but "
        f"{type(model).__name__} (config.model.name='ncsn', NCSN v1) is conditioned on the index of one of its "
        f"{table.size} levels ({table[0]:.4g} … {table[-1]:.4g}) and would silently use the nearest level. "
        f"Use a model that takes σ itself — {CONTINUOUS_SIGMA_MODELS} — or, for this model, predictor–corrector "
        "sampling on its own table (config.sampling.method='pc')."
    )


__all__ = [
    "VESDE",
    "CONTINUOUS_SIGMA_MODELS",
    "supports_continuous_sigma",
    "check_continuous_sigma",
]
