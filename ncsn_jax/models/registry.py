"""A name -> architecture registry, so that a new score network is one new file.

Each architecture registers a *builder*, a function ``config -> flax.linen.Module`` that reads what it needs
from ``config.model`` / ``config.data``::

    @registry.register("my_net")
    def build_my_net(config):
      return MyNet(features=config.model.get("ngf", 64))

:func:`create` then builds it from ``config.model.name``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ncsn_jax import errors

Builder = Callable[[Any], nn.Module]

_BUILDERS: dict[str, Builder] = {}
_EXAMPLE_RANKS: dict[str, tuple[int, ...]] = {}
IMAGES = (3,)  # one example is (H, W, C)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}  # config.model.dtype


def register(name: str, example_ranks: tuple[int, ...] = IMAGES) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(config) -> nn.Module`` under ``name`` (a ``config.model.name``);
    ``example_ranks`` are the ranks of one example the network takes (default: images, ``(H, W, C)``)."""

    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"A model named {name!r} is already registered.")
        _BUILDERS[name] = builder
        _EXAMPLE_RANKS[name] = tuple(example_ranks)
        return builder

    return decorator


def check_example_shape(name: str, example_shape: tuple[int, ...], dataset: str) -> None:
    """A :class:`~ncsn_jax.errors.UserError` where the network ``name`` cannot take examples of
    ``example_shape`` (an image network on the 2-D toy data, say), naming the networks that can."""
    ranks = _EXAMPLE_RANKS[name]
    if len(example_shape) in ranks:
        return
    takes = "images (H, W, C)" if ranks == IMAGES else f"examples of rank {', '.join(map(str, ranks))}"
    fitting = [other for other, r in sorted(_EXAMPLE_RANKS.items()) if len(example_shape) in r]
    raise errors.UserError(
        f"config.model.name={name!r} takes {takes}, but config.data.dataset={dataset!r} gives examples of "
        f"shape {tuple(example_shape)}; models for that data: {', '.join(fitting) or 'none'}."
    )


def registered_names() -> tuple[str, ...]:
    """The valid values of ``config.model.name``, sorted."""
    return tuple(sorted(_BUILDERS))


def create(config: Any) -> nn.Module:
    """Builds the score network named ``config.model.name`` (an unknown name is a
    :class:`~ncsn_jax.errors.UserError`)."""
    name = config.model.name
    if name not in _BUILDERS:
        raise errors.UserError(f"Unknown model name {name!r}; valid names: {', '.join(registered_names())}.")
    return _BUILDERS[name](config)


def compute_dtype(config: Any) -> Any:
    """``config.model.dtype`` ("float32" | "bfloat16") as a jnp dtype (parameters always stay float32)."""
    name = str(config.model.get("dtype", "float32"))
    if name not in DTYPES:
        raise errors.UserError(f"Unknown config.model.dtype {name!r}; valid: {', '.join(DTYPES)}.")
    return DTYPES[name]
