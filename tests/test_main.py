"""End to end through ``main.py``: train then sample the embedded configs, on 1 and on 8 (simulated) devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_WEIGHT = 0.8  # weight of the +5·1 component of NCSN's toy mixture


def run_main(*args: str, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python main.py ARGS`` from the repo root on ``devices`` simulated CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, "main.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_python(code: str, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-5000:]}"
    )


def positive_mode_weight(samples: np.ndarray) -> float:
    """Fraction of 2-D samples nearer the +5·1 mode than the −5·1 one."""
    return float(np.mean(samples.sum(axis=-1) > 0))


def test_toy_train_then_sample_recovers_mixture_weights(tmp_path):
    workdir = str(tmp_path / "toy")
    overrides = [
        "--config.training.n_iters=1500",
        "--config.training.snapshot_freq=750",
        "--config.training.snapshot_sampling=False",
        "--config.sampling.batch_size=1000",
    ]
    check_ok(run_main("--config=configs/toy.py", f"--workdir={workdir}", "--mode=train", *overrides))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1500", "750"]
    check_ok(run_main("--config=configs/toy.py", f"--workdir={workdir}", "--mode=sample", *overrides))
    samples = np.load(os.path.join(workdir, "samples", "1500", "samples.npz"))["samples"]
    assert samples.shape == (1000, 2) and np.all(np.isfinite(samples))
    assert abs(positive_mode_weight(samples) - TOY_WEIGHT) <= 0.05
    # Samples sit on the modes (±5·1 with unit variance), not between them.
    distance = np.minimum(np.linalg.norm(samples - 5.0, axis=-1), np.linalg.norm(samples + 5.0, axis=-1))
    assert np.median(distance) < 2.0
    assert os.path.isfile(os.path.join(workdir, "samples", "1500", "samples.png"))
    assert os.listdir(os.path.join(workdir, "tensorboard"))


@pytest.mark.slow
def test_toy_defaults_without_overrides(tmp_path):
    """The README's embedded default: ``configs/toy.py`` as it is (timed in benchmarks/embedded_defaults.py)."""
    workdir = str(tmp_path / "toy_default")
    check_ok(run_main("--config=configs/toy.py", f"--workdir={workdir}", "--mode=train"))
    check_ok(run_main("--config=configs/toy.py", f"--workdir={workdir}", "--mode=sample"))
    step = max(os.listdir(os.path.join(workdir, "samples")), key=int)
    samples = np.load(os.path.join(workdir, "samples", step, "samples.npz"))["samples"]
    assert abs(positive_mode_weight(samples) - TOY_WEIGHT) <= 0.05


@pytest.mark.slow
def test_digits_end_to_end_with_auto_noise_schedule(tmp_path):
    from configs import digits
    from ncsn_jax import datasets, noise

    workdir = str(tmp_path / "digits")
    overrides = [
        "--config.training.n_iters=60",
        "--config.training.log_freq=20",
        "--config.training.snapshot_freq=60",
        "--config.training.snapshot_sampling=False",
        "--config.model.ngf=8",
        "--config.sampling.batch_size=8",
        "--config.sampling.n_steps_each=1",
    ]
    check_ok(run_main("--config=configs/digits.py", f"--workdir={workdir}", "--mode=train", *overrides))
    check_ok(run_main("--config=configs/digits.py", f"--workdir={workdir}", "--mode=sample", *overrides))

    # "auto" fields were computed from the data with NCSNv2's techniques (recomputed here independently).
    resolved = json.load(open(os.path.join(workdir, "config.json")))["resolved"]
    config = digits.get_config()
    examples = datasets.create_dataset(config, "train").sample_examples(10_000, seed=config.seed)
    flat = examples.reshape(len(examples), -1).astype(np.float64)
    brute_force = np.sqrt(np.max(((flat[:, None] - flat[None]) ** 2).sum(-1)))
    assert resolved["model.sigma_max"] == pytest.approx(brute_force, rel=1e-4)
    assert resolved["model.num_scales"] == noise.num_scales_for_overlap(resolved["model.sigma_max"], 0.01, 64)
    sigmas = noise.geometric_sigmas(resolved["model.sigma_max"], 0.01, resolved["model.num_scales"])
    assert resolved["sampling.step_lr"] == pytest.approx(noise.langevin_step_lr(sigmas, 64, 1), rel=1e-6)

    samples = np.load(os.path.join(workdir, "samples", "60", "samples.npz"))["samples"]
    assert samples.shape == (8, 8, 8, 1) and np.all(np.isfinite(samples))


