"""Bad command lines get one clear message, exit status 2, no traceback, and leave the workdir untouched."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.test_main import check_ok, run_main

TOY = "--config=configs/toy.py"
FAST = [
    "--config.training.n_iters=20",
    "--config.training.snapshot_freq=20",
    "--config.training.snapshot_sampling=False",
    "--config.training.log_freq=10",
]


def assert_user_error(result, *fragments: str) -> None:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr[-3000:]}"


def snapshot_tree(path) -> dict[str, float]:
    return {
        os.path.join(root, f): os.path.getmtime(os.path.join(root, f))
        for root, _, files in os.walk(path)
        for f in files
    }


@pytest.fixture(scope="module")
def trained_toy(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("cli") / "toy")
    check_ok(run_main(TOY, f"--workdir={workdir}", "--mode=train", *FAST))
    return workdir


def test_unknown_config_field(tmp_path):
    result = run_main(TOY, f"--workdir={tmp_path}", "--mode=train", "--config.training.batchsize=8")
    assert_user_error(
        result, "unknown config field 'training.batchsize'", "Did you mean config.training.batch_size?"
    )


def test_wrong_type(tmp_path):
    result = run_main(TOY, f"--workdir={tmp_path}", "--mode=train", "--config.training.n_iters=many")
    assert_user_error(result, "--config.training.n_iters=many")


def test_unknown_mode(tmp_path):
    assert_user_error(run_main(TOY, f"--workdir={tmp_path}", "--mode=evaluate"), "--mode", "train|sample")


def test_missing_workdir():
    assert_user_error(run_main(TOY, "--mode=train"), "--workdir")


@pytest.mark.parametrize(
    "field,value,valid",
    [
        ("data.dataset", "imagenet", "cifar10"),
        ("model.name", "unet", "ncsnv2"),
        ("training.loss", "ism", "ssm_vr"),
    ],
)
def test_unknown_names_list_the_valid_ones(tmp_path, field, value, valid):
    result = run_main(TOY, f"--workdir={tmp_path}", "--mode=train", f"--config.{field}={value}")
    assert_user_error(result, f"config.{field}={value!r}", valid)


def test_sample_without_checkpoint(tmp_path):
    assert_user_error(
        run_main(TOY, f"--workdir={tmp_path}", "--mode=sample"), "No checkpoint", "--mode=train"
    )


def test_checkpoint_of_another_model_config(trained_toy):
    before = snapshot_tree(trained_toy)
    result = run_main(TOY, f"--workdir={trained_toy}", "--mode=sample", "--config.model.hidden_dims=64,64")
    assert_user_error(result, "different model", "hidden_dims")
    assert snapshot_tree(trained_toy) == before


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
    result = run_main(
        "--config=configs/cifar10.py",
        f"--workdir={tmp_path / 'w'}",
        "--mode=train",
        f"--config.data.data_dir={tmp_path / 'no_data'}",
    )
    assert_user_error(result, "cifar10", "tfds build")


def test_unwritable_workdir_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    # Below a regular file nothing can be created, whoever runs the test (root ignores permission bits).
    result = run_main(TOY, f"--workdir={blocker / 'run'}", "--mode=train")
    assert_user_error(result, "is not writable")


def test_full_disk_is_detected_before_training(tmp_path):
    from ncsn_jax import checkpointing

    with pytest.raises(OSError, match="MiB free; checkpoints need at least"):
        checkpointing.ensure_writable(str(tmp_path), min_free_bytes=2**62)


@pytest.mark.parametrize("damage", ["meta", "state"])
def test_only_checkpoint_unreadable_stops_train_and_sample(trained_toy, tmp_path, damage):
    """With no readable checkpoint to fall back to, training does not silently start over next to it."""
    from tests.test_preemption import truncate_manifests, truncate_meta

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
