"""The train state and the optimizer: what a checkpoint holds, and how a run starts.

A module of its own so that training (:mod:`ncsn_jax.train`), sampling (:mod:`ncsn_jax.generate`) and
checkpoint conversion (:mod:`ncsn_jax.convert_torch`) share it without importing each other.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ncsn_jax import errors, models, rng

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the config (the data position is ``step`` itself).

    Attributes:
        step: number of optimizer updates applied so far (int32 scalar).
        params: model parameters.
        ema_params: exponential moving average of ``params`` (NCSNv2's EMA; equals ``params`` when rate = 0).
        opt_state: optax state.
        key: raw ``uint32[2]`` PRNG key, :func:`ncsn_jax.rng.train_key`; step ``t`` uses ``fold_in(key, t)``.
        nonfinite_count: updates skipped so far because the loss or a gradient was not finite.
    """

    step: jax.Array
    params: PyTree
    ema_params: PyTree
    opt_state: PyTree
    key: jax.Array
    nonfinite_count: jax.Array


def create_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam as in the reference code, with optional L2 weight decay, linear warm-up and global-norm clipping.

    PyTorch's ``Adam(weight_decay=w)`` adds ``w·θ`` to the gradient before the moment estimates, which is
    ``add_decayed_weights`` placed before ``scale_by_adam`` (not AdamW's decoupled decay).
    """
    if optim.optimizer.lower() != "adam":
        raise errors.UserError(f"config.optim.optimizer={optim.optimizer!r} is not supported; valid: 'adam'.")
    lr: float | optax.Schedule = optim.lr
    if optim.warmup > 0:
        lr = optax.linear_schedule(0.0, optim.lr, transition_steps=optim.warmup)
    transforms = []
    if optim.grad_clip > 0:
        transforms.append(optax.clip_by_global_norm(optim.grad_clip))
    if optim.weight_decay > 0:
        transforms.append(optax.add_decayed_weights(optim.weight_decay))
    transforms.append(optax.scale_by_adam(b1=optim.beta1, b2=optim.beta2, eps=optim.eps))
    transforms.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*transforms)


def init_train_state(
    model: nn.Module,
    config: ml_collections.ConfigDict,
    example_shape: tuple[int, ...],
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """Initialise parameters from ``config.seed`` (stream :func:`ncsn_jax.rng.init_key`) and wrap them with
    the optimizer state, an EMA copy and the training key."""
    params = models.init_variables(model, rng.init_key(config.seed), (1, *example_shape))["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
        key=rng.train_key(config.seed),
        nonfinite_count=jnp.zeros((), jnp.int32),
    )


def abstract_train_state(
    model: nn.Module,
    config: ml_collections.ConfigDict,
    example_shape: tuple[int, ...],
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """Shapes and dtypes of :func:`init_train_state`'s result, without computing it (a template to restore
    a checkpoint into)."""
    return jax.eval_shape(lambda: init_train_state(model, config, example_shape, optimizer))


def abstract_params(model: nn.Module, example_shape: tuple[int, ...]) -> PyTree:
    """Shapes and dtypes of the model's parameters (the template to restore only the weights into)."""
    return models.abstract_variables(model, (1, *example_shape))["params"]
