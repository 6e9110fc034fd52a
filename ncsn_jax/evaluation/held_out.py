"""The held-out denoising loss of every noise level, with fixed noise so that its curves compare across steps.

For ``n`` examples ``x_b`` of the test split and one fixed draw ``z_b ~ N(0, I)`` (the ``HELD_OUT`` stream
of :mod:`ncsn_jax.rng`, the same at every level and every evaluation), level ``i``'s loss is NCSN's weighted
denoising objective at ``σᵢ`` alone,

    ℓᵢ = (1/n) Σ_b σᵢ^p · ½ ‖s(x_b + σᵢ z_b, σᵢ) + z_b / σᵢ‖²,    p = ``config.training.anneal_power``,

(:func:`ncsn_jax.losses.denoising_score_matching` with a one-level table), and the reported ``loss`` is their
mean ``(1/L) Σᵢ ℓᵢ``: the expectation of the training objective, whose levels are drawn uniformly, on data
the model has not seen. The test examples are the test split's batch of step 0, augmented as in training
(``config.data`` dequantisation), so a well-fitted model's held-out and training losses agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ncsn_jax import datasets, losses, models, parallel, rng


def per_level_loss(
    score_fn: losses.ConditionalScoreFn, x: jax.Array, sigmas: jax.Array, key: jax.Array, anneal_power: float
) -> jax.Array:
    """``(L,)`` losses ``ℓᵢ`` of the module docstring: every level sees the same examples and noise."""
    return jax.lax.map(
        lambda sigma: losses.denoising_score_matching(
            score_fn, x, sigma[None], key, anneal_power=anneal_power
        )[0],
        jnp.asarray(sigmas),
    )


@dataclasses.dataclass(frozen=True)
class HeldOutLoss:
    """``held_out(params) -> {"loss": mean over levels, "per_level": [ℓ₁, …, ℓ_L]}`` on fixed test data."""

    compute: Callable[[Any], jax.Array]

    @classmethod
    def from_config(
        cls,
        config: ml_collections.ConfigDict,
        model: nn.Module,
        sigmas: np.ndarray,
        mesh: jax.sharding.Mesh | None = None,
    ) -> HeldOutLoss:
        mesh = parallel.create_mesh() if mesh is None else mesh
        test = datasets.create_dataset(config, "test", data_dir=config.data.data_dir or None)
        n = config.eval.loss_examples
        if test.num_examples is not None:
            n = min(n, test.num_examples)
        n -= n % jax.device_count()
        local = test.get_batch(0, n, process_index=jax.process_index(), process_count=jax.process_count())
        x = parallel.global_batch(local, mesh)
        key = rng.held_out_key(config.seed)
        sigmas_j = jnp.asarray(sigmas, jnp.float32)
        anneal_power = float(config.training.anneal_power)

        @jax.jit
        def compute(params: Any) -> jax.Array:
            score_fn = models.get_score_fn(model, {"params": params})
            return per_level_loss(score_fn, x, sigmas_j, key, anneal_power)

        return cls(compute)

    def __call__(self, params: Any) -> dict[str, Any]:
        per_level = np.asarray(jax.device_get(self.compute(params)), np.float64)
        return {"loss": float(per_level.mean()), "per_level": per_level.tolist()}
