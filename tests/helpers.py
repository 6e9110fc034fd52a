"""Helpers shared by the tests: running ``main.py`` and Python snippets in subprocesses, reading checkpoints
independently of ``ncsn_jax``, and checking the command line's error messages. (Test modules import these,
never each other.)"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_WEIGHT = 0.8  # weight of the +5·1 component of NCSN's toy mixture


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a child run: CPU only, ``devices`` simulated devices, TF's C++ logs off."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def run_main(
    *args: str, devices: int = 1, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python main.py ARGS`` from the repo root on ``devices`` simulated CPU devices."""
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=REPO,
        env=subprocess_env(devices) if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_python(code: str, *args: str, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a Python snippet (dedented) from the repo root, with ``args`` as ``sys.argv[1:]``."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env=subprocess_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-5000:]}"
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str, lines: int | None = None) -> None:
    """Exit status 2, no traceback, and an ``error:`` message containing ``fragments`` at the end of stderr.

    With ``lines``, stderr is nothing but the message, of that many lines (no log line or library warning
    before it: the run stopped before doing anything).
    """
    stderr = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "error: " in stderr, stderr[-3000:]
    message = stderr[stderr.index("error: ") :]
    if lines is not None:
        assert stderr.startswith("error: ") and len(stderr.splitlines()) == lines, stderr[-3000:]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{stderr[-3000:]}"


def snapshot_tree(path: str) -> dict[str, float]:
    """mtime of every file and directory below ``path`` (directories included: none may appear)."""
    listing = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            listing[os.path.join(root, name)] = os.path.getmtime(os.path.join(root, name))
    return listing


def tree_listing(path: str) -> dict[str, tuple[int, float]]:
    """(size, mtime) of every file below ``path``, by relative path."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, path)] = (os.path.getsize(full), os.path.getmtime(full))
    return out


def sample_dir(workdir: str, step: int | str, method: str = "annealed_langevin", seed: int = 0) -> str:
    """Where ``--mode=sample`` writes (``ncsn_jax.generate.output_dir``, spelled out independently)."""
    return os.path.join(workdir, "samples", str(step), f"{method}-seed{seed}")


def load_samples(workdir: str, step: int | str, method: str = "annealed_langevin", seed: int = 0):
    return np.load(os.path.join(sample_dir(workdir, step, method, seed), "samples.npz"))


def positive_mode_weight(samples: np.ndarray) -> float:
    """Fraction of 2-D samples nearer the +5·1 mode than the −5·1 one."""
    return float(np.mean(samples.sum(axis=-1) > 0))


# -- reading checkpoints independently of ncsn_jax -----------------------------------------------------------
def read_state(checkpoint_dir: str) -> dict[str, np.ndarray]:
    """Every array of a checkpoint's train state, by tree path, read with orbax onto this process's device."""
    path = os.path.join(checkpoint_dir, "state")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.metadata(path).item_metadata.tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored)
        tree = checkpointer.restore(path, target)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(leaf) for p, leaf in flat}


def truncate_manifests(checkpoint_dir: str) -> None:
    """A torn write: the OCDBT manifests of the state item are empty."""
    manifests = glob.glob(os.path.join(checkpoint_dir, "state", "**", "manifest.ocdbt"), recursive=True)
    assert manifests
    for manifest in manifests:
        open(manifest, "w").close()


def truncate_array_data(checkpoint_dir: str) -> None:
    """The array data files of the state item are empty."""
    data = [
        f
        for f in glob.glob(os.path.join(checkpoint_dir, "state", "**", "d", "*"), recursive=True)
        if os.path.isfile(f)
    ]
    assert data
    for f in data:
        open(f, "w").close()


def truncate_meta(checkpoint_dir: str) -> None:
    """The JSON metadata item is empty."""
    open(os.path.join(checkpoint_dir, "meta", "metadata"), "w").close()


def random_inception_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in pytorch-fid's layout (fan-in scaled convolutions, so activations stay O(1))."""
    import flax  # pylint: disable=g-import-not-at-top

    from ncsn_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
    from ncsn_jax.models import convert as convert_lib  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(seed)
    state = {}
    for path, leaf in flax.traverse_util.flatten_dict(inception.abstract_params()).items():
        shape = convert_lib.flax_to_torch_shape(tuple(leaf.shape), path)
        if path[-1] == "kernel":
            value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif path[-1] == "var":
            value = rng.uniform(0.5, 2.0, size=shape)
        else:
            value = rng.normal(scale=0.1, size=shape)
        state[inception.state_dict_key(path)] = value.astype(np.float32)
    return state


def read_tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files below ``logdir``: ``{tag: [(step, value), ...]}`` in file
    and write order. Reads the TFRecord framing (length, CRC, event proto, CRC) directly with tensorboardX's
    protos, so it needs neither TensorFlow nor TensorBoard."""
    import struct  # pylint: disable=g-import-not-at-top

    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return scalars
