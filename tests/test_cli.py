"""Bad command lines get one clear message, exit status 2, no traceback, and leave the workdir untouched;
bugs keep their traceback; Ctrl-C says where training stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import (
    REPO,
    assert_user_error,
    check_ok,
    run_main,
    snapshot_tree,
    subprocess_env,
    truncate_manifests,
    truncate_meta,
)

TOY = "--config=configs/toy.py"
FAST = [
    "--config.training.n_iters=20",
    "--config.training.snapshot_freq=20",
    "--config.training.snapshot_sampling=False",
    "--config.training.log_freq=10",
]


@pytest.fixture(scope="module")
def trained_toy(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("cli") / "toy")
    check_ok(run_main(TOY, f"--workdir={workdir}", "--mode=train", *FAST))
    return workdir


def assert_stopped_before_writing(result, workdir, *fragments: str, lines: int = 1) -> None:
    """The run printed only its error and did not create ``workdir`` (nor anything in it)."""
    assert_user_error(result, *fragments, lines=lines)
    assert not os.path.exists(workdir), os.listdir(workdir)


def test_unknown_config_field(tmp_path):
    workdir = str(tmp_path / "w")
    result = run_main(TOY, f"--workdir={workdir}", "--mode=train", "--config.training.batchsize=8")
    assert_stopped_before_writing(
        result,
        workdir,
        "unknown config field 'training.batchsize'",
        "Did you mean config.training.batch_size?",
    )


def test_wrong_type(tmp_path):
    workdir = str(tmp_path / "w")
    result = run_main(TOY, f"--workdir={workdir}", "--mode=train", "--config.training.n_iters=many")
    assert_stopped_before_writing(result, workdir, "--config.training.n_iters=many")


def test_unknown_mode(tmp_path):
    workdir = str(tmp_path / "w")
    result = run_main(TOY, f"--workdir={workdir}", "--mode=evaluate")
    assert_stopped_before_writing(result, workdir, "--mode", "train|sample")


def test_missing_workdir():
    assert_user_error(run_main(TOY, "--mode=train"), "--workdir", lines=1)


def test_missing_config_file(tmp_path):
    workdir = str(tmp_path / "w")
    result = run_main("--config=configs/toys.py", f"--workdir={workdir}", "--mode=train")
    assert_stopped_before_writing(result, workdir)
    assert result.stderr == "error: no config file configs/toys.py\n"


@pytest.mark.parametrize(
    "field,value,valid",
    [
        ("data.dataset", "imagenet", "cifar10"),
        ("model.name", "ddpm_unet", "ncsnv2"),
        ("training.loss", "ism", "ssm_vr"),
        ("sampling.method", "ddpm", "inpainting"),
        ("model.nonlinearity", "tanh", "elu"),
    ],
)
def test_unknown_names_list_the_valid_ones(tmp_path, field, value, valid):
    workdir = str(tmp_path / "w")
    result = run_main(TOY, f"--workdir={workdir}", "--mode=train", f"--config.{field}={value}")
    assert_stopped_before_writing(result, workdir, value, valid)


@pytest.mark.parametrize("model", ["unet", "ncsnv2"])
def test_image_network_on_vector_data(tmp_path, model):
    """An image network on the 2-D toy mixture: named as such (with the model that fits), nothing written."""
    workdir = str(tmp_path / "w")
    result = run_main(TOY, f"--workdir={workdir}", "--mode=train", f"--config.model.name={model}")
    assert_stopped_before_writing(
        result, workdir, f"config.model.name='{model}' takes images", "shape (2,)", "mlp"
    )


def test_sample_without_checkpoint(tmp_path):
    workdir = str(tmp_path / "w")
    result = run_main(TOY, f"--workdir={workdir}", "--mode=sample")
    assert_stopped_before_writing(result, workdir, "No checkpoint", "--mode=train")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "sample"])
def test_workdir_of_another_config(trained_toy, mode):
    """The digits config on a toy workdir: named as such, before anything is read or written."""
    before = snapshot_tree(trained_toy)
    result = run_main("--config=configs/digits.py", f"--workdir={trained_toy}", f"--mode={mode}")
    assert_user_error(
        result,
        f"--workdir={trained_toy} holds a run of model 'mlp' on 'toy' data",
        "but --config asks for model 'unet' on 'digits' data (examples of shape (8, 8, 1))",
        lines=1,
    )
    assert snapshot_tree(trained_toy) == before


@pytest.mark.slow
def test_checkpoint_of_another_model_config(trained_toy):
    before = snapshot_tree(trained_toy)
    result = run_main(TOY, f"--workdir={trained_toy}", "--mode=sample", "--config.model.hidden_dims=64,64")
    assert_user_error(result, "different model", "hidden_dims")
    assert snapshot_tree(trained_toy) == before


@pytest.mark.slow
def test_resuming_with_another_model_config(trained_toy):
    before = snapshot_tree(trained_toy)
    result = run_main(
        TOY,
        f"--workdir={trained_toy}",
        "--mode=train",
        *FAST,
        "--config.training.n_iters=40",
        "--config.model.hidden_dims=64,64",
    )
    assert_user_error(result, "different model", "hidden_0", "hidden_dims")
    assert snapshot_tree(trained_toy) == before


def test_unprepared_tfds_dataset(tmp_path):
    """Stops before the workdir exists, with the preparation command and no TFDS warnings before it."""
    workdir = str(tmp_path / "w")
    result = run_main(
        "--config=configs/cifar10.py",
        f"--workdir={workdir}",
        "--mode=train",
        f"--config.data.data_dir={tmp_path / 'no_data'}",
    )
    assert_stopped_before_writing(result, workdir, "cifar10", "tfds build", lines=3)


def test_unwritable_workdir_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    # Below a regular file nothing can be created, whoever runs the test (root ignores permission bits).
    result = run_main(TOY, f"--workdir={blocker / 'run'}", "--mode=train")
    assert_user_error(result, "is not writable", lines=1)


def test_full_disk_is_detected_before_training(tmp_path):
    from ncsn_jax import checkpointing, errors

    with pytest.raises(errors.UserError, match="MiB free; checkpoints need at least"):
        checkpointing.ensure_writable(str(tmp_path), min_free_bytes=2**62)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["meta", "state"])
def test_only_checkpoint_unreadable_stops_train_and_sample(trained_toy, tmp_path, damage):
    """With no readable checkpoint to fall back to, training does not silently start over next to it."""
    workdir = str(tmp_path / "toy")
    shutil.copytree(trained_toy, workdir)
    checkpoint = os.path.join(workdir, "checkpoints", "20")
    (truncate_meta if damage == "meta" else truncate_manifests)(checkpoint)
    before = snapshot_tree(workdir)
    for mode in ("train", "sample"):
        result = run_main(TOY, f"--workdir={workdir}", f"--mode={mode}", *FAST)
        assert_user_error(
            result,
            f"None of the checkpoints in {workdir} can be read",
            f"{checkpoint}: ",
            "Move them out of the way",
        )
        assert "Event loop is closed" not in result.stderr
        assert snapshot_tree(workdir) == before


# -- user errors and bugs -------------------------------------------------------------------------------------
RAISING_TRAIN = """
import sys
from absl import app
from ncsn_jax import cli_errors, errors, train

