"""Sampling mode: draw samples from a trained (or converted) model and write them with pictures.

``--mode=sample`` restores the newest checkpoint of ``--workdir``, takes the EMA weights (unless
``config.sampling.use_ema=False``), runs the sampler chosen by ``config.sampling.method`` with the batch split
over all devices, and writes ``workdir/samples/<step>/``:

* ``samples.npz`` — key ``samples``, data space (images NHWC in [0, 1]; vectors as they are);
    ``trajectory`` too when ``config.sampling.trajectory_every > 0``;
* ``samples.png`` — an image grid, or for 2-D data a scatter plot over the learned score field;
* ``trajectory.png`` — a strip of every k-th iterate, when a trajectory was kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ncsn_jax import checkpointing, config_lib, mixtures, models, parallel, plotting, sampling

METHODS = ("annealed_langevin", "inpainting", "interpolation")


class NonFiniteSamplesError(FloatingPointError):
    """Sampling produced NaN or inf."""


def initial_samples(
    config: ml_collections.ConfigDict, key: jax.Array, shape: tuple[int, ...], sigma_max: float
) -> jax.Array:
    """x₀ of the sampler: uniform on ``config.sampling.init_range`` (the references' choice for images and
    NCSN's toy experiment) or ``N(0, σ₁² I)`` with ``init="gaussian"``."""
    if config.sampling.init == "uniform":
        low, high = config.sampling.init_range
        return jax.random.uniform(key, shape, jnp.float32, low, high)
    if config.sampling.init == "gaussian":
        return sigma_max * jax.random.normal(key, shape, jnp.float32)
    raise ValueError(f"config.sampling.init={config.sampling.init!r}; valid: 'uniform', 'gaussian'.")


def _sampler_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(
        n_steps_each=config.sampling.n_steps_each,
        step_lr=float(config.sampling.step_lr),
        denoise=config.sampling.denoise,
    )


def _check_finite(samples: np.ndarray, sigmas: np.ndarray, level_finite: np.ndarray) -> None:
    """Raise :class:`NonFiniteSamplesError` naming the first non-finite noise level, if any sample is."""
    if np.all(np.isfinite(samples)):
        return
    level = sampling.first_nonfinite_level(level_finite)
    where = "" if level is None else f" first at noise level {level} (sigma={sigmas[level]:.4g})"
    raise NonFiniteSamplesError(
        f"Sampling produced non-finite values{where}. The step size config.sampling.step_lr may be too large "
        "for this model, or the model itself diverged (check the training loss)."
    )


def draw_samples(
    config: ml_collections.ConfigDict,
    params: Any,
    model: nn.Module,
    sigmas: np.ndarray,
    key: jax.Array,
    n: int,
    example_shape: tuple[int, ...],
    mesh: jax.sharding.Mesh,
    *,
    trajectory_every: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Annealed Langevin samples ``(n, *example_shape)`` from ``params`` (and the thinned trajectory).

    The batch is split over ``mesh``; ``n`` must be a multiple of the device count.
    """
    parallel.check_batch_size(n, "number of samples")
    init_key, chain_key = jax.random.split(key)
    x_init = initial_samples(config, init_key, (n, *example_shape), float(sigmas[0]))
    x_init = jax.device_put(x_init, parallel.batch_sharded(mesh))
    sigmas_j = jnp.asarray(sigmas)
    options = _sampler_options(config)

    @jax.jit
    def run(params, x_init, chain_key):
        score_fn = models.get_score_fn(model, {"params": params})
        return sampling.annealed_langevin_dynamics(
            score_fn,
            x_init,
            sigmas_j,
            chain_key,
            trajectory_every=trajectory_every or None,
            return_level_finite=True,
            **options,
        )

    out = run(params, x_init, chain_key)
    if trajectory_every:
        samples, trajectory, level_finite = out
    else:
        (samples, level_finite), trajectory = out, None
    samples = parallel.to_host(samples)
    _check_finite(samples, np.asarray(sigmas), np.asarray(level_finite))
    return samples, (parallel.to_host(trajectory) if trajectory is not None else None)


def write_samples(
    samples: np.ndarray,
    out_dir: str,
    config: ml_collections.ConfigDict,
    *,
    trajectory: np.ndarray | None = None,
    score_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    true_score_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Write ``samples.npz`` and pictures (see the module docstring) into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    arrays = {"samples": samples}
    if trajectory is not None:
        arrays["trajectory"] = trajectory
    np.savez_compressed(os.path.join(out_dir, "samples.npz"), **arrays)
    picture = os.path.join(out_dir, "samples.png")
    if samples.ndim == 4:
        plotting.save_image_grid(samples, picture, scale=max(1, 128 // samples.shape[1]))
        if trajectory is not None and trajectory.ndim == 5:
            plotting.save_trajectory_strip(
                trajectory, os.path.join(out_dir, "trajectory.png"), scale=max(1, 64 // samples.shape[1])
            )
    elif samples.ndim == 2 and samples.shape[1] == 2:
        low, high = config.sampling.init_range
        plotting.save_scatter(
            samples,
            picture,
            score_fn=score_fn,
            true_score_fn=true_score_fn,
            limits=(float(low), float(high)),
            title=f"{len(samples)} samples",
        )
    logging.info("Wrote %d samples to %s", len(samples), out_dir)


def _score_fields(
    config: ml_collections.ConfigDict, model: nn.Module, params: Any, samples: np.ndarray, sigma: float
) -> dict[str, Callable[[np.ndarray], np.ndarray] | None]:
    """For 2-D data, the learned score at the smallest σ (and the true one for the toy mixture) to plot."""
    if samples.ndim != 2 or samples.shape[1] != 2:
        return {}
    score_fn = models.get_score_fn(model, {"params": params})
    learned = jax.jit(lambda x: score_fn(x, jnp.full((x.shape[0],), sigma, jnp.float32)))
    true = None
    if config.data.dataset == "toy":
        mixture = mixtures.ncsn_toy_mixture()
        true = jax.jit(lambda x: mixture.score(x, sigma))
    return {"score_fn": learned, "true_score_fn": true}


def write_snapshot(
    config: ml_collections.ConfigDict,
    params: Any,
    model: nn.Module,
    sigmas: np.ndarray,
    key: jax.Array,
    example_shape: tuple[int, ...],
    mesh: jax.sharding.Mesh,
    out_dir: str,
) -> None:
    """Samples drawn during training at ``snapshot_freq`` (all processes sample, process 0 writes)."""
    n = config.sampling.snapshot_batch_size
    n -= n % jax.device_count()
    if n <= 0:
        return
    samples, _ = draw_samples(config, params, model, sigmas, key, n, example_shape, mesh)
    if jax.process_index() == 0:
        fields = _score_fields(config, model, params, samples, float(sigmas[-1]))
        write_samples(samples, out_dir, config, **fields)


def restore_for_sampling(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[ml_collections.ConfigDict, nn.Module, Any, np.ndarray, dict[str, Any]]:
    """Load the newest checkpoint of ``workdir`` for sampling.

    Returns:
        ``(config, model, params, sigmas, meta)`` with ``config``'s ``"auto"`` fields set to the values the
        checkpoint was trained with, and ``params`` the EMA weights unless ``config.sampling.use_ema`` is False.
    """
    from ncsn_jax import train  # pylint: disable=g-import-not-at-top  (train imports this module)

    store = checkpointing.CheckpointStore(workdir, read_only=True)
    meta = store.latest_meta()
    if meta is None:
        raise checkpointing.CheckpointNotFoundError(
            f"No checkpoint in --workdir={workdir}. Train first (--mode=train with the same --workdir), or "
            "convert the authors' weights with python -m ncsn_jax.convert_torch."
        )
    config = config_lib.apply_resolved(config, meta.get("resolved", {}))
    config_lib.validate(config)
    example_shape = tuple(meta["example_shape"])
    model = models.create(config)
    optimizer = train.create_optimizer(config.optim)
    state, meta = store.restore(train.abstract_train_state(model, config, example_shape, optimizer), config)
    params = state.ema_params if config.sampling.use_ema else state.params
    return config, model, params, np.asarray(meta["sigmas"], np.float32), meta


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """``--mode=sample``: restore, sample with ``config.sampling``, write outputs; returns the output dir."""
    if config.sampling.method not in METHODS:
        raise ValueError(f"config.sampling.method={config.sampling.method!r}; valid: {', '.join(METHODS)}.")
    parallel.check_batch_size(config.sampling.batch_size, "config.sampling.batch_size")
    config, model, params, sigmas, meta = restore_for_sampling(config, workdir)
    mesh = parallel.create_mesh()
    example_shape = tuple(meta["example_shape"])
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x5A3)
    out_dir = os.path.join(workdir, "samples", str(meta["step"]))
    n = config.sampling.batch_size
    if config.sampling.method == "annealed_langevin":
        samples, trajectory = draw_samples(
            config,
            params,
            model,
            sigmas,
            key,
            n,
            example_shape,
            mesh,
            trajectory_every=config.sampling.trajectory_every,
        )
    elif config.sampling.method == "inpainting":
        samples, trajectory = _inpaint(config, params, model, sigmas, key, n, example_shape, mesh)
    else:
        samples, trajectory = _interpolate(config, params, model, sigmas, key, example_shape)
    if jax.process_index() == 0:
        fields = _score_fields(config, model, params, samples, float(sigmas[-1]))
        write_samples(samples, out_dir, config, trajectory=trajectory, **fields)
    return out_dir


def _inpaint(config, params, model, sigmas, key, n, example_shape, mesh):
    """NCSN's inpainting: the left half of test images is given, the right half is sampled."""
    from ncsn_jax import datasets  # pylint: disable=g-import-not-at-top

    if len(example_shape) != 3:
        raise ValueError("config.sampling.method='inpainting' needs image data.")
    reference = datasets.create_dataset(config, "test", data_dir=config.data.data_dir or None)
    x_ref = jnp.asarray(reference.sample_examples(n, seed=config.seed)[:n])
    if x_ref.shape[0] < n:
        raise ValueError(
            f"The test split has only {x_ref.shape[0]} examples; lower config.sampling.batch_size."
        )
    width = example_shape[1]
    mask = jnp.zeros(example_shape, jnp.float32).at[:, : width // 2, :].set(1.0)
    init_key, chain_key = jax.random.split(key)
    x_init = initial_samples(config, init_key, (n, *example_shape), float(sigmas[0]))
    sharding = parallel.batch_sharded(mesh)
    score_fn = models.get_score_fn(model, {"params": params})
    run = jax.jit(
        lambda x_ref, x_init: sampling.annealed_langevin_inpainting(
            score_fn,
            x_ref,
            mask,
            x_init,
            jnp.asarray(sigmas),
            chain_key,
            return_level_finite=True,
            **_sampler_options(config),
        )
    )
    samples, level_finite = run(jax.device_put(x_ref, sharding), jax.device_put(x_init, sharding))
    samples = parallel.to_host(samples)
    _check_finite(samples, sigmas, np.asarray(level_finite))
    return samples, None


def _interpolate(config, params, model, sigmas, key, example_shape):
    """NCSNv2's interpolation: each row of ``n_interpolations`` chains shares its start and interpolates
    its Langevin noise between two seeds; the grid is written row by row."""
    score_fn = models.get_score_fn(model, {"params": params})
    n_rows = max(1, config.sampling.batch_size // config.sampling.n_interpolations)
    init_key, chain_key = jax.random.split(key)
    x_init = initial_samples(config, init_key, (n_rows, *example_shape), float(sigmas[0]))
    run = jax.jit(
        lambda x_init: sampling.interpolate(
            score_fn,
            x_init,
            jnp.asarray(sigmas),
            chain_key,
            n_interpolations=config.sampling.n_interpolations,
            return_level_finite=True,
            **_sampler_options(config),
        )
    )
    samples, level_finite = run(x_init)
    samples = np.asarray(samples).reshape(-1, *example_shape)
    _check_finite(samples, sigmas, np.asarray(level_finite))
    return samples, None
