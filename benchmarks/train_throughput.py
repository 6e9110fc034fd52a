"""Training and sampling throughput of the published configs, with model FLOP utilisation (MFU).

  python benchmarks/train_throughput.py --configs=cifar10,cifar10_ncsn --batch_size=128 --peak_tflops=989
  python benchmarks/train_throughput.py --configs=digits,toy --batch_size=128          # CPU-sized

Prints one row per config: compile time, train steps/s, images/s, sampler steps/s and MFU. MFU counts the
convolutions only (``models.conv_flops``: 2 FLOP per multiply-add) and takes a train step as 3 forward passes
(forward + backward for inputs and weights); ``--peak_tflops`` is the accelerator's dense peak for the compute
dtype (H100 SXM bf16: 989; leave 0 on CPU to skip MFU). Measured on synthetic data (the input pipeline is
benchmarked separately), after ``--warmup`` steps, over ``--steps`` steps.
"""

from __future__ import annotations

import importlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, ".")

from ncsn_jax import models, parallel, sampling, train  # noqa: E402

flags.DEFINE_list("configs", ["digits", "toy"], "Config modules under configs/.")
flags.DEFINE_integer("batch_size", 128, "Global batch size for training.")
flags.DEFINE_integer("sample_batch_size", 0, "Batch size for the sampler (0: same as training).")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for the compute dtype (0: skip MFU).")
flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 | bfloat16.")
FLAGS = flags.FLAGS


def _timed(fn, *args, n: int):
    start = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n, out


def benchmark(name: str) -> dict[str, float | str]:
    config = importlib.import_module(f"configs.{name}").get_config()
    config.training.batch_size = FLAGS.batch_size
    config.model.dtype = FLAGS.dtype
    for field, value in (("model.sigma_max", 50.0), ("model.num_scales", 10), ("sampling.step_lr", 1e-5)):
        section, key = field.split(".")
        if config[section][key] == "auto":
            config[section][key] = value
    example_shape = models.example_shape(config)
    trainer = train.Trainer.create(config, example_shape)
    model, sigmas, step = trainer.model, trainer.sigmas, trainer.multi_step
    state = trainer.init_state()
    rng = np.random.default_rng(0)
    batch = parallel.global_batch(
        rng.uniform(size=(1, FLAGS.batch_size, *example_shape)).astype(np.float32),
        trainer.mesh,
        leading_axes=1,
    )
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(FLAGS.warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / FLAGS.steps

    # Sampler: one annealed-Langevin scan of 2 levels x n steps; time per Langevin step.
    n_sample = FLAGS.sample_batch_size or FLAGS.batch_size
    score_fn = models.get_score_fn(model, {"params": state.ema_params})
    x = jnp.asarray(rng.uniform(size=(n_sample, *example_shape)), jnp.float32)
    n_steps = 5
    run = jax.jit(
        lambda x, key: (
            sampling.annealed_langevin_dynamics(
                score_fn, x, sigmas[-2:], key, n_steps_each=n_steps, step_lr=1e-5
            ).samples
        )
    )
    jax.block_until_ready(run(x, jax.random.PRNGKey(0)))
    sample_s, _ = _timed(run, x, jax.random.PRNGKey(1), n=2)
    sampler_steps_per_s = 2 * n_steps / sample_s

    row: dict[str, float | str] = {
        "config": name,
        "model": config.model.name,
        "params (M)": models.count_params(state.params) / 1e6,
        "compile s": compile_s,
        "train steps/s": 1.0 / step_s,
        "examples/s": FLAGS.batch_size / step_s,
        "sampler steps/s": sampler_steps_per_s,
    }
    if len(example_shape) == 3:
        forward_flops = models.conv_flops(model, (1, *example_shape))
        row["GFLOP/fwd/example"] = forward_flops / 1e9
        if FLAGS.peak_tflops > 0:
            achieved = 3 * forward_flops * FLAGS.batch_size / step_s
            row["MFU %"] = 100 * achieved / (FLAGS.peak_tflops * 1e12 * jax.device_count())
    return row


def main(argv):
    del argv
    print(
        f"# JAX {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s): "
        f"{jax.devices()[0].device_kind}; batch {FLAGS.batch_size}, dtype {FLAGS.dtype}"
    )
    rows = [benchmark(name) for name in FLAGS.configs]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    app.run(main)