def broken_train(config, workdir):
    if sys.argv[-1] == "--config.training.loss=dsm":
        raise errors.UserError("the user's mistake\\nexplained")
    raise ValueError("Incompatible shapes for broadcasting: (2, 3) and (4,)")  # what JAX says for a shape bug

train.train = broken_train
sys.path.insert(0, ".")
import main
app.run(main.main, flags_parser=cli_errors.flags_parser(main.FLAGS))
"""


@pytest.mark.parametrize("raised", ["user", "bug"])
def test_only_user_errors_lose_their_traceback(tmp_path, raised):
    """A UserError is one message and exit 2; a ValueError raised by our code (or JAX) is a bug: traceback,
    exit 1, and no misleading ``error:`` line."""
    loss = "dsm" if raised == "user" else "ssm"
    argv = [TOY, f"--workdir={tmp_path}", "--mode=train", f"--config.training.loss={loss}"]
    result = subprocess.run(
        [sys.executable, "-c", RAISING_TRAIN, *argv],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if raised == "user":
        assert_user_error(result, "the user's mistake\nexplained")
        assert result.stderr.endswith("error: the user's mistake\nexplained\n")
    else:
        assert result.returncode == 1, result.stderr[-3000:]
        assert "Traceback (most recent call last)" in result.stderr
        assert result.stderr.rstrip().endswith(
            "ValueError: Incompatible shapes for broadcasting: (2, 3) and (4,)"
        )
        assert "error: " not in result.stderr


def test_user_errors_context_manager(capsys):
    from ncsn_jax import cli_errors, errors

    with pytest.raises(SystemExit) as exit_info, cli_errors.user_errors():
        raise errors.CheckpointNotFoundError("no checkpoint here")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: no checkpoint here\n"
    with pytest.raises(ValueError, match="a bug"), cli_errors.user_errors():
        raise ValueError("a bug")
    with pytest.raises(errors.UserError), cli_errors.user_errors(debug=True):
        raise errors.UserError("shown with its traceback under --debug")


# -- Ctrl-C ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_during_training_names_the_step_and_the_rerun_resumes(tmp_path):
    workdir = str(tmp_path / "toy")
    train = [
        TOY,
        f"--workdir={workdir}",
        "--mode=train",
        "--config.model.hidden_dims=32,32",
        "--config.training.batch_size=64",
        "--config.training.steps_per_call=5",
        "--config.training.log_freq=10",
        "--config.training.preemption_freq=10",
        "--config.training.snapshot_freq=1000",
        "--config.training.snapshot_sampling=False",
    ]
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "main.py", *train, "--config.training.n_iters=1000000"],
            cwd=REPO,
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 240
        while not os.path.isdir(os.path.join(workdir, "checkpoints-preemption", "20")):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = log_path.read_text()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last = stderr.splitlines()[-1]
    assert last.startswith("error: interrupted at step "), last
    step = int(last.split("interrupted at step ")[1].split(";")[0])
    assert step >= 20 and step % 5 == 0, last
    assert "run the same command to resume" in last and os.path.join(workdir, "checkpoints") in last

    resumed = run_main(*train, f"--config.training.n_iters={step + 10}")
    check_ok(resumed)
    assert "Resumed from the checkpoint of step " in resumed.stderr


@pytest.mark.slow
def test_cpu_run_prints_no_tpu_backend_probe(trained_toy):
    """Without JAX_PLATFORMS, jax probes for a TPU and logs "Unable to initialize backend 'tpu'" at INFO."""
    env = subprocess_env()
    del env["JAX_PLATFORMS"]
    result = run_main(
        TOY,
        f"--workdir={trained_toy}",
        "--mode=sample",
        "--config.sampling.batch_size=8",
        "--config.sampling.n_steps_each=1",
        "--config.sampling.seed=7",
        env=env,
    )
    check_ok(result)
    assert "Unable to initialize backend" not in result.stderr, result.stderr[-3000:]
