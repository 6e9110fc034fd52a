"""Feature normalisations of NCSN / NCSNv2, unconditional and noise-level conditional.

All layers take NHWC feature maps and are called ``norm(x, y=None)``; ``y`` is the (B,) int32 noise-level
index, used by the conditional layers and ignored by the others (so the blocks in :mod:`layers` call every
normalisation the same way). Statistics are computed in float32 whatever the compute dtype; the output has
the input's dtype.

InstanceNorm++ (Song & Ermon 2019, eq. in App. B.1), exactly as the reference code computes it::

    mu_k, s_k^2 = mean, biased variance of channel k over H, W          (per example)
    mu_tilde_k  = (mu_k - mean_k(mu)) / sqrt(var_k(mu) + 1e-5)          (var over channels, *unbiased*,
                                                                         as torch.var's default)
    z_k = (x_k - mu_k) / sqrt(s_k^2 + 1e-5)                              (torch InstanceNorm2d)
    out = gamma_k * (z_k + alpha_k * mu_tilde_k) + beta_k

(the paper writes ``gamma z + beta + alpha mu_tilde``; the released code multiplies ``alpha mu_tilde`` by
``gamma`` as well, and that is what the released checkpoints were trained with). The conditional form takes
``gamma, alpha, beta`` from one embedding table of shape ``(num_classes, 3C)`` laid out
``[gamma | alpha | beta]`` along the feature axis, as torch's ``nn.Embedding(num_classes, 3C)`` there, so a
checkpoint's table is copied unchanged. Initialisation: gamma, alpha ~ N(1, 0.02), beta = 0.

Names accepted by :func:`get_normalization` (the reference configs' spellings; a ``Conditional`` prefix is
allowed and ignored): ``InstanceNorm++``, ``InstanceNorm``, ``BatchNorm``, ``GroupNorm`` (unconditional
only), ``VarianceNorm``, ``NoneNorm``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ncsn_jax import errors

Dtype = Any
EPS = 1e-5  # torch's InstanceNorm2d / BatchNorm2d default, and the reference's eps for mu_tilde


# ----------------------------------------------------------------------------------------------------------
# Pure functions.
# ----------------------------------------------------------------------------------------------------------


def instance_normalize(x: jax.Array, eps: float = EPS) -> jax.Array:
    """``(x - mu) / sqrt(s^2 + eps)`` per example and channel over H, W (biased variance), in float32."""
    chex.assert_rank(x, 4)
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def normalized_channel_means(x: jax.Array, eps: float = EPS) -> jax.Array:
    """InstanceNorm++'s ``mu_tilde``: (B, C) channel means standardised across channels (unbiased var)."""
    chex.assert_rank(x, 4)
    means = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    num_channels = means.shape[-1]
    centred = means - jnp.mean(means, axis=-1, keepdims=True)
    var = jnp.sum(jnp.square(centred), axis=-1, keepdims=True) / max(num_channels - 1, 1)
    return centred * jax.lax.rsqrt(var + eps)


def _normal_init(mean: float, stddev: float) -> Callable[..., jax.Array]:
    def init(key, shape, dtype=jnp.float32):
        return mean + stddev * jax.random.normal(key, shape, dtype)

    return init


def _embedding_init(chunk_inits: tuple[Callable[..., jax.Array], ...]) -> Callable[..., jax.Array]:
    """Initialises a (num_classes, k*C) table whose k column blocks of width C use ``chunk_inits``."""

    def init(key, shape, dtype=jnp.float32):
        num_classes, width = shape
        chunk = width // len(chunk_inits)
        keys = jax.random.split(key, len(chunk_inits))
        chunks = [f(k, (num_classes, chunk), dtype) for f, k in zip(chunk_inits, keys, strict=True)]
        return jnp.concatenate(chunks, axis=1)

    return init


_n1 = _normal_init(1.0, 0.02)  # N(1, 0.02): InstanceNorm++'s gamma and alpha
_u01 = jax.nn.initializers.uniform(1.0)  # U(0, 1): the reference's `.uniform_()` for CIN / CBN scales
_zeros = jax.nn.initializers.zeros


def _per_example(params: jax.Array) -> jax.Array:
    """(B, C) -> (B, 1, 1, C) to broadcast over NHWC feature maps."""
    return params[:, None, None, :]