EIGHT_DEVICE_LOSSES = """
import json, sys
import jax, numpy as np
from configs import toy
from ncsn_jax import datasets, train
config = toy.get_config()
config.training.batch_size = 64
dataset = datasets.create_dataset(config, "train")
trainer = train.Trainer.create(config, dataset.example_shape)
state = trainer.init_state()
losses, shard_rows = [], None
for step in range(0, 20, 5):
    batch = trainer.batches(dataset, step, 5)
    shard_rows = sorted({s.data.shape[1] for s in batch.addressable_shards})
    n_shards = len(batch.addressable_shards)
    state, metrics = trainer.multi_step(state, batch)
    losses.extend(np.asarray(metrics["loss"]).tolist())
print(json.dumps({"devices": jax.device_count(), "losses": losses, "rows": shard_rows, "shards": n_shards}))
"""


def test_loss_trajectory_is_the_same_on_one_and_eight_devices():
    one = run_python(EIGHT_DEVICE_LOSSES, devices=1)
    eight = run_python(EIGHT_DEVICE_LOSSES, devices=8)
    check_ok(one)
    check_ok(eight)
    one, eight = json.loads(one.stdout.splitlines()[-1]), json.loads(eight.stdout.splitlines()[-1])
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert eight["shards"] == 8 and eight["rows"] == [8]  # the global batch of 64 split 8 ways
    assert len(one["losses"]) == 20
    # Same randomness per example on any device count: only the float reduction order differs.
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-4)


def test_batch_not_divisible_by_device_count_is_a_clear_error(tmp_path):
    result = run_main(
        "--config=configs/toy.py",
        f"--workdir={tmp_path}",
        "--mode=train",
        "--config.training.batch_size=100",
        "--config.training.n_iters=1",
        devices=8,
    )
    assert result.returncode == 2
    assert "config.training.batch_size=100 is not divisible by the number of devices (8" in result.stderr
    assert "Traceback" not in result.stderr


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    """Stopping after 40 steps and starting the same command again ends where one 80-step run ends."""
    base = [
        "--config=configs/toy.py",
        "--mode=train",
        "--config.training.snapshot_sampling=False",
        "--config.training.preemption_freq=20",
        "--config.training.snapshot_freq=40",
        "--config.training.steps_per_call=10",
        "--config.training.log_freq=20",
    ]
    check_ok(run_main(*base, f"--workdir={tmp_path / 'straight'}", "--config.training.n_iters=80"))
    check_ok(run_main(*base, f"--workdir={tmp_path / 'resumed'}", "--config.training.n_iters=40"))
    check_ok(run_main(*base, f"--workdir={tmp_path / 'resumed'}", "--config.training.n_iters=80"))
    code = """
    import sys, jax, numpy as np
    from configs import toy
    from ncsn_jax import generate
    leaves = []
    for workdir in sys.argv[1:]:
        _, _, params, _, meta = generate.restore_for_sampling(toy.get_config(), workdir)
        assert meta["step"] == 80, meta["step"]
        leaves.append(jax.tree.leaves(params))
    assert all(np.array_equal(a, b) for a, b in zip(*leaves)), "params differ"
    print("identical")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "straight"), str(tmp_path / "resumed")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    check_ok(result)
    assert "identical" in result.stdout
