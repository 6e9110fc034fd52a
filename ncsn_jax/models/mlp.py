"""A noise-conditional MLP score network for low-dimensional data (the 2-D toy mixture, small-D tests).

``x`` is (B, D) (any (B, *dims) is flattened and the output reshaped back), ``sigma`` is (B,). The two
noise-conditional modes parametrise the score as ``s(x, sigma) = f(x, sigma) / sigma``: with DSM's weighting
lambda = sigma^2 the regression target of ``f`` is ``-z ~ N(0, I)`` at every level, so ``f`` works at unit
scale throughout.

``sigma_conditioning``:

* ``"embedding"`` (default) — ``f`` sees the input rescaled to unit order,
  ``c_in(sigma) x`` with ``c_in = 1 / sqrt(data_std^2 + sigma^2)`` (the standard deviation of ``x + sigma z``
  for data of scale ``data_std``), concatenated with an embedding of ``log sigma``: deterministic sinusoidal
  features ``sin / cos(w_k log sigma)`` with ``w_k = 2^k``, k = -2, ..., n - 3, passed through a Dense layer;
  that embedding is also added (through its own Dense projection) to every hidden layer's pre-activation.
* ``"scale"`` — NCSNv2's technique 3: ``f(x)`` does not see sigma at all (input ``x`` as is), so
  ``s(x, sigma) * sigma`` is independent of sigma exactly.
* ``"none"`` — an unconditional score ``s(x) = f(x / data_std) / data_std``: sigma is ignored (it may be
  ``None``). The score of data of scale ``data_std`` is of order ``1 / data_std``, so ``f`` again works at unit
  scale. This is the model of the sliced score matching paper (Song et al. 2019): exact / sliced score
  matching on the data itself, or any objective at a single noise level (``num_scales = 1``).

Config: ``config.model.hidden_dims`` (widths), ``sigma_conditioning``, ``nonlinearity`` (``"elu"`` in
``configs/default.py``, which every config file inherits; any of :func:`ncsn_jax.models.layers.get_activation`),
optional ``data_std`` (1.0) and ``num_frequencies`` (8).
Dense layers use flax's default (LeCun normal) initialisation; the output layer starts at zero so the
initial score is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ncsn_jax import errors
from ncsn_jax.models import layers, registry

Dtype = Any
SIGMA_CONDITIONINGS = ("embedding", "scale", "none")


def log_sigma_features(sigma: jax.Array, num_frequencies: int) -> jax.Array:
    """(B, 2 n + 1) features ``[log sigma, sin(w_k log sigma), cos(w_k log sigma)]``, ``w_k = 2^(k-2)``."""
    log_sigma = jnp.log(sigma.astype(jnp.float32))[:, None]
    frequencies = 2.0 ** (jnp.arange(num_frequencies, dtype=jnp.float32) - 2.0)
    angles = log_sigma * frequencies[None, :]
    return jnp.concatenate([log_sigma, jnp.sin(angles), jnp.cos(angles)], axis=-1)


class NoiseConditionalMLP(nn.Module):
    """``s(x, sigma) = f(x, sigma) / sigma`` with an MLP ``f`` (unconditional ``f(x / data_std) / data_std`` for
    ``sigma_conditioning="none"``); see the module docstring."""

    hidden_dims: Sequence[int] = (128, 128, 128)
    sigma_conditioning: str = "embedding"
    nonlinearity: str = "elu"
    data_std: float = 1.0
    num_frequencies: int = 8
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, sigma: jax.Array | float | None = None) -> jax.Array:
        if self.sigma_conditioning not in SIGMA_CONDITIONINGS:
            raise errors.UserError(
                f"Unknown config.model.sigma_conditioning {self.sigma_conditioning!r}; "
                f"valid: {', '.join(SIGMA_CONDITIONINGS)}."
            )
        chex.assert_rank(x, {2, 3, 4})
        batch, data_shape = x.shape[0], x.shape[1:]
        h = x.reshape(batch, -1).astype(jnp.float32)
        if self.sigma_conditioning == "none":  # unconditional: s(x) = f(x / data_std) / data_std
            h = h / self.data_std
            output_scale = jnp.full((batch,), self.data_std, jnp.float32)
        elif sigma is None:
            raise ValueError(f"sigma_conditioning={self.sigma_conditioning!r} needs sigma; got None.")
        else:
            sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (batch,))
            output_scale = sigma  # s = f / sigma
        act = layers.get_activation(self.nonlinearity)
        dense = lambda features, name, **kw: nn.Dense(
            features, dtype=self.dtype, param_dtype=self.param_dtype, name=name, **kw
        )

        embedding = None
        if self.sigma_conditioning == "embedding":
            h = h * jax.lax.rsqrt(self.data_std**2 + jnp.square(sigma))[:, None]
            embedding = act(
                dense(self.hidden_dims[0] if self.hidden_dims else 64, "sigma_embed")(
                    log_sigma_features(sigma, self.num_frequencies)
                )
            )
            h = jnp.concatenate([h, embedding], axis=-1)

        for i, width in enumerate(self.hidden_dims):
            h = dense(width, f"hidden_{i}")(h)
            if embedding is not None:
                h = h + dense(width, f"sigma_proj_{i}")(embedding)
            h = act(h)
        f = dense(math.prod(data_shape), "output", kernel_init=jax.nn.initializers.zeros)(h).astype(
            jnp.float32
        )
        return (f / output_scale[:, None]).reshape(batch, *data_shape)


@registry.register("mlp", example_ranks=(1, 2, 3))  # vectors or flattened images
def build_mlp(config: Any) -> NoiseConditionalMLP:
    model = config.model
    return NoiseConditionalMLP(
        hidden_dims=tuple(int(w) for w in model.get("hidden_dims", (128, 128, 128))),
        sigma_conditioning=str(model.get("sigma_conditioning", "embedding")),
        nonlinearity=str(model.get("nonlinearity", "elu")),
        data_std=float(model.get("data_std", 1.0)),
        num_frequencies=int(model.get("num_frequencies", 8)),
        dtype=registry.compute_dtype(config),
    )
