"""Wall-clock cost of the embedded defaults (the README's laptop runs), end to end through main.py.

  python benchmarks/embedded_defaults.py                 # toy and digits, defaults, no overrides
  python benchmarks/embedded_defaults.py --configs=toy

For each config: train from scratch into a fresh workdir, then sample, then evaluate (``--mode=eval``); prints
the wall time of each phase (process start, JAX import and compilation included) and a quality figure from the
eval report: for the toy mixture the weight of the +5·1 mode among the samples (target 0.8), for the digits
the digits metric (``ncsn_jax.evaluation.digits``: Inception score as a fraction of the real held-out digits',
Fréchet distance next to the real split's bootstrap mean ± std, smallest / largest class share,
nearest-neighbour distance ratio and memorised share). Appends its rows to
``benchmarks/results/embedded_defaults.json``.
The goal for the digits (issue 12): train + sample ≤ 180 s on 2 cores, IS ≥ 95 % of the real digits'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import common
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


def _quality(config: str, metrics: dict) -> str:
    if config == "toy":
        weights = ", ".join(f"{w:.3f}" for w in metrics["mode_weights"])
        true = ", ".join(f"{w:.2f}" for w in metrics["true_weights"])
        return f"mode weights {weights} (true {true})"
    ours, real_fd = metrics["samples"], metrics["real_train_bootstrap_fd"]
    return (
        f"IS {100 * metrics['is_fraction_of_real']:.1f} % of real, FD {ours['frechet_distance']:.2f} "
        f"(real {real_fd['mean']:.2f} ± {real_fd['std']:.2f}), classes {ours['min_class_share']:.3f}-"
        f"{ours['max_class_share']:.3f}, NN ratio {ours['nn_distance_ratio']:.2f}, "
        f"memorised {ours['memorized_share']:.3f}"
    )


def main(argv):
    del argv
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="ncsn_defaults_")
    print(f"# {os.cpu_count()} CPU cores; runs under {root}")
    print("| config | train s | sample s | train + sample s | eval s | quality (eval report) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for config in FLAGS.configs:
        workdir = os.path.join(root, config)
        train_s = _run(config, workdir, "train")
        sample_s = _run(config, workdir, "sample")
        eval_s = _run(config, workdir, "eval")
        step = max((d for d in os.listdir(os.path.join(workdir, "eval")) if d.isdigit()), key=int)
        with open(os.path.join(workdir, "eval", step, "report.json")) as f:
            metrics = json.load(f)["metrics"]
        quality = _quality(config, metrics)
        print(
            f"| {config} | {train_s:.0f} | {sample_s:.0f} | {train_s + sample_s:.0f} | {eval_s:.0f} | {quality} |",
            flush=True,
        )
        rows.append(
            dict(
                config=config,
                train_s=train_s,
                sample_s=sample_s,
                eval_s=eval_s,
                quality=quality,
                metrics=metrics,
                **common.machine(),
            )
        )
    print("appended to", common.append_json("embedded_defaults", rows))


if __name__ == "__main__":
    app.run(main)
