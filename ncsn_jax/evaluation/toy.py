"""Download-free metrics for the 2-D toy mixture (or any :class:`~ncsn_jax.mixtures.GaussianMixture`).

Three numbers answer "did the model learn the mixture?" without any external network or data:

* :func:`mode_weights` — the share of samples in each component, by the mixture's responsibilities::

      ŵ_k = (1/N) Σ_n r_k(x_n),   r_k(x) = w_k N(x; μ_k, s_k² I) / Σ_j w_j N(x; μ_j, s_j² I).

  For true samples ``E[r_k(x)] = ∫ w_k N(x; μ_k, s_k² I) dx = w_k``, so ``ŵ`` is an unbiased estimate of the
  true weights (NCSN's Fig. 3: plain Langevin dynamics gets them wrong, annealed Langevin right).
* :func:`mmd2` — the unbiased squared maximum mean discrepancy (Gretton et al., 2012) with the Gaussian
  kernel ``k(a, b) = exp(−‖a − b‖² / (2h²))``::

      MMD²_u = 1/(n(n−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j) − 2/(nm) Σ_{i,j} k(x_i, y_j),

  zero in expectation exactly when the two distributions are equal (it can be slightly negative).
  :func:`mmd2_to_mixture` compares samples with fresh draws from the mixture.
* :func:`fisher_divergence` — how far a learned noise-conditional score is from the analytic one, per level::

      F(σ) = ½ E_{x ~ p_σ} ‖s_θ(x, σ) − ∇ₓ log p_σ(x)‖²,

  with ``p_σ`` the mixture convolved with ``N(0, σ² I)`` (closed form in :mod:`ncsn_jax.mixtures`). The
  denoising score-matching loss at level σ equals ``σ² F(σ)`` plus a constant, so ``σ² F(σ)`` is the part
  of the training loss a better network could still remove.

:func:`toy_report` gathers all three for ``--mode=eval``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import mixtures

Array = jax.Array
NoiseConditionalScoreFn = Callable[[Array, Array], Array]

__all__ = [
    "fisher_divergence",
    "median_bandwidth",
    "mmd2",
    "mmd2_to_mixture",
    "mode_weights",
    "toy_report",
]


def mode_weights(samples, mixture: mixtures.GaussianMixture | None = None) -> np.ndarray:
    """``(K,)`` estimated component weights ``ŵ_k = mean_n r_k(x_n)`` (responsibilities under ``mixture``).

    Args:
      samples: ``(N, D)`` points.
      mixture: the reference mixture; default NCSN's toy mixture (component 0 = the +5·1 mode).
    """
    mixture = mixtures.ncsn_toy_mixture() if mixture is None else mixture
    samples = jnp.asarray(samples, jnp.float32)
    chex.assert_rank(samples, 2)
    return np.asarray(jnp.mean(mixture.responsibilities(samples), axis=0), np.float64)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = np.sum(a**2, axis=1)[:, None] + np.sum(b**2, axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(squared, 0.0)


def median_bandwidth(x, y, *, max_points: int = 1000) -> float:
    """The median heuristic: ``h`` = the median Euclidean distance between distinct points of ``x ∪ y``.

    Only the first ``max_points // 2`` points of each set enter (the median of a million distances is as
    good as that of all of them, at a fraction of the cost).
    """
    half = max(1, max_points // 2)
    pooled = np.concatenate([np.asarray(x[:half], np.float64), np.asarray(y[:half], np.float64)])
    pooled = pooled.reshape(len(pooled), -1)
    distances = np.sqrt(_squared_distances(pooled, pooled))
    return float(np.median(distances[np.triu_indices(len(pooled), k=1)]))


def mmd2(x, y, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD between samples ``x (n, D)`` and ``y (m, D)`` with a Gaussian kernel.

    ``k(a, b) = exp(−‖a − b‖² / (2h²))`` with ``h = bandwidth``, or the median heuristic
    (:func:`median_bandwidth`) when ``bandwidth`` is None. Float64; the formula is in the module docstring.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"mmd2 needs at least 2 points on each side, got {n} and {m}.")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} and {y.shape[1]}.")
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"The kernel bandwidth must be positive, got {h}.")

    def kernel_sum(a, b, exclude_diagonal):
        k = np.exp(-_squared_distances(a, b) / (2.0 * h * h))
        return np.sum(k) - (np.trace(k) if exclude_diagonal else 0.0)

    xx = kernel_sum(x, x, True) / (n * (n - 1))
    yy = kernel_sum(y, y, True) / (m * (m - 1))
    xy = kernel_sum(x, y, False) / (n * m)
    return float(xx + yy - 2.0 * xy)


def mmd2_to_mixture(
    samples,
    key: Array,
    mixture: mixtures.GaussianMixture | None = None,
    *,
    n_reference: int | None = None,
    bandwidth: float | None = None,
) -> float:
    """:func:`mmd2` between ``samples`` and ``n_reference`` (default ``len(samples)``) fresh mixture draws."""
    mixture = mixtures.ncsn_toy_mixture() if mixture is None else mixture
    reference = mixture.sample(key, n_reference or len(samples))
    return mmd2(samples, reference, bandwidth)


def fisher_divergence(
    score_fn: NoiseConditionalScoreFn,
    sigmas,
    key: Array,
    mixture: mixtures.GaussianMixture | None = None,
    *,
    n: int = 4096,
) -> np.ndarray:
    """``(L,)`` Fisher divergences ``F(σ) = ½ E_{x~p_σ} ‖s_θ(x, σ) − ∇ log p_σ(x)‖²`` at every level of ``sigmas``.

    Each level draws its own ``n`` points ``x ~ p_σ`` (key ``fold_in(key, level)``); the expectation is their
    mean. The score is called as ``score_fn(x (n, D), sigma (n,))``, the project's convention.
    """
    mixture = mixtures.ncsn_toy_mixture() if mixture is None else mixture
    sigmas = np.asarray(sigmas, np.float32).reshape(-1)

    @jax.jit
    def at_level(level: Array, sigma: Array) -> Array:
        x = mixture.sample(jax.random.fold_in(key, level), n, sigma)
        sigma_batch = jnp.full((n,), sigma, jnp.float32)
        learned = jnp.asarray(score_fn(x, sigma_batch), jnp.float32)
        chex.assert_shape(learned, x.shape)
        difference = learned - mixture.score(x, sigma_batch)
        return 0.5 * jnp.mean(jnp.sum(difference**2, axis=-1))

    return np.asarray([float(at_level(level, sigma)) for level, sigma in enumerate(sigmas)], np.float64)


def toy_report(
    samples,
    key: Array,
    *,
    score_fn: NoiseConditionalScoreFn | None = None,
    sigmas=None,
    mixture: mixtures.GaussianMixture | None = None,
    n_fisher: int = 4096,
) -> dict[str, Any]:
    """The toy metrics of ``samples`` (and of ``score_fn`` at ``sigmas``, when both are given), JSON-ready.

    Keys: ``mode_weights`` / ``true_weights`` (lists), ``mmd2`` to fresh true samples and, as its
    reference, ``mmd2_true_vs_true`` (two fresh true sets of the same size: the value of a perfect sampler),
    the median-heuristic ``mmd_bandwidth`` used for both, and with a score ``sigmas``, ``fisher_divergence``
    and ``weighted_fisher_divergence`` (``σ² F(σ)``) per level.
    """
    mixture = mixtures.ncsn_toy_mixture() if mixture is None else mixture
    samples = np.asarray(samples, np.float32)
    reference_key, second_key, fisher_key = jax.random.split(key, 3)
    reference = np.asarray(mixture.sample(reference_key, len(samples)))
    second = np.asarray(mixture.sample(second_key, len(samples)))
    bandwidth = median_bandwidth(reference, second)
    report: dict[str, Any] = {
        "num_samples": len(samples),
        "mode_weights": mode_weights(samples, mixture).tolist(),
        "true_weights": np.asarray(mixture.weights, np.float64).tolist(),
        "mmd_bandwidth": bandwidth,
        "mmd2": mmd2(samples, reference, bandwidth),
        "mmd2_true_vs_true": mmd2(second, reference, bandwidth),
    }
    if score_fn is not None and sigmas is not None:
        fisher = fisher_divergence(score_fn, sigmas, fisher_key, mixture, n=n_fisher)
        sigmas_np = np.asarray(sigmas, np.float64).reshape(-1)
        report["sigmas"] = sigmas_np.tolist()
        report["fisher_divergence"] = fisher.tolist()
        report["weighted_fisher_divergence"] = (sigmas_np**2 * fisher).tolist()
    return report
