"""``python -m ncsn_jax.convert_torch`` end to end: reference-format ``.pth`` files in, sampling workdirs out.

The ``.pth`` files are built as the reference runners write them (``torch.save([model_state, optimizer_state,
epoch, step, ema_state])`` for NCSNv2, ``[model_state, optimizer_state]`` for NCSN, ``module.`` prefixes of
``DataParallel``) from the re-typed PyTorch reference models of ``tests/torch_reference.py`` with random
weights; the converted workdir must then reproduce those torch models' outputs through the same restore path
``--mode=sample`` uses, and ``main.py --mode=sample`` must run on it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits, mnist
from ncsn_jax import generate, models, noise
from tests.helpers import REPO, check_ok, run_main, sample_dir, subprocess_env
from tests.torch_reference import build_torch_reference, nchw, nhwc, randomize_norm_parameters

# NCSNv2 checkpoint: configs/digits.py (8x8x1, "auto" noise levels and step size) with the reference network
# (NCSNv2, ELU) in place of its U-Net, ngf 4, and the reference's sigma_min.
V2_MODEL = {"name": "ncsnv2", "nonlinearity": "elu", "sigma_min": 0.01}
V2_CONFIG = [
    "--config=configs/digits.py",
    "--config.sampling.step_lr=auto",  # the digits default sets ε; here technique 4 is checked
    *(f"--config.model.{k}={v}" for k, v in V2_MODEL.items()),
]
V2_ARGS = [*V2_CONFIG, "--config.model.ngf=4"]
V2_SIGMAS = noise.geometric_sigmas(6.0, 0.01, 7)  # sigma_min as above; sigma_max and L come from the file
V2_STEP = 1234
# NCSN checkpoint: configs/mnist.py (28x28x1, CondRefineNetDilated, sigma 1 -> 0.01, L = 10) with ngf 8.
V1_ARGS = ["--config=configs/mnist.py", "--config.model.ngf=8"]
V1_SIGMAS = noise.geometric_sigmas(1.0, 0.01, 10)


def run_convert(*args: str, hide_torch: bool = False) -> subprocess.CompletedProcess:
    """``python -m ncsn_jax.convert_torch ARGS`` in the repo root; ``hide_torch``: ``import torch`` fails."""
    env = subprocess_env()
    if hide_torch:
        code = textwrap.dedent(f"""
            import runpy, sys
            sys.modules["torch"] = None  # `import torch` raises ImportError, as when it is not installed
            sys.argv = ["convert_torch", *{list(args)!r}]
            runpy.run_module("ncsn_jax.convert_torch", run_name="__main__", alter_sys=True)
        """)
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", "ncsn_jax.convert_torch", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, no traceback, and the last line of stderr is ``error: ...`` holding every fragment."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in {last!r}"
    return last


def assert_close(flax_out: np.ndarray, torch_out: np.ndarray) -> None:
    scale = float(np.max(np.abs(torch_out)))
    np.testing.assert_allclose(flax_out, torch_out, rtol=1e-4, atol=1e-4 * scale)


def random_reference_model(torch, ref, kind: str, ngf: int, image_size: int, sigmas, seed: int):
    """A reference torch model with random weights (normalisation parameters moved off their init)."""
    torch.manual_seed(seed)
    model = ref.RefineNet(kind, ngf, 1, image_size, sigmas)
    randomize_norm_parameters(torch, model)
    return model.eval()


def optimizer_state(torch, model) -> dict:
    """The state dict of the reference Adam after one step (as a checkpoint of a running job holds)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # moves the weights too; the checkpoint's model state is taken afterwards
    optimizer.zero_grad(set_to_none=True)
    return optimizer.state_dict()


