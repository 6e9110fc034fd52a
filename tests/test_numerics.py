"""Non-finite guards of training and sampling; long-run numerics at NCSNv2's σ range in float32 and bfloat16.

Non-finite values are provoked with real settings, not test hooks:

* ``optim.lr=1e30``: Adam moves every parameter by about ``lr`` in one step, which stays finite (< 3.4e38),
  and the next forward pass overflows: the first non-finite step is the second one after the change.
* ``optim.lr=1e39``: the learning rate itself is ``inf`` in float32, so the very first update is non-finite
  while its loss and gradients are not.
* ``model.sigma_min=1e-20``: ``1/σ²`` overflows float32 at the smallest levels, so exactly the steps whose
  batch draws such a level have a non-finite loss; the others train normally (transient failures).
"""

from __future__ import annotations

import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import assert_user_error, check_ok, read_state, run_main, tree_listing

BASE = [
    "--config=configs/toy.py",
    "--mode=train",
    "--config.model.hidden_dims=32,32",
    "--config.training.steps_per_call=5",
    "--config.training.log_freq=10",
    "--config.training.preemption_freq=10",
    "--config.training.snapshot_freq=20",
    "--config.training.snapshot_sampling=False",
]
SKIPPED = re.compile(r"Skipped the non-finite update of step (\d+) \((\d+) of (\d+) allowed")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A toy run of 20 steps: periodic checkpoint 20, preemption checkpoint 10."""
    workdir = str(tmp_path_factory.mktemp("numerics") / "toy")
    check_ok(run_main(*BASE, f"--workdir={workdir}", "--config.training.n_iters=20"))
    return workdir


def checkpoint_files(workdir: str) -> dict[str, tuple[int, float]]:
    return {f: v for f, v in tree_listing(workdir).items() if f.startswith("checkpoints")}


def skipped_steps(stderr: str) -> list[tuple[int, int, int]]:
    return [tuple(int(g) for g in m.groups()) for m in SKIPPED.finditer(stderr)]


@pytest.mark.slow
def test_nonfinite_loss_stops_training_and_keeps_the_last_good_checkpoint(trained):
    before = checkpoint_files(trained)
    good = f"Last good checkpoint: step 20 in {os.path.join(trained, 'checkpoints')}"

    result = run_main(*BASE, f"--workdir={trained}", "--config.training.n_iters=40", "--config.optim.lr=1e30")
    assert_user_error(
        result, "non-finite loss, gradient or update at step 22 (1 non-finite step(s) so far", good
    )
    assert skipped_steps(result.stderr) == []
    assert checkpoint_files(trained) == before

    # Skip-and-count: three skips are allowed, the fourth stops training.
    result = run_main(
        *BASE,
        f"--workdir={trained}",
        "--config.training.n_iters=40",
        "--config.optim.lr=1e30",
        "--config.training.nonfinite_tolerance=3",
    )
    assert skipped_steps(result.stderr) == [(22, 1, 3), (23, 2, 3), (24, 3, 3)]
    assert_user_error(
        result, "non-finite loss, gradient or update at step 25 (4 non-finite step(s) so far", good
    )
    assert checkpoint_files(trained) == before


@pytest.mark.slow
def test_nonfinite_update_with_finite_gradients_is_neither_applied_nor_saved(trained, tmp_path):
    """With lr = inf the loss and gradients of step 21 are finite but the new parameters are not: the step
    must not be applied, and the checkpoint due right after it (preemption_freq=1) must not be written."""
    workdir = str(tmp_path / "toy")
    shutil.copytree(trained, workdir)
    before = checkpoint_files(workdir)
    result = run_main(
        *BASE,
        f"--workdir={workdir}",
        "--config.training.n_iters=40",
        "--config.optim.lr=1e39",
        "--config.training.steps_per_call=1",
        "--config.training.preemption_freq=1",
    )
    assert_user_error(result, "non-finite loss, gradient or update at step 21 (1 non-finite step(s) so far")
    assert checkpoint_files(workdir) == before
    state = read_state(os.path.join(workdir, "checkpoints", "20"))
    assert all(np.all(np.isfinite(v)) for v in state.values())


@pytest.mark.slow
def test_transient_nonfinite_steps_are_skipped_and_counted_within_the_limit(tmp_path):
    tiny_sigma = [
        "--config.model.sigma_max=1",
        "--config.model.sigma_min=1e-20",
        "--config.model.num_scales=21",
        "--config.training.batch_size=4",
        "--config.training.steps_per_call=10",
        "--config.training.snapshot_freq=50",
        "--config.training.n_iters=50",
    ]
    workdir = str(tmp_path / "skip")
    result = run_main(
        *BASE, *tiny_sigma, f"--workdir={workdir}", "--config.training.nonfinite_tolerance=1000"
    )
    check_ok(result)
    skipped = skipped_steps(result.stderr)
    steps = [s for s, _, _ in skipped]
    assert len(steps) >= 2, "the config no longer provokes transient non-finite steps"
    assert [c for _, c, _ in skipped] == list(range(1, len(steps) + 1)) and steps == sorted(set(steps))
    assert len(steps) < 25, "most steps must train normally"
    state = read_state(os.path.join(workdir, "checkpoints", "50"))
    assert int(state["['step']"]) == 50 and int(state["['nonfinite_count']"]) == len(steps)
    assert all(np.all(np.isfinite(v)) for v in state.values())

    # The same run with a lower limit stops exactly at the first skip beyond it, after the same skips.
    limit = len(steps) // 2
    workdir = str(tmp_path / "stop")
    result = run_main(
        *BASE, *tiny_sigma, f"--workdir={workdir}", f"--config.training.nonfinite_tolerance={limit}"
    )
    last_saved = (steps[limit] - 1) // 10 * 10  # checkpoints every 10 steps, at the end of each 10-step call
    good = (
        f"step {last_saved} in {os.path.join(workdir, 'checkpoints-preemption')}"
        if last_saved
        else "none (no checkpoint was written yet)"
    )
    assert_user_error(
        result,
        f"at step {steps[limit]} ({limit + 1} non-finite step(s) so far, "
        f"config.training.nonfinite_tolerance={limit})",
        f"Last good checkpoint: {good}",
    )
    assert [s for s, _, _ in skipped_steps(result.stderr)] == steps[:limit]


@pytest.mark.slow
def test_nonfinite_samples_name_the_noise_level(trained):
    before = checkpoint_files(trained)
    result = run_main(
        "--config=configs/toy.py",
        f"--workdir={trained}",
        "--mode=sample",
        "--config.model.hidden_dims=32,32",
        "--config.sampling.batch_size=100",
        "--config.sampling.step_lr=1e30",
    )
    # The first level (σ = 20 in the toy config) overflows: x moves by √(ε σ₁²/σ_L²) ~ 1e16 in one step.
    assert_user_error(
        result,
        "Sampling produced non-finite values first at noise level 0 (sigma=20)",
        "config.sampling.step_lr",
    )
    assert checkpoint_files(trained) == before
    assert not os.path.exists(os.path.join(trained, "samples"))


# -- long-run numerics --------------------------------------------------------------------------------------
SIGMA_MAX, SIGMA_MIN, NUM_SCALES = 50.0, 0.01, 232  # NCSNv2's CIFAR-10 range and L
LONG_RUN_STEPS, STEPS_PER_CALL, TAIL = 2000, 50, 500


def bayes_optimal_dsm_loss(sigmas: np.ndarray, n_per_level: int = 20_000) -> np.ndarray:
    """Per level, the smallest possible DSM loss ½ E‖σ s*(x̃) + z‖², with s* = ∇ log p_σ the mixture's exact
    noisy score (Monte Carlo over x ~ p, z ~ N(0, I))."""
    from ncsn_jax import mixtures

    mixture = mixtures.ncsn_toy_mixture()

    def level(args):
        sigma, key = args
        x_key, z_key = jax.random.split(key)
        x = mixture.sample(x_key, n_per_level)
        z = jax.random.normal(z_key, x.shape)
        sigma_b = jnp.full((n_per_level,), sigma)
        score = mixture.score(x + sigma * z, sigma_b)
        return 0.5 * jnp.mean(jnp.sum((sigma * score + z) ** 2, axis=-1))

    keys = jax.random.split(jax.random.PRNGKey(1234), len(sigmas))
    return np.asarray(jax.lax.map(level, (jnp.asarray(sigmas), keys)))


def train_toy_long(dtype: str) -> dict[str, np.ndarray]:
    """2,000 DSM steps of the toy MLP over σ 50 → 0.01 (L = 232); every step's metrics."""
    from configs import toy
    from ncsn_jax import datasets, train

    config = toy.get_config()
    config.model.sigma_max, config.model.sigma_min, config.model.num_scales = SIGMA_MAX, SIGMA_MIN, NUM_SCALES
    config.model.dtype = dtype
    dataset = datasets.create_dataset(config, "train")
    trainer = train.Trainer.create(config, dataset.example_shape)
    state = trainer.init_state()
    history = []
    for start in range(0, LONG_RUN_STEPS, STEPS_PER_CALL):
        state, metrics = trainer.multi_step(state, trainer.batches(dataset, start, STEPS_PER_CALL))
        history.append(jax.tree.map(np.asarray, metrics))
    out = {k: np.concatenate([h[k] for h in history]) for k in history[0]}
    out["sigmas"] = np.asarray(trainer.sigmas)
    out["params_finite"] = np.array(all(np.all(np.isfinite(p)) for p in jax.tree.leaves(state)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_published_sigma_range_trains_stably_for_2000_steps(dtype):
    run = train_toy_long(dtype)
    assert run["loss"].shape == (LONG_RUN_STEPS,)
    assert np.all(run["finite"]) and np.all(np.isfinite(run["loss"]))
    assert np.all(np.isfinite(run["grad_norm"]))
    assert bool(run["params_finite"])

    # Not merely finite: the loss approaches the Bayes-optimal DSM loss of the mixture (≈ 0.57 averaged over
    # the levels), also at the smallest σ, where the score targets z/σ are 100× the data scale.
    optimum = bayes_optimal_dsm_loss(run["sigmas"])
    tail_loss = float(np.mean(run["loss"][-TAIL:]))
    assert -0.01 < tail_loss - float(np.mean(optimum)) < 0.03, (tail_loss, float(np.mean(optimum)))
    level_loss = run["level_loss_sum"][-TAIL:].sum(0) / np.maximum(run["level_count"][-TAIL:].sum(0), 1)
    smallest = run["sigmas"] < 0.05
    gap = float(np.mean(level_loss[smallest]) - np.mean(optimum[smallest]))
    assert -0.02 < gap < 0.03, (float(np.mean(level_loss[smallest])), float(np.mean(optimum[smallest])))
