"""Training: a pure data-parallel train step, and the training loop.

One optimisation step minimises a score-matching objective of :mod:`ncsn_jax.losses` (chosen by
``config.training.loss``) over a global batch::

        key_t        = fold_in(key, t)                            # key = rng.train_key(config.seed)
        loss, grads  = value_and_grad(L)(params; batch_t, sigmas, key_t)
        params      <- Adam(params, grads)
        ema         <- m·ema + (1 − m)·params                     # m = config.model.ema_rate

``batch_t`` is itself a function of ``(config.seed, t)`` (:mod:`ncsn_jax.datasets`), so step ``t`` of a
resumed run repeats exactly what the uninterrupted run would have done. The step is ``jax.jit``-compiled
with the batch split over all devices (:mod:`ncsn_jax.parallel`) and the state buffers donated;
``steps_per_call`` steps run in one ``lax.scan`` per host call. :class:`Trainer` holds what the config
determines (model, optimizer, σ's, mesh, jitted steps); :func:`train` drives it, reading the next call's
batches on the host while the device runs the current one. The train state and the optimizer live in
:mod:`ncsn_jax.train_state`.

Before anything is written to the workdir, :func:`train` checks the config, that the workdir holds no run
of another model, dataset or example shape (``config.json``), and opens the dataset; any problem there is a
:class:`~ncsn_jax.errors.UserError` and leaves the workdir as it was (a new one is not created).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ncsn_jax import (
    checkpointing,
    compiler_options,
    config_lib,
    datasets,
    errors,
    generate,
    logging_utils,
    losses,
    models,
    parallel,
)
from ncsn_jax.evaluation import held_out
from ncsn_jax.train_state import TrainState, abstract_train_state, create_optimizer, init_train_state

PyTree = Any
Metrics = dict[str, jax.Array]


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(
    model: nn.Module,
    loss_fn: losses.LossFn,
    optimizer: optax.GradientTransformation,
    sigmas: jax.Array,
    ema_rate: float,
) -> Callable[[TrainState, jax.Array], tuple[TrainState, Metrics]]:
    """Build the pure function ``(state, batch) -> (state, metrics)`` for one optimisation step.

    An update is applied only if the loss, the gradients and the updated parameters and optimizer state
    are all finite; otherwise the state keeps its old values and counts the step in ``nonfinite_count``
    (the training loop decides whether to stop). So a state holding NaN or inf is never produced, and
    never checkpointed: finite gradients can still overflow Adam's second moment or, with a huge learning
    rate, the parameters.

    Metrics: ``loss`` (batch mean), ``grad_norm``, ``finite`` (bool: the update was applied), and per noise
    level ``level_loss_sum`` / ``level_count`` of shape ``(L,)`` for per-level loss curves.
    """
    num_levels = sigmas.shape[0]

    def train_step(state: TrainState, batch: jax.Array) -> tuple[TrainState, Metrics]:
        step_key = jax.random.fold_in(state.key, state.step)

        def objective(params):
            score_fn = models.get_score_fn(model, {"params": params})
            return loss_fn(score_fn, batch, sigmas, step_key)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        new_ema = jax.tree.map(lambda e, p: ema_rate * e + (1.0 - ema_rate) * p, state.ema_params, new_params)
        finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite((new_params, new_opt_state, new_ema))

        # A cond, not jnp.where: a select that depends on reductions over the updated state makes XLA:CPU's
        # fusion pass run for many minutes on conv nets (jax 0.10.2); the cond keeps the two apart.
        params, ema_params, opt_state = jax.lax.cond(
            finite,
            lambda: (new_params, new_ema, new_opt_state),
            lambda: (state.params, state.ema_params, state.opt_state),
        )
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            ema_params=ema_params,
            opt_state=opt_state,
            key=state.key,
            nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
        )

        per_example = aux["per_example_loss"]
        level = aux["sigma_idx"]
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "finite": finite,
            "level_loss_sum": jax.ops.segment_sum(per_example, level, num_segments=num_levels),
            "level_count": jax.ops.segment_sum(jnp.ones_like(per_example), level, num_segments=num_levels),
        }
        return new_state, metrics

    return train_step


def make_multi_step(
    train_step: Callable[[TrainState, jax.Array], tuple[TrainState, Metrics]],
) -> Callable[[TrainState, jax.Array], tuple[TrainState, Metrics]]:
    """``(state, batches[k, B, ...]) -> (state, metrics[k, ...])``: k train steps in one ``lax.scan``.

    With ``k = 1`` the step is called directly, not in a one-iteration scan: XLA:CPU runs the weight-gradient
    convolutions of a loop body about 40× slower than outside a loop (measured on jax 0.10.2), so conv nets
    on CPU train fastest with ``steps_per_call = 1``; on GPU/TPU larger ``k`` saves host round trips.
    """

    def multi_step(state, batches):
        if batches.shape[0] == 1:
            state, metrics = train_step(state, batches[0])
            return state, jax.tree.map(lambda m: m[None], metrics)
        return jax.lax.scan(train_step, state, batches)

    return multi_step


def compile_train_step(
    model: nn.Module,
    config: ml_collections.ConfigDict,
    sigmas: jax.Array,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    xla_options: Mapping[str, Any] | None = None,
):
    """Jit the multi-step function with the batch sharded over ``mesh`` and the state donated.

    ``xla_options`` are the per-compilation XLA options: ``None`` (the default) takes the project's
    (:func:`ncsn_jax.compiler_options.for_backend`: on the CPU, convolutions on Eigen); ``{}`` compiles with
    XLA's own defaults, as ``benchmarks/cpu_train_step.py`` does to compare them."""
    loss_fn = losses.get_loss_fn(config.training.loss, **config_lib.loss_options(config))
    step = make_multi_step(make_train_step(model, loss_fn, optimizer, sigmas, config.model.ema_rate))
    replicated = parallel.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(replicated, parallel.batch_sharded(mesh, leading_axes=1)),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
        compiler_options=compiler_options.for_backend()
        if xla_options is None
        else (dict(xla_options) or None),
    )


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What a training run's config determines: model, optimizer, noise levels, device mesh and the jitted
    multi-step function. :func:`train` drives one; notebooks, benchmarks and tests write their own loops::

        trainer = Trainer.create(config, dataset.example_shape)
        state = trainer.init_state()
        for step in range(0, n_iters, k):
            state, metrics = trainer.multi_step(state, trainer.batches(dataset, step, k))
    """

    config: ml_collections.ConfigDict
    example_shape: tuple[int, ...]
    model: nn.Module
    optimizer: optax.GradientTransformation
    sigmas: jax.Array
    mesh: jax.sharding.Mesh
    multi_step: Callable[[TrainState, jax.Array], tuple[TrainState, Metrics]]

    @classmethod
    def create(
        cls,
        config: ml_collections.ConfigDict,
        example_shape: tuple[int, ...],
        mesh: jax.sharding.Mesh | None = None,
    ) -> Trainer:
        """Build everything from ``config`` (its "auto" fields resolved); ``mesh`` defaults to all devices."""
        sigmas = jnp.asarray(config_lib.sigmas(config))
        model = models.create(config)
        if config.training.loss == "exact":  # before the state is initialised or anything compiled
            losses.check_exact_affordable((config.training.batch_size, *example_shape))
        optimizer = create_optimizer(config.optim)
        mesh = parallel.create_mesh() if mesh is None else mesh
        return cls(
            config=config,
            example_shape=tuple(example_shape),
            model=model,
            optimizer=optimizer,
            sigmas=sigmas,
            mesh=mesh,
            multi_step=compile_train_step(model, config, sigmas, optimizer, mesh),
        )

    def init_state(self) -> TrainState:
        """The initial state of ``config.seed``, replicated over the mesh."""
        state = init_train_state(self.model, self.config, self.example_shape, self.optimizer)
        return jax.device_put(state, parallel.replicated(self.mesh))

    def abstract_state(self) -> TrainState:
        """Shapes and dtypes of the train state, without initialising it (the template to restore into)."""
        return abstract_train_state(self.model, self.config, self.example_shape, self.optimizer)

    def batches(self, dataset: datasets.DataSource, first_step: int, n: int) -> jax.Array:
        """The global batches of steps ``first_step … first_step + n − 1`` as one ``(n, B, *example_shape)``
        array split over the mesh's data axis; this process reads only its own rows of each batch."""
        local = np.stack(
            [
                dataset.get_batch(
                    first_step + i,
                    self.config.training.batch_size,
                    process_index=jax.process_index(),
                    process_count=jax.process_count(),
                )
                for i in range(n)
            ]
        )
        return parallel.global_batch(local, self.mesh, leading_axes=1)


