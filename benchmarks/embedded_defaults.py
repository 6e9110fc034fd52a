"""Wall-clock cost of the embedded defaults (the README's laptop runs), end to end through main.py.

  python benchmarks/embedded_defaults.py                 # toy and digits, defaults, no overrides
  python benchmarks/embedded_defaults.py --configs=toy

For each config: train from scratch into a fresh workdir, then sample; prints the wall time of each phase
(process start, JAX import and compilation included) and a quality figure: for the toy mixture the weight of
the +5·1 mode among the samples (target 0.8), for the digits the mean distance from each sample to its
nearest training image divided by the same for held-out test images (≈1 means samples sit as close to the
data as real unseen digits do).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

flags.DEFINE_list("configs", ["toy", "digits"], "Embedded configs to run.")
flags.DEFINE_string("workdir", "", "Where to put the runs (default: a temporary directory).")
FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(config: str, workdir: str, mode: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "main.py",
            f"--config=configs/{config}.py",
            f"--workdir={workdir}",
            f"--mode={mode}",
        ],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def _quality(config: str, samples: np.ndarray) -> str:
    if config == "toy":
        return f"+5 mode weight {np.mean(samples.sum(-1) > 0):.3f} (target 0.8)"
    sys.path.insert(0, REPO)
    from configs import digits  # pylint: disable=import-outside-toplevel
    from ncsn_jax import datasets  # pylint: disable=import-outside-toplevel

    cfg = digits.get_config()
    train = datasets.create_dataset(cfg, "train").sample_examples(10_000).reshape(-1, 64)
    test = datasets.create_dataset(cfg, "test").sample_examples(10_000).reshape(-1, 64)
    nearest = lambda x: np.sqrt(((x[:, None] - train[None]) ** 2).sum(-1).min(1)).mean()
    ratio = nearest(samples.reshape(-1, 64)) / nearest(test)
    return f"nearest-train distance ratio samples/test {ratio:.2f}"


def main(argv):
    del argv
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="ncsn_defaults_")
    print(f"# {os.cpu_count()} CPU cores; runs under {root}")
    print("| config | train s | sample s | quality |")
    print("|---|---|---|---|")
    for config in FLAGS.configs:
        workdir = os.path.join(root, config)
        train_s = _run(config, workdir, "train")
        sample_s = _run(config, workdir, "sample")
        step = max(os.listdir(os.path.join(workdir, "samples")), key=int)
        samples = np.load(os.path.join(workdir, "samples", step, "annealed_langevin-seed0", "samples.npz"))[
            "samples"
        ]
        print(f"| {config} | {train_s:.0f} | {sample_s:.0f} | {_quality(config, samples)} |", flush=True)


if __name__ == "__main__":
    app.run(main)