# ----------------------------------------------------------------------------------------------------------
# Unconditional layers (NCSNv2). Parameter names follow torch: alpha, gamma, beta / weight, bias.
# ----------------------------------------------------------------------------------------------------------


class InstanceNormPlus(nn.Module):
    """InstanceNorm++ ``gamma (IN(x) + alpha mu_tilde) + beta`` with per-channel parameters."""

    use_bias: bool = True
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        del y
        c = x.shape[-1]
        alpha = self.param("alpha", _n1, (c,), self.param_dtype)
        gamma = self.param("gamma", _n1, (c,), self.param_dtype)
        h = instance_normalize(x) + alpha * _per_example(normalized_channel_means(x))
        out = gamma * h
        if self.use_bias:
            out = out + self.param("beta", _zeros, (c,), self.param_dtype)
        return out.astype(x.dtype)


class InstanceNorm(nn.Module):
    """Plain instance normalisation without affine parameters (torch ``InstanceNorm2d(C)``)."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        del y
        return instance_normalize(x).astype(x.dtype)


class BatchNorm(nn.Module):
    """Batch normalisation with the statistics of the current batch (torch ``BatchNorm2d`` in train mode).

    No running averages are kept, so ``variables`` stays ``{"params": ...}``. Unlike every other option this
    couples the examples of a batch: the network is then *not* per-example, which the jvp-based losses
    (exact / sliced score matching) assume. Provided for the papers' normalisation ablations only.
    """

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        del y
        c = x.shape[-1]
        weight = self.param("weight", jax.nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", _zeros, (c,), self.param_dtype)
        return (weight * _batch_normalize(x) + bias).astype(x.dtype)


def _batch_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + EPS)


class GroupNorm(nn.Module):
    """Group normalisation with ``min(32, C)`` groups (largest divisor of C not above 32), affine."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        del y
        c = x.shape[-1]
        groups = max(g for g in range(1, min(32, c) + 1) if c % g == 0)
        out = nn.GroupNorm(
            num_groups=groups, epsilon=EPS, dtype=jnp.float32, param_dtype=self.param_dtype, name="group_norm"
        )(x.astype(jnp.float32))
        return out.astype(x.dtype)


def _variance_normalize(x: jax.Array) -> jax.Array:
    """``x / sqrt(var(x) + eps)`` over H, W with torch.var's unbiased estimate (no centring)."""
    x = x.astype(jnp.float32)
    n = x.shape[1] * x.shape[2]
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.sum(jnp.square(x - mean), axis=(1, 2), keepdims=True) / max(n - 1, 1)
    return x * jax.lax.rsqrt(var + EPS)


class VarianceNorm(nn.Module):
    """``alpha * x / sqrt(var(x) + eps)``, alpha ~ N(1, 0.02) (NCSNv2's VarianceNorm2d)."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        del y
        alpha = self.param("alpha", _n1, (x.shape[-1],), self.param_dtype)
        return (alpha * _variance_normalize(x)).astype(x.dtype)


class NoneNorm(nn.Module):
    """The identity."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        del y
        return x


# ----------------------------------------------------------------------------------------------------------
# Conditional layers (NCSN): per-level parameters from one embedding table named `embed`.
# ----------------------------------------------------------------------------------------------------------


class _ConditionalNorm(nn.Module):
    """Base: looks up ``y`` in a ``(num_classes, len(chunk_inits) * C)`` table and splits it into chunks."""

    num_classes: int
    param_dtype: Dtype = jnp.float32

    def chunk_inits(self) -> tuple[Callable[..., jax.Array], ...]:
        raise NotImplementedError

    def lookup(self, y: jax.Array | None, num_features: int) -> list[jax.Array]:
        if y is None:
            raise ValueError(f"{type(self).__name__} is noise-conditional: call it with the level index y.")
        chex.assert_rank(y, 1)
        inits = self.chunk_inits()
        table = nn.Embed(
            self.num_classes,
            len(inits) * num_features,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            embedding_init=_embedding_init(inits),
            name="embed",
        )
        params = table(y)  # (B, k*C)
        return [_per_example(p) for p in jnp.split(params, len(inits), axis=-1)]