@dataclasses.dataclass
class _MetricsAccumulator:
    """Host-side running sums of step metrics between two log lines."""

    num_levels: int
    loss_sum: float = 0.0
    grad_norm_sum: float = 0.0
    steps: int = 0
    level_loss_sum: np.ndarray | None = None
    level_count: np.ndarray | None = None

    def add(self, metrics: Mapping[str, np.ndarray]) -> None:
        finite = metrics["finite"]
        self.loss_sum += float(np.sum(np.where(finite, metrics["loss"], 0.0)))
        self.grad_norm_sum += float(np.sum(np.where(finite, metrics["grad_norm"], 0.0)))
        self.steps += int(np.sum(finite))
        level_loss = np.sum(metrics["level_loss_sum"][finite], axis=0)
        level_count = np.sum(metrics["level_count"][finite], axis=0)
        if self.level_loss_sum is None:
            self.level_loss_sum, self.level_count = level_loss, level_count
        else:
            self.level_loss_sum += level_loss
            self.level_count += level_count

    def summary(self) -> dict[str, Any]:
        steps = max(self.steps, 1)
        out: dict[str, Any] = {"loss": self.loss_sum / steps, "grad_norm": self.grad_norm_sum / steps}
        if self.level_count is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                out["level_loss"] = self.level_loss_sum / self.level_count  # NaN where a level was not drawn
        return out


