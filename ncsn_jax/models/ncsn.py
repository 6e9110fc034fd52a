"""NCSN (Song & Ermon 2019): CondRefineNetDilated, conditioned on the noise-level index.

Four residual stages (dilation 2 and 4 in the last two, only the second downsamples), four RefineNet
blocks with average-pooling CRP, ELU, and ConditionalInstanceNorm++ everywhere: every normalisation looks
up its ``gamma, alpha, beta`` for level ``i`` in an embedding table. ``ngf`` is 64 for MNIST and 128 for
CIFAR-10 / CelebA.

Calling convention (the same as every model here): ``model.apply(variables, x, sigma)`` with ``sigma`` of
shape (B,). Each sigma is mapped to the index of the *nearest level in log sigma* of the model's table
``sigmas`` (geometric from ``config.model.sigma_max`` to ``sigma_min`` over ``num_scales`` levels)::

    i(sigma) = argmin_i |log sigma - log sigmas[i]|

When sigma is concrete (eager calls, outside ``jit`` / ``grad`` tracing) a sigma that is not one of the
table's levels (relative tolerance 1e-4) raises ``ValueError``; inside ``jit`` the nearest level is used
silently, because traced values cannot be checked. The network output is the score itself (no 1/sigma).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import noise
from ncsn_jax.models import layers, registry
from ncsn_jax.models.ncsnv2 import prepare_inputs
from ncsn_jax.models.normalization import get_normalization

Dtype = Any
SIGMA_RTOL = 1e-4


def nearest_level_index(sigma: jax.Array, sigmas: tuple[float, ...] | np.ndarray) -> jax.Array:
    """(B,) int32 index of the level nearest to each sigma in log space."""
    log_table = jnp.log(jnp.asarray(sigmas, jnp.float32))
    distance = jnp.abs(jnp.log(sigma.astype(jnp.float32))[:, None] - log_table[None, :])
    return jnp.argmin(distance, axis=-1).astype(jnp.int32)


def check_sigmas_in_table(sigma: Any, sigmas: tuple[float, ...] | np.ndarray) -> None:
    """Raises ``ValueError`` if a concrete sigma is not a level of the table; does nothing when traced."""
    try:
        values = np.asarray(sigma, np.float64).reshape(-1)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    table = np.asarray(sigmas, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.abs(np.log(values)[:, None] - np.log(table)[None, :]).min(axis=1)
    bad = ~(distance <= SIGMA_RTOL)
    if bad.any():
        shown = np.unique(values[bad])[:5]
        raise ValueError(
            f"sigma {shown.tolist()} is not one of the {len(table)} noise levels of this index-conditioned "
            f"NCSN (geometric from {table[0]:.6g} to {table[-1]:.6g}: {np.array2string(table, precision=5)}). "
            "Pass one of these levels (inside jit the nearest level would be used)."
        )


class CondRefineNetDilated(nn.Module):
    """NCSN's score network ``s(x, sigma_i)`` for images ``x`` (B, H, W, C); output float32 (B, H, W, C)."""

    sigmas: tuple[float, ...]
    ngf: int = 128
    centered: bool = False
    normalization: str = "InstanceNorm++"
    nonlinearity: str = "elu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def num_classes(self) -> int:
        return len(self.sigmas)

    def stages(self, image_size: int) -> tuple[layers.Stage, ...]:
        return layers.four_dilated_stages(image_size)

    def level_index(self, sigma: jax.Array) -> jax.Array:
        """The (B,) level index each sigma is mapped to (nearest in log sigma)."""
        return nearest_level_index(sigma, self.sigmas)

    @nn.compact
    def __call__(self, x: jax.Array, sigma: jax.Array | float) -> jax.Array:
        check_sigmas_in_table(sigma, self.sigmas)
        h, sigma = prepare_inputs(x, sigma, self.centered)
        y = self.level_index(sigma)
        act = layers.get_activation(self.nonlinearity)
        norm = get_normalization(
            self.normalization, conditional=True, num_classes=self.num_classes, param_dtype=self.param_dtype
        )
        conv = lambda features, name: layers.Conv2d(
            features, 3, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )

        h = conv(self.ngf, "begin_conv")(h)
        h = layers.refinenet_cascade(
            h,
            y,
            stages=self.stages(x.shape[1]),
            ngf=self.ngf,
            normalization=norm,
            refine_normalization=norm,
            pool="avg",
            act=act,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        h = act(norm(name="normalizer")(h, y))
        return conv(x.shape[-1], "end_conv")(h).astype(jnp.float32)


@registry.register("ncsn")
def build_ncsn(config: Any) -> CondRefineNetDilated:
    model = config.model
    return CondRefineNetDilated(
        sigmas=tuple(float(s) for s in noise.config_sigmas(config)),
        ngf=int(model.get("ngf", 128)),
        centered=bool(config.data.get("centered", False)),
        normalization=str(model.get("normalization", "InstanceNorm++")),
        nonlinearity=str(model.get("nonlinearity", "elu")),
        dtype=registry.compute_dtype(config),
    )
