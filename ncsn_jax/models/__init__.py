"""Score networks: NCSN, the NCSNv2 family, a toy MLP and a small U-Net, behind one calling convention.

Every model is a ``flax.linen.Module`` called ``model.apply(variables, x, sigma)``: ``x`` in data space
(NHWC images in [0, 1], or (B, D) vectors) and ``sigma`` of shape (B,), one noise level per example; the
output is the score estimate, float32, shaped like ``x``. ``variables`` is ``{"params": ...}`` only.

* :func:`create` builds the network named ``config.model.name`` (see :data:`MODEL_NAMES`) from
  ``config.model.{name, ngf, sigma_max, sigma_min, num_scales, dtype, normalization, nonlinearity,
  hidden_dims, sigma_conditioning, data_std}`` and ``config.data.centered``; optional fields fall back to
  defaults.
* :func:`init_variables` initialises with a dummy batch; :func:`get_score_fn` gives ``score_fn(x, sigma)``.
* :func:`conv_flops` counts convolution FLOPs of one forward pass (for MFU), :func:`count_params` parameters.

Adding an architecture is one file: a module plus a builder decorated with
``@registry.register("name")``, and its import below (which registers it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncsn_jax import compiler_options
from ncsn_jax.models import layers, mlp, ncsn, ncsnv2, normalization, registry, unet  # noqa: F401 (registers)
from ncsn_jax.models.mlp import NoiseConditionalMLP
from ncsn_jax.models.ncsn import CondRefineNetDilated
from ncsn_jax.models.ncsnv2 import NCSNv2, NCSNv2Deeper, NCSNv2Deepest
from ncsn_jax.models.registry import create, register
from ncsn_jax.models.unet import SmallUNet

MODEL_NAMES: tuple[str, ...] = registry.registered_names()

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

__all__ = [
    "MODEL_NAMES",
    "CondRefineNetDilated",
    "NCSNv2",
    "NCSNv2Deeper",
    "NCSNv2Deepest",
    "NoiseConditionalMLP",
    "SmallUNet",
    "create",
    "register",
    "init_variables",
    "get_score_fn",
    "conv_flops",
    "count_params",
    "example_shape",
    "abstract_variables",
]


def example_shape(config: Any) -> tuple[int, ...]:
    """Shape of one example: ``(2,)`` for the 2-D toy mixture (``config.data.dataset == "toy"``), otherwise
    ``(image_size, image_size, num_channels)``."""
    data = config.data
    if data.get("dataset") == "toy":
        return (2,)
    return (int(data.image_size), int(data.image_size), int(data.num_channels))


def _dummy_sigma(model: nn.Module, batch_size: int) -> jax.Array:
    sigmas = getattr(model, "sigmas", None)  # index-conditioned models: a level of their table
    return jnp.full((batch_size,), sigmas[0] if sigmas else 1.0, jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: nn.Module, variables: dict[str, Any], x: jax.Array, sigma: jax.Array) -> jax.Array:
    return model.apply(variables, x, sigma)


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict[str, Any]:
    """``model.init`` on a zero batch of ``input_shape`` (batch dimension included, e.g. ``(1, 32, 32, 3)``).

    Compiled as a program that runs once (:func:`ncsn_jax.compiler_options.for_one_run`): on the CPU that
    costs about what running the hundreds of random initialisers op by op does for the large networks, and
    a fifth of it for the small ones. Under a trace (``jax.eval_shape`` of the train state, a caller's
    ``jit``) it is traced inline: ``compiler_options`` belong to the outermost ``jit`` only.
    """
    x = jnp.zeros(tuple(input_shape), jnp.float32)
    init = model.init
    # Under a trace (eval_shape, jit) the caller's compilation runs it.
    if not isinstance(key, jax.core.Tracer):
        init = jax.jit(model.init, compiler_options=compiler_options.for_one_run())
    return init(key, x, _dummy_sigma(model, x.shape[0]))


def get_score_fn(model: nn.Module, variables: dict[str, Any]) -> ScoreFn:
    """``score_fn(x, sigma) = model.apply(variables, x, sigma)``, compiled (one cache per model config).

    For the index-conditioned NCSN a concrete sigma outside its table raises ``ValueError``; under ``jit``
    (traced sigma) each sigma is mapped to the nearest level in log sigma (see :mod:`ncsn_jax.models.ncsn`).
    """
    sigmas = getattr(model, "sigmas", None)

    def score_fn(x: jax.Array, sigma: jax.Array) -> jax.Array:
        if sigmas is not None:
            ncsn.check_sigmas_in_table(sigma, sigmas)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (jnp.shape(x)[0],))
        return _apply(model, variables, x, sigma)

    return score_fn


def count_params(params: Any) -> int:
    """Number of scalars in a pytree of arrays (or of ``jax.ShapeDtypeStruct``)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """Shapes and dtypes of :func:`init_variables`' result, computed without allocating (``jax.eval_shape``).

    Traces afresh on every call (no compilation cache), which :func:`conv_flops` relies on.
    """
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    sigma = _dummy_sigma(model, x.shape[0])
    return jax.eval_shape(lambda key, x: model.init(key, x, sigma), jax.random.PRNGKey(0), x)


def conv_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of the convolutions of one forward pass on a batch of ``input_shape``, 2 per multiply-add.

    ``2 * B * H_out * W_out * C_out * C_in * k^2`` summed over every :class:`layers.Conv2d` and ``nn.Conv``
    call, with the shapes traced abstractly (nothing is computed). Normalisations, activations, pooling and
    resizing are not counted; for NCSN / NCSNv2 they add about 1% or less.
    """
    total = 0

    def count(next_fun, args, kwargs, context):
        nonlocal total
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__":
            return out
        if isinstance(module, layers.Conv2d):
            in_features = args[0].shape[-1]
            total += 2 * math.prod(out.shape[:-1]) * module.features * in_features * module.kernel_size**2
        elif isinstance(module, nn.Conv):  # flax's own convolution (models.unet)
            in_features = args[0].shape[-1] // module.feature_group_count
            total += (
                2 * math.prod(out.shape[:-1]) * module.features * in_features * math.prod(module.kernel_size)
            )
        return out

    with nn.intercept_methods(count):
        abstract_variables(model, input_shape)
    return int(total)