def _check_nonfinite(
    finite: np.ndarray, *, first_step: int, total: int, tolerance: int, store: checkpointing.CheckpointStore
) -> None:
    """Warn about each skipped update of a host call; stop once more than ``tolerance`` were skipped.

    Called before anything of the host call is saved, so the checkpoints on disk stay the last good ones.

    Args:
        finite: ``(k,)`` bool, whether each step of the call applied its update.
        first_step: 1-based number of the call's first step (the step count after it).
        total: ``nonfinite_count`` after the call (skips of earlier calls included: it is checkpointed).
        tolerance: ``config.training.nonfinite_tolerance``.
        store: the checkpoints, to name the last good one.

    Raises:
        TrainingDivergedError: naming the step at which the tolerance was exceeded.
    """
    skipped = np.flatnonzero(~np.asarray(finite, bool))
    count = total - len(skipped)
    for index in skipped:
        count += 1
        bad_step = first_step + int(index)
        if count > tolerance:
            store.wait()
            raise errors.TrainingDivergedError(
                f"Training diverged: non-finite loss, gradient or update at step {bad_step} ({count} "
                f"non-finite step(s) so far, config.training.nonfinite_tolerance={tolerance}); the update "
                "was not applied and nothing after the last good checkpoint was saved. Last good checkpoint: "
                f"{store.describe_latest()}. Lower config.optim.lr, set config.optim.grad_clip, or raise "
                "config.training.nonfinite_tolerance to skip such steps."
            )
        logging.warning(
            "Skipped the non-finite update of step %d (%d of %d allowed by "
            "config.training.nonfinite_tolerance).",
            bad_step,
            count,
            tolerance,
        )


def _chunk_length(step: int, steps_per_call: int, n_iters: int, boundaries: tuple[int, ...]) -> int:
    """Steps to run in the next host call: at most ``steps_per_call``, never crossing a boundary."""
    n = min(steps_per_call, n_iters - step)
    for every in boundaries:
        if every > 0:
            n = min(n, every - step % every)
    return n


