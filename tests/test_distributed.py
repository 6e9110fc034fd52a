"""Device-count invariance across processes: 2 processes × 4 CPU devices on localhost, joined with
``jax.distributed.initialize`` (gloo CPU collectives, JAX's default), compute what 1 process × 8 devices
computes.

This is the path a TPU pod takes: every process feeds its own rows of the global batch
(``process_index``/``process_count`` of the input pipeline), XLA all-reduces the gradients across processes,
and orbax writes one checkpoint from all of them.

Tolerance: the per-step losses agree to ``rtol=1e-4``, the tolerance of the 1-vs-8-device test in
``tests/test_main.py`` (only the float reduction order differs; measured: 1.2e-7). Parameters after 20 Adam
steps agree to ``rtol=1e-4, atol=1e-6`` (measured: 6e-7 at most).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import REPO, check_ok, load_samples, read_state, run_main

PROCESSES, LOCAL_DEVICES = 2, 4
LOSS_RTOL = 1e-4

# Like tests/test_main.py's EIGHT_DEVICE_LOSSES, but each process feeds only its rows of each global batch.
LOSSES = """
import json, os, sys
import jax, numpy as np
if os.environ.get("COORDINATOR"):
    jax.distributed.initialize(os.environ["COORDINATOR"], num_processes=int(os.environ["NUM_PROCESSES"]),
                               process_id=int(os.environ["PROCESS_ID"]))
from configs import toy
from ncsn_jax import datasets, train
config = toy.get_config()
config.training.batch_size = 64
dataset = datasets.create_dataset(config, "train")
trainer = train.Trainer.create(config, dataset.example_shape)
state = trainer.init_state()
losses = []
for step in range(0, 20, 5):
    batch = trainer.batches(dataset, step, 5)
    assert batch.shape == (5, 64, 2)
    # This process holds (and so has read) only its own rows of each global batch.
    assert sum(s.data.shape[1] for s in batch.addressable_shards) == 64 // jax.process_count()
    state, metrics = trainer.multi_step(state, batch)
    losses.extend(np.asarray(metrics["loss"]).tolist())
print(json.dumps({"devices": jax.device_count(), "local_devices": jax.local_device_count(),
                  "process": jax.process_index(), "losses": losses}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        **extra,
    )


def run_processes(argv: list[str], extra_env=lambda process_id, port: {}, timeout: int = 400):
    """Start ``PROCESSES`` copies of ``argv`` (``LOCAL_DEVICES`` CPU devices each); wait for all of them."""
    port = free_port()
    procs = [
        subprocess.Popen(
            argv(process_id, port),
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cpu_env(LOCAL_DEVICES, **extra_env(process_id, port)),
        )
        for process_id in range(PROCESSES)
    ]
    try:
        results = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [
        subprocess.CompletedProcess(p.args, p.returncode, out, err)
        for p, (out, err) in zip(procs, results, strict=True)
    ]


@pytest.mark.slow
def test_two_processes_of_four_devices_give_the_single_process_eight_device_losses():
    single = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOSSES)],
        cwd=REPO,
        env=cpu_env(8),
        capture_output=True,
        text=True,
        timeout=400,
    )
    check_ok(single)
    multi = run_processes(
        lambda process_id, port: [sys.executable, "-c", textwrap.dedent(LOSSES)],
        lambda process_id, port: {
            "COORDINATOR": f"localhost:{port}",
            "NUM_PROCESSES": str(PROCESSES),
            "PROCESS_ID": str(process_id),
        },
    )
    for result in multi:
        check_ok(result)
    single = json.loads(single.stdout.splitlines()[-1])
    multi = [json.loads(r.stdout.splitlines()[-1]) for r in multi]
    assert (single["devices"], single["local_devices"]) == (8, 8)
    assert [(m["devices"], m["local_devices"], m["process"]) for m in multi] == [(8, 4, 0), (8, 4, 1)]
    assert multi[0]["losses"] == multi[1]["losses"]  # one replicated result
    assert len(single["losses"]) == 20
    np.testing.assert_allclose(multi[0]["losses"], single["losses"], rtol=LOSS_RTOL)


@pytest.mark.slow
def test_two_process_training_writes_once_and_its_checkpoint_restores_in_one_process(tmp_path):
    train = [
        "--config=configs/toy.py",
        "--mode=train",
        "--config.training.n_iters=20",
        "--config.training.batch_size=64",
        "--config.training.steps_per_call=5",
        "--config.training.log_freq=10",
        "--config.training.snapshot_freq=10",
        "--config.sampling.snapshot_batch_size=16",
        "--config.sampling.n_steps_each=5",
    ]
    multi_dir, single_dir = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
    results = run_processes(
        lambda process_id, port: [
            sys.executable,
            "main.py",
            *train,
            f"--workdir={multi_dir}",
            f"--coordinator_address=localhost:{port}",
            f"--num_processes={PROCESSES}",
            f"--process_id={process_id}",
        ]
    )
    for result in results:
        check_ok(result)
    assert "process 1 of 2" in results[1].stderr and "8 device(s) in all, 4 local" in results[1].stderr

    # Process 0 alone wrote the run's files: one event file, the config, the snapshots (gathered from both).
    assert len(os.listdir(os.path.join(multi_dir, "tensorboard"))) == 1
    assert os.path.isfile(os.path.join(multi_dir, "config.json"))
    for step in ("10", "20"):
        snapshot = np.load(os.path.join(multi_dir, "snapshots", step, "samples.npz"))["samples"]
        assert snapshot.shape == (16, 2) and np.all(np.isfinite(snapshot))
    # Progress bar and metric log lines on process 0 only (the metrics are the same on every process).
    assert "train:" in results[0].stderr and "train:" not in results[1].stderr
    assert "step 20: loss=" in results[0].stderr and "step 20: loss=" not in results[1].stderr

    # The checkpoint of the 2-process run restores in a 1-process run: sampling from it, and its state equals
    # (to float reduction order) the state of the same run on 1 process × 8 devices.
    check_ok(run_main(*train, f"--workdir={single_dir}", devices=8))
    sample = run_main(
        "--config=configs/toy.py",
        f"--workdir={multi_dir}",
        "--mode=sample",
        "--config.sampling.batch_size=100",
        "--config.sampling.n_steps_each=5",
    )
    check_ok(sample)
    samples = load_samples(multi_dir, 20)["samples"]
    assert samples.shape == (100, 2) and np.all(np.isfinite(samples))
    multi_state = read_state(os.path.join(multi_dir, "checkpoints", "20"))
    single_state = read_state(os.path.join(single_dir, "checkpoints", "20"))
    assert sorted(multi_state) == sorted(single_state)
    for name in multi_state:
        np.testing.assert_allclose(multi_state[name], single_state[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert int(multi_state["['step']"]) == 20
