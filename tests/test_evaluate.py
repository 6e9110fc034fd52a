"""--mode=fid_stats and --mode=eval: checkpoint choice, rounds kept on disk, reports, and their bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar10, toy
from ncsn_jax import errors, evaluate, mixtures, train
from ncsn_jax.evaluation import inception, metrics
from tests.helpers import (
    REPO,
    assert_user_error,
    check_ok,
    load_samples,
    positive_mode_weight,
    random_inception_state_dict,
    read_tensorboard_scalars,
    run_main,
    snapshot_tree,
    subprocess_env,
)


def test_select_steps():
    available = [500, 1000, 1500, 2000]
    assert evaluate.select_steps("latest", available) == [2000]
    assert evaluate.select_steps("all", available) == available
    assert evaluate.select_steps("1000", available) == [1000]
    assert evaluate.select_steps("1000:1500", available) == [1000, 1500]
    assert evaluate.select_steps(":1000", available) == [500, 1000]
    assert evaluate.select_steps("1200:", available) == [1500, 2000]
    with pytest.raises(errors.CheckpointNotFoundError, match="its steps: 500, 1000, 1500, 2000"):
        evaluate.select_steps("1234", available)
    with pytest.raises(errors.UserError, match="'latest', 'all'"):
        evaluate.select_steps("newest", available)
    with pytest.raises(errors.CheckpointNotFoundError, match="train first"):
        evaluate.select_steps("latest", [])


def test_to_uint8_rounds_like_a_png_file_and_clips():
    x = np.array([-0.2, 0.0, 0.5 / 255, 0.49 / 255, 0.5, 1.0, 1.3], np.float32)
    np.testing.assert_array_equal(evaluate.to_uint8(x), [0, 0, 1, 0, 128, 255, 255])
    levels = np.arange(256)
    np.testing.assert_array_equal(evaluate.to_uint8(levels / 255.0), levels)  # stored images are unchanged


def test_round_sizes():
    assert evaluate.round_sizes(2500, 1000) == [1000, 1000, 500]
    assert evaluate.round_sizes(1000, 1000) == [1000]
    with pytest.raises(errors.UserError, match="config.eval.num_samples"):
        evaluate.round_sizes(0, 1000)


# ----------------------------------------------------------------------------------------------------------
# The toy mixture end to end: metrics, preemption (SIGKILL between rounds), bad inputs.


def _toy_args(workdir):
    return ["--config=configs/toy.py", f"--workdir={workdir}", "--config.training.snapshot_sampling=False"]


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy") / "run")
    check_ok(
        run_main(
            *_toy_args(workdir),
            "--mode=train",
            "--config.training.n_iters=1500",
            "--config.training.snapshot_freq=750",
            "--config.training.eval_freq=750",
        )
    )
    return workdir


EVAL_ARGS = ("--mode=eval", "--config.eval.num_samples=6000", "--config.eval.batch_size=2000")


@pytest.mark.slow
def test_toy_eval_reports_the_mode_weights_and_survives_sigkill_bit_identically(toy_workdir, tmp_path):
    reference_workdir = str(tmp_path / "uninterrupted")
    shutil.copytree(toy_workdir, reference_workdir)
    check_ok(run_main(*_toy_args(reference_workdir), *EVAL_ARGS))
    with open(os.path.join(reference_workdir, "eval", "1500", "report.json")) as f:
        reference = json.load(f)
    toy_metrics = reference["metrics"]
    # The trained toy model recovers the 0.8 / 0.2 weights; its score is close to the analytic one at large σ.
    assert toy_metrics["mode_weights"][0] == pytest.approx(0.8, abs=0.05)
    assert toy_metrics["mmd2"] < 0.05
    assert toy_metrics["fisher_divergence"][0] < toy_metrics["fisher_divergence"][-1]
    assert reference["num_samples"] == 6000 and len(reference["held_out_loss"]["per_level"]) == 10

    # TensorBoard: training logged the held-out loss every eval_freq = 750 steps on the EMA weights; at step
    # 1500 (the checkpoint) it equals the report's, computed later in another process (fixed test examples
    # and noise). The eval wrote its numbers under eval/ at the checkpoint's step.
    scalars = read_tensorboard_scalars(os.path.join(reference_workdir, "tensorboard"))
    held_out_curve = dict(scalars["eval/held_out_loss"][:2])  # training's two, then the eval's
    assert sorted(held_out_curve) == [750, 1500] and held_out_curve[750] != held_out_curve[1500]
    assert held_out_curve[1500] == pytest.approx(reference["held_out_loss"]["loss"], rel=1e-6)
    assert scalars["eval/held_out_loss"][2] == (
        1500,
        pytest.approx(reference["held_out_loss"]["loss"], rel=1e-6),
    )
    assert scalars["eval/mmd2"] == [(1500, pytest.approx(toy_metrics["mmd2"], rel=1e-6))]
    per_level = [
        v
        for tag, values in sorted(scalars.items())
        if tag.startswith("eval_held_out_loss_per_level/")
        for step, v in values[-1:]
    ]
    np.testing.assert_allclose(per_level, reference["held_out_loss"]["per_level"], rtol=1e-6)

    # Kill -9 once the first round is on disk; the restart draws only the missing rounds.
    workdir = str(tmp_path / "killed")
    shutil.copytree(toy_workdir, workdir)
    first_round = os.path.join(workdir, "eval", "1500", "round_00000.npz")
    process = subprocess.Popen(
        [sys.executable, "main.py", *_toy_args(workdir), *EVAL_ARGS],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not os.path.exists(first_round) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert os.path.exists(first_round)
    assert not os.path.exists(os.path.join(workdir, "eval", "1500", "report.json"))
    kept = os.path.getmtime(first_round)
    check_ok(run_main(*_toy_args(workdir), *EVAL_ARGS))
    assert os.path.getmtime(first_round) == kept  # the finished round was not drawn again
    with open(os.path.join(workdir, "eval", "1500", "report.json")) as f:
        assert json.load(f) == reference
    for index in range(3):
        name = f"round_{index:05d}.npz"
        with (
            np.load(os.path.join(workdir, "eval", "1500", name)) as a,
            np.load(os.path.join(reference_workdir, "eval", "1500", name)) as b,
        ):
            np.testing.assert_array_equal(a["samples"], b["samples"])


@pytest.mark.slow
def test_eval_of_a_range_of_checkpoints_and_bad_requests_write_nothing(toy_workdir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(toy_workdir, workdir)
    result = run_main(*_toy_args(workdir), *EVAL_ARGS, "--config.eval.checkpoints=1234")
    assert_user_error(result, "names no checkpoint", "its steps: 750, 1000, 1500")
    result = run_main(*_toy_args(workdir), *EVAL_ARGS, "--config.sampling.method=inpainting")
    assert_user_error(result, "draws samples from scratch")
    result = run_main(*_toy_args(workdir), "--mode=eval", "--config.eval.num_samples=1001", devices=2)
    assert_user_error(result, "config.eval.num_samples=1001 is not divisible by the number of devices (2")
    assert not os.path.exists(os.path.join(workdir, "eval"))
    check_ok(
        run_main(
            *_toy_args(workdir),
            "--mode=eval",
            "--config.eval.num_samples=1000",
            "--config.eval.batch_size=1000",
            "--config.eval.checkpoints=all",
        )
    )
    assert sorted(os.listdir(os.path.join(workdir, "eval"))) == ["1000", "1500", "750"]


# ----------------------------------------------------------------------------------------------------------
# Natural images: Inception statistics of a (mock) dataset, then FID / IS / KID of a checkpoint.


MOCK_CIFAR = {
    "model.ngf": 4,
    "model.sigma_max": 10.0,
    "model.num_scales": 3,
    "training.n_iters": 1,
    "training.batch_size": 4,
    "training.snapshot_sampling": False,
    "sampling.n_steps_each": 1,
    "eval.num_samples": 8,
    "eval.batch_size": 4,
    "eval.inception_batch_size": 4,
    "eval.kid_subset": 8,
    "eval.loss_examples": 4,
}


def _mock_cifar_paths(tmp_path) -> dict[str, str]:
    return {
        "eval.inception_weights": str(tmp_path / "inception.npz"),
        "eval.stats_file": str(tmp_path / "stats" / "cifar10.npz"),
        "data.data_dir": str(tmp_path / "data"),
    }


def _mock_cifar_config(tmp_path):
    config = cifar10.get_config()
    for name, value in {**MOCK_CIFAR, **_mock_cifar_paths(tmp_path)}.items():
        group, field = name.split(".")
        config[group][field] = value
    return config


def _assert_one_error_line_and_nothing_written(result, before: dict, after: dict, *fragments: str) -> None:
    assert_user_error(result, *fragments)
    message = result.stderr[result.stderr.index("error: ") :]
    assert len(message.strip().splitlines()) == 1, message
    assert after == before  # no file or directory created, changed or removed


@pytest.mark.slow
def test_fid_stats_then_eval_on_mock_cifar10(tmp_path):
    config = _mock_cifar_config(tmp_path)
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=12):
        with pytest.raises(errors.UserError, match="FID Inception weights file"):
            evaluate.compute_fid_stats(config)
        inception.save_weights(random_inception_state_dict(0), config.eval.inception_weights)
        stats_path = evaluate.compute_fid_stats(config)
        assert stats_path == config.eval.stats_file
        reference = metrics.FeatureStatistics.load(stats_path)
        assert reference.count == 12 and reference.metadata["dataset"] == "cifar10"
        # The statistics are those of the stored uint8 training images (a second computation, in one batch).
        dataset = evaluate.datasets.create_dataset(config, "train", data_dir=config.data.data_dir)
        images = dataset.raw_images(np.arange(12))
        assert images.dtype == np.uint8
        features = inception.make_feature_fn(config.eval.inception_weights, batch_size=4)(images).pool3
        np.testing.assert_allclose(reference.mean, features.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(reference.covariance, np.cov(features, rowvar=False), rtol=1e-3, atol=1e-5)

        with pytest.raises(errors.CheckpointNotFoundError):
            evaluate.evaluate(config, workdir)
        train.train(config, workdir)
        (path,) = evaluate.evaluate(config, workdir)
        with open(path) as f:
            report = json.load(f)
        rounds = [np.load(os.path.join(workdir, "eval", "1", f"round_{i:05d}.npz")) for i in range(2)]
        pool3 = np.concatenate([r["pool3"] for r in rounds])
        assert np.concatenate([r["samples"] for r in rounds]).dtype == np.uint8
        expected_fid = metrics.frechet_distance(
            pool3.mean(0), np.cov(pool3, rowvar=False), reference.mean, reference.covariance
        )
        assert report["metrics"]["fid"] == pytest.approx(expected_fid, rel=1e-6)
        assert report["metrics"]["inception_score"] >= 1.0

        # Statistics of another dataset or resolution are refused, naming the difference; nothing is written.
        other = metrics.FeatureStatistics.load(stats_path)
        other.metadata["image_shape"] = [64, 64, 3]
        other.save(config.eval.stats_file)
        shutil.rmtree(os.path.join(workdir, "eval"))
        with pytest.raises(errors.UserError, match=r"image_shape: file \[64, 64, 3\]"):
            evaluate.evaluate(config, workdir)
        os.remove(config.eval.stats_file)
        with pytest.raises(errors.UserError, match="--mode=fid_stats"):
            evaluate.evaluate(config, workdir)
        assert not os.path.exists(os.path.join(workdir, "eval"))

    # The same bad inputs from the command line (no dataset needed: each is found before sampling): one
    # `error:` line, exit 2, and nothing in tmp_path (workdir, statistics, weights, data) created or changed.
    cases = [
        ({}, "No Inception statistics file", "--mode=fid_stats"),
        (
            {"eval.inception_weights": str(tmp_path / "absent.npz")},
            "absent.npz does not exist",
            "convert_inception",
        ),
        ({"eval.checkpoints": "7"}, "names no checkpoint", "its steps: 1"),
        ({"eval.num_samples": 7}, "config.eval.num_samples=7 is not divisible by the number of devices"),
    ]
    other.metadata["image_shape"] = [32, 32, 3]  # back to the matching statistics
    for field, value in (("dataset", "celeba"), ("image_shape", [64, 64, 3])):
        path = str(tmp_path / "stats" / f"other_{field}.npz")
        mismatched = metrics.FeatureStatistics(inception.POOL3_DIM, metadata={**other.metadata, field: value})
        mismatched.update(np.eye(3, inception.POOL3_DIM))
        mismatched.save(path)
        cases.append(({"eval.stats_file": path}, f"{field}: file {value!r}", "do not fit this evaluation"))
    for changes, *fragments in cases:
        before = snapshot_tree(str(tmp_path))
        devices = 2 if "eval.num_samples" in changes else 1
        fields = {**MOCK_CIFAR, **_mock_cifar_paths(tmp_path), **changes}
        result = run_main(
            "--config=configs/cifar10.py",
            f"--workdir={workdir}",
            "--mode=eval",
            *(f"--config.{name}={value}" for name, value in fields.items()),
            devices=devices,
        )
        _assert_one_error_line_and_nothing_written(result, before, snapshot_tree(str(tmp_path)), *fragments)


def test_fid_stats_refuses_the_embedded_datasets():
    with pytest.raises(errors.UserError, match="download-free metrics"):
        evaluate.compute_fid_stats(toy.get_config())


@pytest.mark.slow
def test_pc_and_ode_sampling_from_the_command_line_and_the_toy_likelihood(toy_workdir, tmp_path):
    """The VE-SDE samplers on a trained toy model recover the 0.8 / 0.2 weights (the ODE within the prior
    mismatch of σ_max = 20, ≈ 0.75), and the test-split log-likelihood through the ODE is the closed-form
    E log p_{σ_min} of the mixture up to model error (the Monte Carlo error of 200 examples is ≈ 0.09 nats)."""
    workdir = str(tmp_path / "run")
    shutil.copytree(toy_workdir, workdir)
    for method, extra, tolerance in (("pc", ["--config.sampling.num_steps=300"], 0.05), ("ode", [], 0.08)):
        check_ok(run_main(*_toy_args(workdir), "--mode=sample", f"--config.sampling.method={method}", *extra))
        samples = load_samples(workdir, 1500, method)["samples"]
        assert positive_mode_weight(samples) == pytest.approx(0.8, abs=tolerance), method
    check_ok(
        run_main(
            *_toy_args(workdir),
            "--mode=eval",
            "--config.eval.num_samples=1000",
            "--config.eval.likelihood=True",
            "--config.eval.likelihood_examples=200",
            "--config.eval.exact_divergence=True",
        )
    )
    with open(os.path.join(workdir, "eval", "1500", "report.json")) as f:
        report = json.load(f)
    mixture = mixtures.ncsn_toy_mixture()
    x = mixture.sample(jax.random.PRNGKey(0), 100_000)
    expected = float(np.mean(mixture.log_prob(x, 1.0)))  # configs/toy.py: sigma_min = 1
    assert report["likelihood"]["num_examples"] == 200
    assert report["likelihood"]["log_p_nats"] == pytest.approx(expected, abs=0.35)


@pytest.mark.slow
def test_sample_mode_draws_more_than_one_batch_in_rounds_from_a_chosen_checkpoint(toy_workdir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(toy_workdir, workdir)
    small = ("--config.sampling.batch_size=500", "--config.sampling.checkpoint=750")
    check_ok(run_main(*_toy_args(workdir), "--mode=sample", *small))
    one_batch = load_samples(workdir, 750)["samples"]
    check_ok(run_main(*_toy_args(workdir), "--mode=sample", *small, "--config.sampling.num_samples=1500"))
    rounds = load_samples(workdir, 750)["samples"]
    assert rounds.shape == (1500, 2)
    np.testing.assert_array_equal(rounds[:500], one_batch)  # round 0 is the single batch
    assert not np.array_equal(rounds[500:1000], rounds[:500])  # later rounds are new draws
    result = run_main(*_toy_args(workdir), "--mode=sample", *small, "--config.sampling.num_samples=1200")
    assert_user_error(result, "multiple of the batch size")
    result = run_main(*_toy_args(workdir), "--mode=sample", "--config.sampling.checkpoint=999")
    assert_user_error(result, "No checkpoint of step 999")
