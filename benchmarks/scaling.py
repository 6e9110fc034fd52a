"""Data-parallel scaling: the same global batch on 1 and on N (simulated) devices — step time and agreement.

  python benchmarks/scaling.py                                   # the digits config, 1 vs 8 simulated CPU devices
  python benchmarks/scaling.py --config=toy --devices=1,2,8 --batch_size=512

Each device count runs in its own process (``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be set
before JAX starts) with :class:`ncsn_jax.train.Trainer` on a mesh of all N devices: the global batch is split
over them, the parameters are replicated, the gradient is all-reduced by XLA. On a CPU the "devices" share the
same cores, so N > 1 measures the overhead of the sharded path, not a speed-up; what it checks is that the path
is right: after ``--steps`` steps from the same state on the same batches, the parameters agree with the
1-device run to float32 round-off (the loss draws its noise for the whole global batch, independently of the
sharding). On GPU/TPU hosts the same script (without the flag) measures real scaling: see benchmarks/README.md.
Writes ``benchmarks/results/scaling.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import common
from absl import app, flags

flags.DEFINE_string("config", "digits", "Config module under configs/.")
flags.DEFINE_list("devices", ["1", "8"], "Device counts (simulated on CPU).")
flags.DEFINE_integer("batch_size", 64, "Global batch size (a multiple of every device count).")
flags.DEFINE_integer("steps", 5, "Timed steps (after one compiling step).")
flags.DEFINE_bool("simulate", True, "Simulate the devices on the CPU (off on a GPU/TPU host).")
flags.DEFINE_string("out", "scaling", "Name of the JSON file under benchmarks/results/ ('' to skip).")
FLAGS = flags.FLAGS

WORKER = r"""
import importlib, json, statistics, sys, time
sys.path.insert(0, {root!r})
import jax, numpy as np
from ncsn_jax import config_lib, datasets, train
config = importlib.import_module("configs.{config}").get_config()
config.training.batch_size = {batch}
config.training.steps_per_call = 1
dataset = datasets.create_dataset(config, "train")
config, _ = config_lib.resolve_auto_fields(config, dataset)
trainer = train.Trainer.create(config, dataset.example_shape)
state = trainer.init_state()
times, losses = [], []
for step in range({steps} + 1):
    batch = trainer.batches(dataset, step, 1)
    start = time.perf_counter()
    state, metrics = trainer.multi_step(state, batch)
    losses.append(float(metrics["loss"][0]))
    times.append(time.perf_counter() - start)
flat = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(state.params)])
np.save({params_path!r}, flat)
print(json.dumps({{"devices": jax.device_count(), "compile_and_first_step_s": times[0],
                  "step_s": statistics.median(times[1:]), "losses": losses}}))
"""


def run(devices: int) -> dict:
    params_path = f"/tmp/ncsn_jax_scaling_params_{devices}.npy"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if FLAGS.simulate:
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    code = WORKER.format(
        root=common.ROOT,
        config=FLAGS.config,
        batch=FLAGS.batch_size,
        steps=FLAGS.steps,
        params_path=params_path,
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=common.ROOT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row["params_path"] = params_path
    return row


def main(argv):
    del argv
    import numpy as np  # pylint: disable=g-import-not-at-top

    info = common.machine()
    rows = [run(int(n)) for n in FLAGS.devices]
    base = np.load(rows[0]["params_path"])
    for row in rows:
        params = np.load(row.pop("params_path"))
        row["max_abs_param_diff_vs_first"] = float(np.max(np.abs(params - base)))
        row["max_abs_loss_diff_vs_first"] = float(
            np.max(np.abs(np.subtract(row["losses"], rows[0]["losses"])))
        )
        row["step_ratio_vs_first"] = row["step_s"] / rows[0]["step_s"]
        row.update(config=FLAGS.config, batch_size=FLAGS.batch_size, simulated=FLAGS.simulate, **info)
    print(
        f"# {info['device']} ({'simulated devices' if FLAGS.simulate else 'real devices'}), jax {info['jax']}, "
        f"{info['date']}, load {info['load_avg_1min']}; {FLAGS.config}, global batch {FLAGS.batch_size}, "
        f"{FLAGS.steps} steps"
    )
    common.print_table(
        rows,
        [
            "devices",
            "step_s",
            "step_ratio_vs_first",
            "compile_and_first_step_s",
            "max_abs_loss_diff_vs_first",
            "max_abs_param_diff_vs_first",
        ],
    )
    if FLAGS.out:
        print(f"# wrote {common.write_json(FLAGS.out, rows)}")


if __name__ == "__main__":
    app.run(main)