def data_parallel(state_dict) -> dict:
    return {f"module.{k}": v.detach().clone() for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def torch_ref():
    torch = pytest.importorskip("torch")
    return torch, build_torch_reference(torch)


@pytest.fixture(scope="module")
def ncsnv2_checkpoint(torch_ref, tmp_path_factory):
    """An NCSNv2 ``.pth`` ``[model, optimizer, epoch, step, ema]``; the EMA shadow is another random model."""
    torch, ref = torch_ref
    model = random_reference_model(torch, ref, "ncsnv2", 4, 8, V2_SIGMAS, seed=0)
    ema = random_reference_model(torch, ref, "ncsnv2", 4, 8, V2_SIGMAS, seed=1)
    opt_state = optimizer_state(torch, model)
    # EMAHelper's shadow: the parameters of the DataParallel model (no buffers, so no sigmas).
    ema_state = {f"module.{name}": p.detach().clone() for name, p in ema.named_parameters()}
    path = str(tmp_path_factory.mktemp("pth") / "checkpoint_ncsnv2.pth")
    torch.save([data_parallel(model.state_dict()), opt_state, 3, V2_STEP, ema_state], path)
    return path, model, ema


@pytest.fixture(scope="module")
def ncsnv2_workdir(ncsnv2_checkpoint, tmp_path_factory):
    path, _, _ = ncsnv2_checkpoint
    workdir = str(tmp_path_factory.mktemp("converted") / "ncsnv2")
    result = run_convert(f"--checkpoint={path}", *V2_ARGS, f"--workdir={workdir}")
    check_ok(result)
    return workdir, result


@pytest.fixture(scope="module")
def ncsn_checkpoint(torch_ref, tmp_path_factory):
    """An NCSN ``.pth`` ``[model, optimizer]``: no step, no EMA, no sigmas buffer."""
    torch, ref = torch_ref
    model = random_reference_model(torch, ref, "ncsn", 8, 28, V1_SIGMAS, seed=2)
    opt_state = optimizer_state(torch, model)
    state = data_parallel(model.state_dict())
    del state["module.sigmas"]  # CondRefineNetDilated has no noise table; its levels are indices
    path = str(tmp_path_factory.mktemp("pth") / "checkpoint_ncsn.pth")
    torch.save([state, opt_state], path)
    return path, model


def digits_config(**sampling):
    config = digits.get_config()
    config.model.update(V2_MODEL, ngf=4)
    config.sampling.update({"step_lr": "auto", **sampling})
    return config


def torch_scores(torch, model, x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return nhwc(model(torch.from_numpy(nchw(x)), torch.from_numpy(levels)))


def flax_scores(model, params, sigmas: np.ndarray, x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    score_fn = models.get_score_fn(model, {"params": params})  # model.apply, compiled once per model
    return np.asarray(score_fn(jnp.asarray(x), jnp.asarray(sigmas[levels])))


# ----------------------------------------------------------------------------------------------------------
# NCSNv2 format: [model, optimizer, epoch, step, ema]
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ncsnv2_checkpoint_restores_the_torch_models(torch_ref, ncsnv2_checkpoint, ncsnv2_workdir):
    torch, _ = torch_ref
    _, t_model, t_ema = ncsnv2_checkpoint
    workdir, _ = ncsnv2_workdir
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    levels = np.array([0, 3, 6])

    config, model, ema_params, sigmas, meta = generate.restore_for_sampling(digits_config(), workdir)
    # The "auto" fields were read from the file: sigma_1 and L from its sigmas buffer, and the step size
    # from technique 4 on those levels (D = 64, the config's T).
    assert meta["step"] == V2_STEP
    assert config.model.num_scales == 7 and config.model.sigma_max == pytest.approx(6.0, rel=1e-6)
    np.testing.assert_allclose(sigmas, V2_SIGMAS, rtol=1e-6)
    assert config.sampling.step_lr == pytest.approx(
        noise.langevin_step_lr(V2_SIGMAS, 64, config.sampling.n_steps_each), rel=1e-6
    )
    ema_out = flax_scores(model, ema_params, sigmas, x, levels)
    assert_close(ema_out, torch_scores(torch, t_ema, x, levels))

    _, model, params, sigmas, _ = generate.restore_for_sampling(digits_config(use_ema=False), workdir)
    model_out = flax_scores(model, params, sigmas, x, levels)
    assert_close(model_out, torch_scores(torch, t_model, x, levels))
    # Two different networks: EMA and model slots were not mixed up.
    assert np.max(np.abs(model_out - ema_out)) > 0.1 * np.max(np.abs(ema_out))


@pytest.mark.slow
def test_printed_sample_command_writes_samples(ncsnv2_workdir):
    workdir, result = ncsnv2_workdir
    command = shlex.split(result.stdout.strip().splitlines()[-1])
    assert command[:2] == ["python", "main.py"] and f"--workdir={workdir}" in command
    assert [a for a in command if a.startswith("--config")] == V2_ARGS
    sample = run_main(*command[2:], "--config.sampling.batch_size=4", "--config.sampling.n_steps_each=1")
    check_ok(sample)
    out_dir = sample_dir(workdir, V2_STEP)
    samples = np.load(os.path.join(out_dir, "samples.npz"))["samples"]
    assert samples.shape == (4, 8, 8, 1) and samples.dtype == np.float32
    assert np.all(np.isfinite(samples))
    assert os.path.isfile(os.path.join(out_dir, "samples.png"))


@pytest.mark.slow
def test_converting_into_a_workdir_with_checkpoints_is_refused(ncsnv2_checkpoint, ncsnv2_workdir):
    path, _, _ = ncsnv2_checkpoint
    workdir, _ = ncsnv2_workdir
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    result = run_convert(f"--checkpoint={path}", *V2_ARGS, f"--workdir={workdir}")
    assert_one_line_error(result, "already holds checkpoints", f"step {V2_STEP}")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


# ----------------------------------------------------------------------------------------------------------
# NCSN format: [model, optimizer]
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ncsn_checkpoint_without_ema_converts(torch_ref, ncsn_checkpoint, tmp_path):
    torch, _ = torch_ref
    path, t_model = ncsn_checkpoint
    workdir = str(tmp_path / "ncsn")
    check_ok(run_convert(f"--checkpoint={path}", *V1_ARGS, f"--workdir={workdir}"))

    config = mnist.get_config()
    config.model.ngf = 8
    _, model, ema_params, sigmas, meta = generate.restore_for_sampling(config, workdir)
    assert meta["step"] == 0 and meta["resolved"] == {}
    np.testing.assert_allclose(sigmas, V1_SIGMAS, rtol=1e-6)
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(3, 28, 28, 1)).astype(np.float32)
    levels = np.array([0, 4, 9])  # each level selects its own row of the conditional norms' embeddings
    expected = torch_scores(torch, t_model, x, levels)
    assert_close(flax_scores(model, ema_params, sigmas, x, levels), expected)
    config.sampling.use_ema = False
    _, model, params, sigmas, _ = generate.restore_for_sampling(config, workdir)
    assert_close(flax_scores(model, params, sigmas, x, levels), expected)  # no EMA: both slots are the model


def test_auto_noise_levels_without_a_sigmas_buffer_are_refused(ncsn_checkpoint, tmp_path):
    path, _ = ncsn_checkpoint
    result = run_convert(
        f"--checkpoint={path}", *V1_ARGS, "--config.model.sigma_max=auto", f"--workdir={tmp_path / 'w'}"
    )
    assert_one_line_error(
        result, "config.model.sigma_max is 'auto'", "no 'sigmas' buffer", "--config.model.sigma_max"
    )


# ----------------------------------------------------------------------------------------------------------
# Errors: one line, exit status 2, nothing written.
# ----------------------------------------------------------------------------------------------------------


def test_missing_checkpoint_file(tmp_path):
    workdir = tmp_path / "w"
    result = run_convert(f"--checkpoint={tmp_path / 'nope.pth'}", *V2_ARGS, f"--workdir={workdir}")
    assert_one_line_error(result, f"--checkpoint={tmp_path / 'nope.pth'} does not exist")
    assert not workdir.exists()


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint\n")
    result = run_convert(f"--checkpoint={path}", *V2_ARGS, f"--workdir={tmp_path / 'w'}")
    assert_one_line_error(result, "is not a readable PyTorch checkpoint")


@pytest.mark.slow
def test_pickled_objects_need_trust_checkpoint(ncsnv2_checkpoint, tmp_path):
    torch = pytest.importorskip("torch")
    path, _, _ = ncsnv2_checkpoint
    model_state, _, epoch, step, ema_state = torch.load(path, weights_only=True)
    pickled = tmp_path / "with_namespace.pth"  # e.g. a runner that saved its argparse arguments
    torch.save([model_state, argparse.Namespace(lr=1e-4), epoch, step, ema_state], pickled)
    result = run_convert(f"--checkpoint={pickled}", *V2_ARGS, f"--workdir={tmp_path / 'refused'}")
    assert_one_line_error(result, "torch.load(weights_only=True) refuses", "--trust_checkpoint")
    workdir = tmp_path / "trusted"
    check_ok(run_convert(f"--checkpoint={pickled}", *V2_ARGS, f"--workdir={workdir}", "--trust_checkpoint"))
    assert os.listdir(workdir / "checkpoints") == [str(V2_STEP)]


def test_checkpoint_of_another_config_names_the_keys(ncsnv2_checkpoint, tmp_path):
    path, _, _ = ncsnv2_checkpoint
    workdir = tmp_path / "w"
    result = run_convert(f"--checkpoint={path}", *V2_CONFIG, "--config.model.ngf=8", f"--workdir={workdir}")
    assert_one_line_error(
        result, "do not fit --config", "begin_conv.weight: checkpoint (4, 1, 3, 3) != model (8, 1, 3, 3)"
    )
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")


def test_checkpoint_with_other_noise_levels(ncsnv2_checkpoint, tmp_path):
    path, _, _ = ncsnv2_checkpoint
    result = run_convert(
        f"--checkpoint={path}",
        *V2_ARGS,
        "--config.model.sigma_max=50.0",
        "--config.model.num_scales=7",
        f"--workdir={tmp_path / 'w'}",
    )
    assert_one_line_error(result, "noise levels", "sigma_max=50.0")


def test_missing_torch_says_how_to_install_it(ncsnv2_checkpoint, tmp_path):
    path, _, _ = ncsnv2_checkpoint
    result = run_convert(f"--checkpoint={path}", *V2_ARGS, f"--workdir={tmp_path / 'w'}", hide_torch=True)
    assert_one_line_error(result, 'pip install "ncsn-jax[torch]"', "torch==2.13.0")