class ConditionalInstanceNormPlus(_ConditionalNorm):
    """ConditionalInstanceNorm++ ``gamma[y] (IN(x) + alpha[y] mu_tilde) + beta[y]``; table [gamma|alpha|beta]
    of shape (num_classes, 3C), gamma and alpha ~ N(1, 0.02) and beta = 0 at initialisation."""

    use_bias: bool = True

    def chunk_inits(self):
        return (_n1, _n1, _zeros) if self.use_bias else (_n1, _n1)

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        chunks = self.lookup(y, x.shape[-1])
        gamma, alpha = chunks[0], chunks[1]
        h = instance_normalize(x) + alpha * _per_example(normalized_channel_means(x))
        out = gamma * h
        if self.use_bias:
            out = out + chunks[2]
        return out.astype(x.dtype)


class ConditionalInstanceNorm(_ConditionalNorm):
    """``gamma[y] IN(x) + beta[y]``, table [gamma|beta], gamma ~ U(0, 1) as in the reference code."""

    def chunk_inits(self):
        return (_u01, _zeros)

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        gamma, beta = self.lookup(y, x.shape[-1])
        return (gamma * instance_normalize(x) + beta).astype(x.dtype)


class ConditionalBatchNorm(_ConditionalNorm):
    """``gamma[y] BN(x) + beta[y]`` with batch statistics (not per-example; see :class:`BatchNorm`)."""

    def chunk_inits(self):
        return (_u01, _zeros)

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        gamma, beta = self.lookup(y, x.shape[-1])
        return (gamma * _batch_normalize(x) + beta).astype(x.dtype)


class ConditionalVarianceNorm(_ConditionalNorm):
    """``gamma[y] x / sqrt(var(x) + eps)``, gamma ~ N(1, 0.02)."""

    def chunk_inits(self):
        return (_n1,)

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        (gamma,) = self.lookup(y, x.shape[-1])
        return (gamma * _variance_normalize(x)).astype(x.dtype)


class ConditionalNoneNorm(_ConditionalNorm):
    """``gamma[y] x + beta[y]`` (no normalisation), gamma ~ U(0, 1)."""

    def chunk_inits(self):
        return (_u01, _zeros)

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        gamma, beta = self.lookup(y, x.shape[-1])
        return (gamma * x.astype(jnp.float32) + beta).astype(x.dtype)


# ----------------------------------------------------------------------------------------------------------

_UNCONDITIONAL = {
    "InstanceNorm++": InstanceNormPlus,
    "InstanceNorm": InstanceNorm,
    "BatchNorm": BatchNorm,
    "GroupNorm": GroupNorm,
    "VarianceNorm": VarianceNorm,
    "NoneNorm": NoneNorm,
}
_CONDITIONAL = {
    "InstanceNorm++": ConditionalInstanceNormPlus,
    "InstanceNorm": ConditionalInstanceNorm,
    "BatchNorm": ConditionalBatchNorm,
    "VarianceNorm": ConditionalVarianceNorm,
    "NoneNorm": ConditionalNoneNorm,
}


def normalization_names() -> tuple[str, ...]:
    """The valid values of ``config.model.normalization`` (each also with a ``Conditional`` prefix)."""
    return tuple(sorted(set(_UNCONDITIONAL) | set(_CONDITIONAL)))


def get_normalization(
    name: str, *, conditional: bool, num_classes: int | None = None, param_dtype: Dtype = jnp.float32
) -> Callable[..., nn.Module]:
    """A constructor ``(name=...) -> norm`` for ``norm(x, y=None)``; conditional ones need ``num_classes``."""
    key = name.removeprefix("Conditional")
    table = _CONDITIONAL if conditional else _UNCONDITIONAL
    if key not in table:
        kind = "conditional" if conditional else "unconditional"
        raise errors.UserError(
            f"Unknown {kind} normalization {name!r} (config.model.normalization); valid: {', '.join(table)}."
        )
    if conditional:
        if num_classes is None:
            raise ValueError("A conditional normalization needs num_classes (the number of noise levels).")
        return functools.partial(table[key], num_classes=num_classes, param_dtype=param_dtype)
    return functools.partial(table[key], param_dtype=param_dtype)