def _open_workdir(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[datasets.DataSource, checkpointing.CheckpointStore, dict[str, Any] | None]:
    """The checks of the module docstring, then the dataset, the checkpoint store and the metadata of the
    checkpoint to resume from (None: start afresh). Nothing is written before the checks have passed."""
    config_lib.validate(config)
    parallel.check_batch_size(config.training.batch_size)
    config_lib.check_workdir(config, workdir, models.example_shape(config))
    dataset = datasets.create_dataset(config, "train", data_dir=config.data.data_dir or None)
    config_lib.check_workdir(config, workdir, dataset.example_shape)
    checkpointing.ensure_writable(workdir)
    store = checkpointing.CheckpointStore(workdir, keep=config.training.keep_checkpoints)
    resume_meta = store.latest_meta()
    if resume_meta is not None:
        config_lib.check_workdir(config, workdir, dataset.example_shape, stored=resume_meta)
    return dataset, store, resume_meta


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Train (or resume training) the model of ``config``, writing checkpoints and logs under ``workdir``.

    Resumes from the latest checkpoint in ``workdir`` when there is one; returns the final train state.

    Raises:
        UserError: a bad setting, a workdir of another run, a dataset not prepared, a checkpoint that does
            not fit; :class:`~ncsn_jax.errors.TrainingDivergedError`; :class:`~ncsn_jax.errors.Interrupted`
            on Ctrl-C, naming the last step done (the checkpoints on disk stay as they are).
    """
    dataset, store, resume_meta = _open_workdir(config, workdir)
    logging_utils.log_devices()
    is_writer = jax.process_index() == 0
    if resume_meta is not None:
        config = config_lib.apply_resolved(config, resume_meta["resolved"])
        resolved = resume_meta["resolved"]
    else:
        config, resolved = config_lib.resolve_auto_fields(config, dataset)
    trainer = Trainer.create(config, dataset.example_shape)
    sigmas = np.asarray(trainer.sigmas)

    if resume_meta is None:
        state = trainer.init_state()
    else:
        state, meta = store.restore(trainer.abstract_state(), config)  # replicated over the mesh
        logging.info("Resumed from the checkpoint of step %d (%s).", meta["step"], store.restored_from)
    if is_writer:
        config_lib.save(config, resolved, workdir, trainer.example_shape)

    writer = logging_utils.MetricWriter(workdir, enabled=is_writer)
    eval_freq = config.training.eval_freq
    held_out_loss = (
        held_out.HeldOutLoss.from_config(config, trainer.model, sigmas, trainer.mesh) if eval_freq else None
    )
    n_iters = config.training.n_iters
    k = max(1, config.training.steps_per_call)
    start = int(state.step)
    accumulator = _MetricsAccumulator(len(sigmas))
    last_log_time = time.time()
    last_log_step = start
    last_summary: dict[str, Any] | None = None

    def meta_for(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "resolved": resolved,
            "model": config_lib.model_signature(config),
            "sigmas": sigmas.tolist(),
            "example_shape": list(trainer.example_shape),
        }

    # Host calls end exactly on logging / checkpoint boundaries, so those happen at the same steps
    # whatever steps_per_call is.
    boundaries = (
        config.training.log_freq,
        config.training.snapshot_freq,
        config.training.preemption_freq,
        eval_freq,
    )
    step = done = start
    try:
        n = _chunk_length(step, k, n_iters, boundaries) if step < n_iters else 0
        batches = trainer.batches(dataset, step, n) if n else None
        # closing(): the event file is flushed also when training stops with an error.
        with (
            contextlib.closing(writer),
            logging_utils.progress(total=n_iters, initial=start, desc="train", enabled=is_writer) as bar,
        ):
            while step < n_iters:
                state, metrics = trainer.multi_step(state, batches)  # dispatched; runs while the host goes on
                first_step, step = step + 1, step + n
                if step < n_iters:  # read the next batches while the device computes
                    n = _chunk_length(step, k, n_iters, boundaries)
                    batches = trainer.batches(dataset, step, n)
                metrics = jax.tree.map(np.asarray, metrics)  # waits for the call
                bar.update(step - first_step + 1)
                accumulator.add(metrics)
                _check_nonfinite(
                    metrics["finite"],
                    first_step=first_step,
                    total=int(state.nonfinite_count),
                    tolerance=config.training.nonfinite_tolerance,
                    store=store,
                )
                done = step

                if step % config.training.log_freq == 0 or step == n_iters:
                    last_summary = accumulator.summary()
                    now = time.time()
                    last_summary["steps_per_sec"] = (step - last_log_step) / max(now - last_log_time, 1e-9)
                    last_log_time, last_log_step = now, step
                    writer.write(step, last_summary, sigmas=sigmas)
                    bar.set_postfix(loss=f"{last_summary['loss']:.4g}")
                    accumulator = _MetricsAccumulator(len(sigmas))

                if held_out_loss is not None and (step % eval_freq == 0 or step == n_iters):
                    loss = held_out_loss(state.ema_params)  # the weights sampling uses
                    writer.write_eval(
                        step, {"held_out_loss": loss["loss"]}, {"held_out_loss": loss["per_level"]}, sigmas
                    )

                periodic = step % config.training.snapshot_freq == 0 or step == n_iters
                if periodic or step % config.training.preemption_freq == 0:
                    store.save(state, meta_for(step), periodic=periodic)
                if periodic and config.training.snapshot_sampling:
                    generate.write_snapshot(
                        config,
                        trainer.model,
                        state.ema_params if config.sampling.use_ema else state.params,
                        sigmas,
                        step,
                        trainer.example_shape,
                        trainer.mesh,
                        os.path.join(workdir, "snapshots", str(step)),
                    )
        store.wait()
    except KeyboardInterrupt:
        raise errors.Interrupted(
            f"interrupted at step {done}; run the same command to resume (from the newest checkpoint: "
            f"{store.describe_latest()})."
        ) from None
    loss = (
        f"final loss {last_summary['loss']:.5g} (mean since the previous log line); " if last_summary else ""
    )
    logging.info(
        "Training finished at step %d: %snewest checkpoint: %s.", done, loss, store.describe_latest()
    )
    return state
