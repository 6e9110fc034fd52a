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
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}  # config.model.dtype


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(config) -> nn.Module`` under ``name`` (a ``config.model.name``)."""

    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"A model named {name!r} is already registered.")
        _BUILDERS[name] = builder
        return builder

    return decorator


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
