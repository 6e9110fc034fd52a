"""Isotropic Gaussian mixtures with closed-form noisy densities and scores.

A mixture ``p(x) = Σ_k w_k N(x; μ_k, s_k² I)`` convolved with Gaussian noise ``N(0, σ² I)`` is again a
mixture, with the variances added::

    p_σ(x) = Σ_k w_k N(x; μ_k, (s_k² + σ²) I)

and its score has the closed form (``r_k`` the posterior responsibilities, computed with a logsumexp)::

    ∇ₓ log p_σ(x) = Σ_k r_k(x, σ) (μ_k − x) / (s_k² + σ²),
    r_k(x, σ) = softmax_k( log w_k + log N(x; μ_k, (s_k² + σ²) I) ).

This is the ground truth the samplers are tested against, the data of the 2-D toy experiment of NCSN
(Song & Ermon, 2019, Fig. 3) and the reference score for the toy configuration's evaluation.

Example::

    mixture = ncsn_toy_mixture()
    x = mixture.sample(jax.random.key(0), 5000)               # (5000, 2)
    s = mixture.score(x, jnp.full((5000,), 1.0))              # score of p convolved with N(0, 1·I)
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array


@struct.dataclass
class GaussianMixture:
    """``p(x) = Σ_k w_k N(x; μ_k, s_k² I)`` in ``D`` dimensions; a frozen dataclass and a JAX pytree.

    Build it with :meth:`create` (which validates its arguments); instances can be passed through
    ``jax.jit`` as ordinary arguments.

    Attributes:
      weights: ``(K,)`` mixture weights ``w_k``, non-negative, summing to one.
      means: ``(K, D)`` component means ``μ_k``.
      stds: ``(K,)`` isotropic component standard deviations ``s_k``.
    """

    weights: Array
    means: Array
    stds: Array

    @classmethod
    def create(cls, weights, means, stds) -> GaussianMixture:
        """Validated constructor; ``weights`` must be non-negative and sum to one, ``stds`` positive.

        Values are checked when concrete (not under a ``jit`` trace of traced arguments).
        """
        if not any(isinstance(value, jax.core.Tracer) for value in (weights, stds)):
            weights_np, stds_np = np.asarray(weights, np.float64), np.asarray(stds, np.float64)
            if np.any(weights_np < 0) or not math.isclose(float(np.sum(weights_np)), 1.0, rel_tol=1e-5):
                raise ValueError(f"mixture weights must be non-negative and sum to 1, got {weights_np}")
            if np.any(stds_np <= 0):
                raise ValueError(f"component standard deviations must be positive, got {stds_np}")
        weights = jnp.asarray(weights, jnp.float32)
        means = jnp.asarray(means, jnp.float32)
        stds = jnp.asarray(stds, jnp.float32)
        chex.assert_rank([weights, means, stds], [1, 2, 1])
        chex.assert_equal_shape_prefix([weights, means, stds], prefix_len=1)
        return cls(weights=weights, means=means, stds=stds)

    @property
    def dim(self) -> int:
        """Dimension ``D`` of the data space."""
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        """Number of components ``K``."""
        return self.means.shape[0]

    def _noisy_variances(self, x: Array, sigma) -> Array:
        """``(B, K)`` variances ``s_k² + σ_b²`` of the components convolved with ``N(0, σ_b² I)``."""
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        return self.stds[None, :] ** 2 + sigma[:, None] ** 2

    def component_log_probs(self, x: Array, sigma=0.0) -> Array:
        """``(B, K)`` joint log-densities ``log w_k + log N(x; μ_k, (s_k² + σ²) I)``.

        Args:
          x: ``(B, D)`` points.
          sigma: noise level, a scalar or ``(B,)`` (one per point); ``0`` is the clean mixture.
        """
        chex.assert_rank(x, 2)
        chex.assert_axis_dimension(x, 1, self.dim)
        variances = self._noisy_variances(x, sigma)
        squared_distances = jnp.sum((x[:, None, :] - self.means[None, :, :]) ** 2, axis=-1)
        log_normal = -0.5 * squared_distances / variances - 0.5 * self.dim * jnp.log(2 * jnp.pi * variances)
        return jnp.log(self.weights)[None, :] + log_normal

    def log_prob(self, x: Array, sigma=0.0) -> Array:
        """``(B,)`` log-density ``log p_σ(x) = logsumexp_k [log w_k + log N(x; μ_k, (s_k² + σ²) I)]``."""
        return jax.nn.logsumexp(self.component_log_probs(x, sigma), axis=-1)

    def responsibilities(self, x: Array, sigma=0.0) -> Array:
        """``(B, K)`` posterior component probabilities ``r_k(x, σ)`` under ``p_σ``."""
        return jax.nn.softmax(self.component_log_probs(x, sigma), axis=-1)

    def score(self, x: Array, sigma=0.0) -> Array:
        """``(B, D)`` score ``∇ₓ log p_σ(x) = Σ_k r_k(x, σ) (μ_k − x) / (s_k² + σ²)``.

        Matches the project's score-function conventions: ``mixture.score`` is a noise-conditional
        ``score_fn(x, sigma)`` with ``sigma`` of shape ``(B,)``, and ``mixture.score(x)`` is the clean score.
        """
        variances = self._noisy_variances(x, sigma)
        weights = self.responsibilities(x, sigma) / variances  # (B, K)
        return weights @ self.means - jnp.sum(weights, axis=-1, keepdims=True) * x

    def sample(self, key: Array, n: int, sigma=0.0) -> Array:
        """``(n, D)`` independent draws from ``p_σ`` (``sigma=0``: from the mixture itself)."""
        component_key, noise_key = jax.random.split(key)
        components = jax.random.choice(component_key, self.num_components, (n,), p=self.weights)
        std = jnp.sqrt(self.stds[components] ** 2 + jnp.asarray(sigma, jnp.float32) ** 2)
        noise = jax.random.normal(noise_key, (n, self.dim), jnp.float32)
        return self.means[components] + std[:, None] * noise

    def nearest_component(self, x: Array) -> Array:
        """``(B,)`` int32 index of the component mean closest to each point (Euclidean distance)."""
        chex.assert_rank(x, 2)
        squared_distances = jnp.sum((x[:, None, :] - self.means[None, :, :]) ** 2, axis=-1)
        return jnp.argmin(squared_distances, axis=-1).astype(jnp.int32)


def ncsn_toy_mixture(dim: int = 2) -> GaussianMixture:
    """NCSN's toy distribution ``0.8·N(5·1, I) + 0.2·N(−5·1, I)`` (Song & Ermon, 2019, Fig. 3).

    Component 0 is the heavy mode at ``+5·1``, component 1 the light mode at ``−5·1``.
    """
    ones = np.ones((dim,), np.float32)
    return GaussianMixture.create(
        weights=[0.8, 0.2], means=np.stack([5.0 * ones, -5.0 * ones]), stds=[1.0, 1.0]
    )
