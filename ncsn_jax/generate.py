"""Sampling mode: draw samples from a trained (or converted) model and write them with pictures.

``--mode=sample`` restores the newest checkpoint of ``--workdir`` (only the weights it uses: the EMA weights
unless ``config.sampling.use_ema=False``), runs the sampler chosen by ``config.sampling.method`` with the
batch split over all devices, and writes ``workdir/samples/<step>/<method>-seed<k>/`` (``k`` =
``config.sampling.seed``), so that methods and seeds never overwrite each other:

* ``samples.npz`` — key ``samples``, data space (images NHWC in [0, 1]; vectors as they are);
    ``trajectory`` when ``config.sampling.trajectory_every > 0``; for inpainting also ``reference`` (the
    test images) and ``mask`` (1 where pixels were given);
* ``samples.png`` — an image grid (inpainting: original | masked input | completion; interpolation: one
    row per pair of noise seeds), or for 2-D data a scatter plot over the learned score field;
* ``trajectory.png`` — a strip of every k-th iterate, when a trajectory was kept.

The same config draws the same samples, bit for bit; ``--config.sampling.seed=1`` (2, …) draws new ones.

The pieces, for a notebook or another mode: :func:`restore_for_sampling` gives the weights, the noise levels
and the checkpoint's metadata; :func:`draw_samples` runs any method of :data:`METHODS` on them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ncsn_jax import (
    checkpointing,
    compiler_options,
    config_lib,
    datasets,
    errors,
    logging_utils,
    mixtures,
    models,
    parallel,
    plotting,
    rng,
    sampling,
    sde,
    sde_sampling,
    train_state,
)

METHODS = config_lib.SAMPLING_METHODS


class Restored(NamedTuple):
    """What :func:`restore_for_sampling` returns.

    Attributes:
        config: the config with its ``"auto"`` fields set to the values the checkpoint was trained with.
        model: the score network of ``config``.
        params: the weights sampling uses (EMA unless ``config.sampling.use_ema`` is False).
        sigmas: the noise levels, :func:`ncsn_jax.config_lib.sigmas` of ``config``.
        meta: the checkpoint's metadata (``step``, ``example_shape``, ``resolved``, …).
    """

    config: ml_collections.ConfigDict
    model: nn.Module
    params: Any
    sigmas: np.ndarray
    meta: dict[str, Any]

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["example_shape"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])


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
    raise errors.UserError(f"config.sampling.init={config.sampling.init!r}; valid: 'uniform', 'gaussian'.")


def _check_finite(samples: np.ndarray, sigmas: np.ndarray, level_finite: np.ndarray) -> None:
    """Raise :class:`~ncsn_jax.errors.NonFiniteSamplesError` naming the first non-finite noise level."""
    if np.all(np.isfinite(samples)):
        return
    level = sampling.first_nonfinite_level(level_finite)
    where = "" if level is None else f" first at noise level {level} (sigma={sigmas[level]:.4g})"
    raise errors.NonFiniteSamplesError(
        f"Sampling produced non-finite values{where}. The step size config.sampling.step_lr may be too large "
        "for this model, or the model itself diverged (check the training loss)."
    )


def inpainting_mask(example_shape: tuple[int, ...]) -> np.ndarray:
    """NCSN's inpainting mask: 1 on the left half of each image (given), 0 on the right half (sampled)."""
    if len(example_shape) != 3:
        raise errors.UserError("config.sampling.method='inpainting' needs image data.")
    mask = np.zeros(example_shape, np.float32)
    mask[:, : example_shape[1] // 2, :] = 1.0
    return mask


def inpainting_references(config: ml_collections.ConfigDict, n: int) -> np.ndarray:
    """``n`` test images of ``config``'s dataset, chosen by ``config.sampling.seed``."""
    reference = datasets.create_dataset(config, "test", data_dir=config.data.data_dir or None)
    x_ref = reference.sample_examples(n, seed=config.sampling.seed)[:n]
    if x_ref.shape[0] < n:
        raise errors.UserError(
            f"The test split has only {x_ref.shape[0]} examples; lower config.sampling.batch_size."
        )
    return x_ref


def _batch_size(config: ml_collections.ConfigDict, method: str, n: int) -> int:
    """Chains run in parallel: ``n`` (a multiple of the device count), or for interpolation the rows of
    ``n_interpolations`` chains that fit in ``n``."""
    if method != "interpolation":
        parallel.check_batch_size(n, "config.sampling.batch_size")
        return n
    n_rows = max(1, n // config.sampling.n_interpolations)
    if n_rows % jax.device_count():
        raise errors.UserError(
            f"Interpolation runs config.sampling.batch_size // config.sampling.n_interpolations = {n_rows} "
            f"row(s) of chains, which do not split over {jax.device_count()} devices; choose a batch size of "
            f"{jax.device_count() * config.sampling.n_interpolations} (or a multiple)."
        )
    return n_rows


def sampling_sde(config: ml_collections.ConfigDict, model: nn.Module, sigmas: np.ndarray) -> sde.VESDE:
    """The VE SDE that ``method="pc"`` / ``"ode"`` run: on the model's own noise table when
    ``config.sampling.num_steps`` is 0 (exactly its levels; NCSN v1 needs this), else ``num_steps`` levels of
    the same σ_max → σ_min (a model that takes any σ only)."""
    if config.sampling.num_steps == 0:
        return sde.VESDE.from_sigmas(sigmas)
    sde.check_continuous_sigma(model, f"config.sampling.num_steps={config.sampling.num_steps}")
    return sde.VESDE(float(sigmas[-1]), float(sigmas[0]), int(config.sampling.num_steps))


def _run_sde_sampler(config, model, sigmas, method: str):
    """``run(params, x_init, chain_key, extra) -> SDESamples`` of :mod:`ncsn_jax.sde_sampling`, and its x₀."""
    process = sampling_sde(config, model, sigmas)
    if method == "ode":
        sde.check_continuous_sigma(model, "config.sampling.method='ode' (the probability-flow ODE)")
    options = config.sampling

    def run(params: Any, x_init: jax.Array, chain_key: jax.Array, extra: dict[str, jax.Array]):
        del extra
        score_fn = models.get_score_fn(model, {"params": params})
        if method == "ode":
            return sde_sampling.ode_sampler(
                score_fn,
                process,
                x_init,
                rtol=options.ode_rtol,
                atol=options.ode_atol,
                eps=options.ode_eps,
                solver=options.ode_solver,
                denoise=options.denoise,
            )
        return sde_sampling.pc_sampler(
            score_fn,
            process,
            x_init,
            chain_key,
            predictor=options.predictor,
            corrector=options.corrector,
            snr=options.snr,
            n_steps_corrector=options.n_steps_corrector,
            denoise=options.denoise,
        )

    return run, process


def draw_samples(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    params: Any,
    sigmas: np.ndarray,
    key: jax.Array,
    n: int,
    example_shape: tuple[int, ...],
    mesh: jax.sharding.Mesh,
    *,
    method: str = "annealed_langevin",
    trajectory_every: int = 0,
    reference: np.ndarray | None = None,
) -> sampling.SamplerOutput:
    """Run the sampler ``method`` (one of :data:`METHODS`) of :mod:`ncsn_jax.sampling` with ``params``.

    Every method runs the same way: one ``jax.jit`` with the weights as an argument, its batch of chains
    split over ``mesh``; the initial state is :func:`initial_samples` from the first half of ``key``, the
    sampler's noise from the second. Step counts and ``step_lr`` come from ``config.sampling``.

    Args:
        config, model, params, sigmas: the model (see :func:`restore_for_sampling`).
        key: the PRNG key of this draw (:func:`ncsn_jax.rng.sample_key` for ``--mode=sample``).
        n: number of samples; a multiple of the device count (interpolation: ``n // n_interpolations`` rows,
            a multiple of the device count, of ``n_interpolations`` samples each).
        example_shape: shape of one example.
        mesh: the devices to split the chains over.
        method: ``annealed_langevin``, ``pc`` / ``ode`` (predictor-corrector or probability-flow ODE sampling of
            :func:`sampling_sde`, started from its prior N(0, σ₁²I); no trajectory), ``inpainting``
            (``reference`` images given on the left half, see :func:`inpainting_mask`) or ``interpolation``
            (NCSNv2's noise interpolation).
        trajectory_every: keep every k-th iterate (0: none).
        reference: ``(n, *example_shape)`` images to inpaint; required for inpainting.

    Returns:
        The :class:`~ncsn_jax.sampling.SamplerOutput` on the host (numpy); interpolation's samples are
        ``(rows · n_interpolations, *example_shape)``, row by row.

    Raises:
        NonFiniteSamplesError: a sample is NaN or inf (naming the first noise level where that happened).
    """
    if method not in METHODS:
        raise errors.UserError(f"config.sampling.method={method!r}; valid: {', '.join(METHODS)}.")
    batch = _batch_size(config, method, n)
    init_key, chain_key = jax.random.split(key)
    sharded = parallel.batch_sharded(mesh)
    if method in ("pc", "ode"):
        run_sde, process = _run_sde_sampler(config, model, sigmas, method)
        x_init = jax.device_put(process.prior_sampling(init_key, (batch, *example_shape)), sharded)
        out = jax.jit(run_sde, compiler_options=compiler_options.for_backend())(params, x_init, chain_key, {})
        samples = parallel.to_host(out.samples)
        logging.info("%s sampling: %d score evaluations.", method, int(out.n_evaluations))
        level_finite = np.array([np.all(np.isfinite(samples))])  # one flag: the SDE has no level bookkeeping
        _check_finite(samples, np.asarray(sigmas[-1:]), level_finite)
        return sampling.SamplerOutput(samples, None, level_finite)
    x_init = jax.device_put(
        initial_samples(config, init_key, (batch, *example_shape), float(sigmas[0])), sharded
    )
    options = dict(
        n_steps_each=config.sampling.n_steps_each,
        step_lr=float(config.sampling.step_lr),
        denoise=config.sampling.denoise,
        trajectory_every=trajectory_every or None,
    )
    extra: dict[str, jax.Array] = {}
    if method == "inpainting":
        if reference is None or reference.shape != (batch, *example_shape):
            shape = None if reference is None else reference.shape
            raise ValueError(f"inpainting needs {(batch, *example_shape)} reference images, got {shape}")
        mask = jnp.asarray(inpainting_mask(example_shape))
        extra = {"x_ref": jax.device_put(reference, sharded), "mask": mask}

    def run(params: Any, x_init: jax.Array, chain_key: jax.Array, extra: dict[str, jax.Array]):
        score_fn = models.get_score_fn(model, {"params": params})
        if method == "inpainting":
            return sampling.annealed_langevin_inpainting(
                score_fn, extra["x_ref"], extra["mask"], x_init, sigmas, chain_key, **options
            )
        if method == "interpolation":
            return sampling.interpolate(
                score_fn,
                x_init,
                sigmas,
                chain_key,
                n_interpolations=config.sampling.n_interpolations,
                **options,
            )
        return sampling.annealed_langevin_dynamics(score_fn, x_init, sigmas, chain_key, **options)

    out = jax.jit(run, compiler_options=compiler_options.for_backend())(params, x_init, chain_key, extra)
    samples = parallel.to_host(out.samples).reshape(-1, *example_shape)
    trajectory = None
    if out.trajectory is not None:
        trajectory = parallel.to_host(out.trajectory)
        trajectory = trajectory.reshape(trajectory.shape[0], -1, *example_shape)
    level_finite = np.asarray(out.level_finite)
    _check_finite(samples, np.asarray(sigmas), level_finite)
    return sampling.SamplerOutput(samples, trajectory, level_finite)


def positive_mode_weight(samples: np.ndarray) -> float:
    """For NCSN's toy mixture: the fraction of samples nearer the +5·1 mode (weight 0.8) than the −5·1 one."""
    return float(np.mean(np.asarray(mixtures.ncsn_toy_mixture().nearest_component(samples)) == 0))


def write_samples(
    samples: np.ndarray,
    out_dir: str,
    config: ml_collections.ConfigDict,
    *,
    step: int,
    trajectory: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    score_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    true_score_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Write ``samples.npz`` and pictures (see the module docstring) into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    arrays = {"samples": samples}
    for name, value in (("trajectory", trajectory), ("reference", reference), ("mask", mask)):
        if value is not None:
            arrays[name] = value
    np.savez_compressed(os.path.join(out_dir, "samples.npz"), **arrays)
    picture = os.path.join(out_dir, "samples.png")
    if samples.ndim == 4:
        scale = max(1, 128 // samples.shape[1])
        if reference is not None and mask is not None:
            plotting.save_inpainting_panels(reference, reference * mask, samples, picture, scale=scale)
        elif config.sampling.method == "interpolation":
            plotting.save_image_grid(samples, picture, n_cols=config.sampling.n_interpolations, scale=scale)
        else:
            plotting.save_image_grid(samples, picture, scale=scale)
        if trajectory is not None and trajectory.ndim == 5:
            plotting.save_trajectory_strip(
                trajectory, os.path.join(out_dir, "trajectory.png"), scale=max(1, 64 // samples.shape[1])
            )
    elif samples.ndim == 2 and samples.shape[1] == 2:
        low, high = config.sampling.init_range
        title = f"step {step}: {len(samples)} samples"
        if config.data.dataset == "toy":
            title += f", weight of the +5 mode {positive_mode_weight(samples):.3f} (true 0.8)"
        plotting.save_scatter(
            samples,
            picture,
            score_fn=score_fn,
            true_score_fn=true_score_fn,
            limits=(float(low), float(high)),
            title=title,
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
    model: nn.Module,
    params: Any,
    sigmas: np.ndarray,
    step: int,
    example_shape: tuple[int, ...],
    mesh: jax.sharding.Mesh,
    out_dir: str,
) -> None:
    """Samples drawn during training at ``snapshot_freq`` (all processes sample, process 0 writes), from
    the stream :func:`ncsn_jax.rng.snapshot_key` of ``step``."""
    n = config.sampling.snapshot_batch_size
    n -= n % jax.device_count()
    if n <= 0:
        return
    key = rng.snapshot_key(config.seed, step)
    samples = draw_samples(config, model, params, sigmas, key, n, example_shape, mesh).samples
    if jax.process_index() == 0:
        fields = _score_fields(config, model, params, samples, float(sigmas[-1]))
        write_samples(samples, out_dir, config, step=step, **fields)


def restore_for_sampling(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> Restored:
    """Load the weights of a checkpoint of ``workdir`` for sampling (reads only; no optimizer state).

    Args:
        config: the run's config; its ``"auto"`` fields are set from the checkpoint.
        workdir: the training (or conversion) workdir.
        step: the checkpoint's step; None: the newest readable one.

    Raises:
        CheckpointNotFoundError: no (readable) checkpoint, or none of ``step``.
        WorkdirMismatchError: the workdir holds a run of another model, dataset or example shape.
        CheckpointMismatchError: the parameter shapes differ from those of ``config``'s model.
    """
    config_lib.validate(config)
    store = checkpointing.CheckpointStore(workdir, read_only=True)
    meta = store.latest_meta(step)
    if meta is None:
        where = f"of step {step} " if step is not None else ""
        raise errors.CheckpointNotFoundError(
            f"No checkpoint {where}in --workdir={workdir}. Train first (--mode=train with the same --workdir), "
            "or convert the authors' weights with python -m ncsn_jax.convert_torch."
        )
    example_shape = tuple(meta["example_shape"])
    config_lib.check_workdir(config, workdir, models.example_shape(config), stored=meta)
    config = config_lib.apply_resolved(config, meta.get("resolved", {}))
    model = models.create(config)
    which = "ema_params" if config.sampling.use_ema else "params"
    template = {which: train_state.abstract_params(model, example_shape)}
    weights, meta = store.restore(template, config, step=step)
    return Restored(config, model, weights[which], config_lib.sigmas(config), meta)


def checkpoint_step(spec: Any) -> int | None:
    """``config.sampling.checkpoint``: ``"latest"`` (None: the newest readable checkpoint) or a step."""
    text = str(spec).strip().lower()
    if text == "latest":
        return None
    if text.isdigit():
        return int(text)
    raise errors.UserError(
        f"config.sampling.checkpoint={spec!r}: use 'latest' or the step of a checkpoint, such as '12000'."
    )


def output_dir(workdir: str, step: int, config: ml_collections.ConfigDict) -> str:
    """``workdir/samples/<step>/<method>-seed<k>``: each method and seed in its own folder."""
    return os.path.join(workdir, "samples", str(step), f"{config.sampling.method}-seed{config.sampling.seed}")


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """``--mode=sample``: restore, sample with ``config.sampling``, write outputs; returns the output dir."""
    method = config.sampling.method
    restored = restore_for_sampling(config, workdir, checkpoint_step(config.sampling.checkpoint))
    config, example_shape = restored.config, restored.example_shape
    n = config.sampling.batch_size
    _batch_size(config, method, n)  # before reading test images
    reference = inpainting_references(config, n) if method == "inpainting" else None
    rounds = 1
    if config.sampling.num_samples:  # more samples than one batch: rounds of batch_size chains
        if method not in config_lib.GENERATIVE_METHODS or config.sampling.num_samples % n:
            raise errors.UserError(
                f"config.sampling.num_samples={config.sampling.num_samples} draws rounds of "
                f"config.sampling.batch_size={n} samples: it needs a multiple of the batch size and a method "
                f"that draws from scratch ({', '.join(config_lib.GENERATIVE_METHODS)})."
            )
        rounds = config.sampling.num_samples // n
    logging_utils.log_devices()
    mesh = parallel.create_mesh()
    outputs = []
    with logging_utils.progress(total=rounds, desc="sample", enabled=rounds > 1) as bar:
        for index in range(rounds):
            outputs.append(
                draw_samples(
                    config,
                    restored.model,
                    restored.params,
                    restored.sigmas,
                    rng.sample_key(config.seed, config.sampling.seed, index),
                    n,
                    example_shape,
                    mesh,
                    method=method,
                    trajectory_every=config.sampling.trajectory_every,
                    reference=reference,
                )
            )
            bar.update(1)
    out = outputs[0]
    if rounds > 1:  # trajectories are kept for the first round only
        out = out._replace(samples=np.concatenate([o.samples for o in outputs]))
    out_dir = output_dir(workdir, restored.step, config)
    if jax.process_index() == 0:
        fields = _score_fields(
            config, restored.model, restored.params, out.samples, float(restored.sigmas[-1])
        )
        write_samples(
            out.samples,
            out_dir,
            config,
            step=restored.step,
            trajectory=out.trajectory,
            reference=reference,
            mask=None if reference is None else inpainting_mask(example_shape),
            **fields,
        )
    return out_dir
