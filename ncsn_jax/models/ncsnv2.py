"""NCSNv2 (Song & Ermon 2020): NCSNv2 (32 / 64 px), NCSNv2Deeper (96-128 px), NCSNv2Deepest (256 px).

Unconditional RefineNet score networks with InstanceNorm++ whose output is divided by the noise level
(technique 3 of the paper)::

    s_theta(x, sigma) = f_theta(x) / sigma            (per example: sigma has shape (B,))

so ``s_theta(x, sigma) * sigma`` does not depend on sigma. The reference code indexes a stored sigma table
with the level index; here the caller passes sigma itself, so no table is needed (a checkpoint's ``sigmas``
buffer is only checked against the config by :mod:`ncsn_jax.models.convert`).

Input convention: ``x`` in [0, 1] (NHWC) is mapped to ``2x - 1`` first, as the reference does when
``data.logit_transform`` and ``data.rescaled`` are off; ``centered=True`` (``config.data.centered``) means
``x`` is already in [-1, 1] and is used as is.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ncsn_jax.models import layers, registry
from ncsn_jax.models.normalization import get_normalization

Dtype = Any


def prepare_inputs(x: jax.Array, sigma: jax.Array | float, centered: bool) -> tuple[jax.Array, jax.Array]:
    """Checks shapes, broadcasts a scalar sigma to (B,), and maps [0, 1] images to [-1, 1] unless centered."""
    chex.assert_rank(x, 4)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
    x = x.astype(jnp.float32)
    return (x if centered else 2.0 * x - 1.0), sigma


class NCSNv2(nn.Module):
    """NCSNv2 for 32 px (CIFAR-10) and 64 px (CelebA) images: four stages, dilation 2 and 4 in the last two.

    Called ``model.apply(variables, x, sigma)`` with ``x`` (B, H, W, C) and ``sigma`` (B,); returns the
    score estimate (B, H, W, C) in float32. The number of channels is read from ``x``.
    """

    ngf: int = 128
    centered: bool = False
    normalization: str = "InstanceNorm++"
    nonlinearity: str = "elu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def stages(self, image_size: int) -> tuple[layers.Stage, ...]:
        return layers.four_dilated_stages(image_size)

    @nn.compact
    def __call__(self, x: jax.Array, sigma: jax.Array | float) -> jax.Array:
        h, sigma = prepare_inputs(x, sigma, self.centered)
        act = layers.get_activation(self.nonlinearity)
        norm = get_normalization(self.normalization, conditional=False, param_dtype=self.param_dtype)
        conv = lambda features, name: layers.Conv2d(
            features, 3, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )

        h = conv(self.ngf, "begin_conv")(h)
        h = layers.refinenet_cascade(
            h,
            None,
            stages=self.stages(x.shape[1]),
            ngf=self.ngf,
            normalization=norm,
            refine_normalization=None,
            pool="max",
            act=act,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        h = act(norm(name="normalizer")(h))
        f = conv(x.shape[-1], "end_conv")(h).astype(jnp.float32)
        return f / sigma[:, None, None, None]


class NCSNv2Deeper(NCSNv2):
    """NCSNv2 for 96-128 px (LSUN): five stages, widths up to 4 ngf, dilation 2 and 4 in the last two."""

    def stages(self, image_size: int) -> tuple[layers.Stage, ...]:
        del image_size
        return (
            layers.Stage("res1", 1, downsample=False, dilation=None, refine_name="refine5", refine_width=1),
            layers.Stage("res2", 2, downsample=True, dilation=None, refine_name="refine4", refine_width=1),
            layers.Stage("res3", 2, downsample=True, dilation=None, refine_name="refine3", refine_width=2),
            layers.Stage("res4", 4, downsample=True, dilation=2, refine_name="refine2", refine_width=2),
            layers.Stage("res5", 4, downsample=True, dilation=4, refine_name="refine1", refine_width=4),
        )


class NCSNv2Deepest(NCSNv2Deeper):
    """NCSNv2 for 256 px (FFHQ): NCSNv2Deeper with one more downsampling stage (``res31`` / ``refine31``)."""

    def stages(self, image_size: int) -> tuple[layers.Stage, ...]:
        deeper = super().stages(image_size)
        res31 = layers.Stage(
            "res31", 2, downsample=True, dilation=None, refine_name="refine31", refine_width=2
        )
        return (*deeper[:3], res31, *deeper[3:])


def _builder(cls: type[NCSNv2]):
    def build(config: Any) -> NCSNv2:
        model = config.model
        return cls(
            ngf=int(model.get("ngf", 128)),
            centered=bool(config.data.get("centered", False)),
            normalization=str(model.get("normalization", "InstanceNorm++")),
            nonlinearity=str(model.get("nonlinearity", "elu")),
            dtype=registry.compute_dtype(config),
        )

    return build


registry.register("ncsnv2")(_builder(NCSNv2))
registry.register("ncsnv2_deeper")(_builder(NCSNv2Deeper))
registry.register("ncsnv2_deepest")(_builder(NCSNv2Deepest))
