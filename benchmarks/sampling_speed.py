"""Sampling speed: annealed Langevin for NCSNv2 CIFAR-10 against the reference's loop, and our single-scan
sampler against a Python loop of jitted steps.

  python benchmarks/sampling_speed.py                         # CPU, ~3 min on 2 cores
  python benchmarks/sampling_speed.py --device=gpu --batch_size=100 --levels=232

1. **NCSNv2 CIFAR-10** (``configs/cifar10.py``: ngf 128, L = 232 levels × T = 5 steps = 1,160 score
   evaluations, + the final denoising step). A full chain for one batch takes hours on 2 CPU cores, so both sides
   run the first ``--levels`` levels and the figures are extrapolated linearly (every Langevin step costs the
   same: one score evaluation and an update): seconds per score evaluation, seconds for the full 1,160-step chain
   and images/s. Ours: ``sampling.annealed_langevin_dynamics`` (one compiled ``lax.scan``); the reference:
   ``anneal_Langevin_dynamics`` of ermongroup/ncsnv2 (a Python loop of ``scorenet(x, labels)`` and
   ``x + step·grad + √(2·step)·z`` under ``torch.no_grad()``) on the re-typed network of
   ``tests/torch_reference.py``. Same batch, same thread count, interleaved repetitions.
2. **Dispatch**: NCSN's toy MLP (``configs/toy.py``: 10 levels × 100 steps), the whole chain as one compiled
   ``lax.scan`` against a Python loop calling a jitted one-step sampler 1,000 times (the same
   ``annealed_langevin_dynamics`` restricted to one level and one step, the key split inside: one dispatch per
   step), at batches ``--toy_batches``. Where a step is tiny (batch 1-10) the loop pays a dispatch per step
   that costs more than the step; at batch 100 the MLP's matrix products dominate and the two converge.

Writes ``benchmarks/results/sampling_speed.json``.
"""

from __future__ import annotations

import sys
import time

import common
from absl import app, flags

flags.DEFINE_integer("batch_size", 8, "Images per NCSNv2 chain.")
flags.DEFINE_integer("levels", 2, "NCSNv2 levels actually run (T = 5 steps each); the rest is extrapolated.")
flags.DEFINE_integer("ngf", 128, "NCSNv2 width.")
flags.DEFINE_list("toy_batches", ["1", "10", "100"], "Samples per toy chain (one comparison each).")
flags.DEFINE_integer("repeats", 3, "Timed, interleaved repetitions.")
flags.DEFINE_integer("threads", 0, "Threads for both frameworks (0: all cores).")
flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "cpu or gpu.")
flags.DEFINE_string("out", "sampling_speed", "Name of the JSON file under benchmarks/results/ ('' to skip).")
FLAGS = flags.FLAGS


def ncsnv2_rows(torch, info) -> list[dict]:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    from configs import cifar10  # pylint: disable=g-import-not-at-top
    from ncsn_jax import config_lib, models, sampling  # pylint: disable=g-import-not-at-top

    config = cifar10.get_config()
    config.model.ngf = FLAGS.ngf
    sigmas = config_lib.sigmas(config)
    n_levels, n_steps = FLAGS.levels, config.sampling.n_steps_each
    full_evaluations = len(sigmas) * n_steps + int(config.sampling.denoise)
    step_lr = float(config.sampling.step_lr)  # ours: x + (α/2)s + √α z; the reference's step is α/2
    shape = (FLAGS.batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)

    model = models.create(config)
    variables = models.init_variables(model, jax.random.PRNGKey(0), (1, *shape[1:]))
    x0 = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
    # The first n_levels levels, with the step sizes they have in the full schedule (α_i = ε σ_i² / σ_L²).
    head = jnp.asarray(sigmas[:n_levels])
    scale = float(sigmas[-1] / sigmas[n_levels - 1]) ** 2

    @jax.jit
    def ours(x, key):
        score_fn = lambda x, sigma: model.apply(variables, x, sigma)  # noqa: E731
        return sampling.annealed_langevin_dynamics(
            score_fn, x, head, key, n_steps_each=n_steps, step_lr=step_lr / scale
        )

    x0_jax = jnp.asarray(x0)
    jax.block_until_ready(ours(x0_jax, jax.random.PRNGKey(1)))

    reference = common.torch_reference()
    device = "cuda" if FLAGS.device == "gpu" else "cpu"
    net = (
        reference.build_torch_reference(torch)
        .RefineNet("ncsnv2", FLAGS.ngf, shape[-1], shape[1], [float(s) for s in sigmas])
        .to(device)
    )
    x0_torch = torch.tensor(reference.nchw(x0), device=device)
    reference_step_lr = step_lr / 2  # the reference's convention

    def theirs():
        """ncsnv2's anneal_Langevin_dynamics over the first n_levels levels (logging norms left out)."""
        x = x0_torch
        with torch.no_grad():
            for c in range(n_levels):
                labels = torch.full((x.shape[0],), c, dtype=torch.long, device=device)
                step_size = reference_step_lr * (float(sigmas[c]) / float(sigmas[-1])) ** 2
                for _ in range(n_steps):
                    grad = net(x, labels)
                    x = x + step_size * grad + torch.randn_like(x) * np.sqrt(step_size * 2)
        if device == "cuda":
            torch.cuda.synchronize()
        return x

    theirs()  # warm-up
    medians = common.interleaved_medians(
        {"ours": lambda: jax.block_until_ready(ours(x0_jax, jax.random.PRNGKey(2))), "torch": theirs},
        FLAGS.repeats,
    )
    evaluations = n_levels * n_steps
    rows = []
    for side in ("ours", "torch"):
        per_evaluation = medians[side] / evaluations
        chain = per_evaluation * full_evaluations
        rows.append(
            {
                "benchmark": "ncsnv2_cifar10_annealed_langevin",
                "implementation": side,
                "batch": FLAGS.batch_size,
                "ngf": FLAGS.ngf,
                "measured_evaluations": evaluations,
                "s_per_evaluation": per_evaluation,
                "full_chain_evaluations": full_evaluations,
                "full_chain_s_extrapolated": chain,
                "images_per_s_extrapolated": FLAGS.batch_size / chain,
                **info,
            }
        )
    rows[0]["ratio_ours_over_torch"] = medians["ours"] / medians["torch"]
    return rows


def toy_rows(info, batch: int) -> list[dict]:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from configs import toy  # pylint: disable=g-import-not-at-top
    from ncsn_jax import config_lib, models, sampling  # pylint: disable=g-import-not-at-top

    config = toy.get_config()
    sigmas = jnp.asarray(config_lib.sigmas(config))
    n_steps, step_lr = config.sampling.n_steps_each, float(config.sampling.step_lr)
    model = models.create(config)
    variables = models.init_variables(model, jax.random.PRNGKey(0), (1, 2))
    score_fn = lambda x, sigma: model.apply(variables, x, sigma)  # noqa: E731
    x0 = jax.random.uniform(jax.random.PRNGKey(1), (batch, 2), minval=-8.0, maxval=8.0)

    scan = jax.jit(
        lambda x, key: sampling.annealed_langevin_dynamics(
            score_fn, x, sigmas, key, n_steps_each=n_steps, step_lr=step_lr
        )
    )

    @jax.jit
    def one_step(x, key, sigma, alpha):
        """One Langevin step at level σ with step α (the sampler restricted to one level and one step), and the
        next key: one dispatch per step."""
        key, step_key = jax.random.split(key)
        x = sampling.annealed_langevin_dynamics(
            score_fn, x, sigma[None], step_key, n_steps_each=1, step_lr=alpha
        ).samples
        return x, key

    sigma_min = float(sigmas[-1])
    levels = [(s, jnp.float32(step_lr * (float(s) / sigma_min) ** 2)) for s in sigmas]

    def loop(key):
        x = x0
        for sigma, alpha in levels:
            for _ in range(n_steps):
                x, key = one_step(x, key, sigma, alpha)
        return jax.block_until_ready(x)

    jax.block_until_ready(scan(x0, jax.random.PRNGKey(2)))
    loop(jax.random.PRNGKey(2))
    medians = common.interleaved_medians(
        {
            "scan": lambda: jax.block_until_ready(scan(x0, jax.random.PRNGKey(3))),
            "python_loop": lambda: loop(jax.random.PRNGKey(3)),
        },
        FLAGS.repeats,
    )
    total = len(levels) * n_steps
    return [
        {
            "benchmark": "toy_dispatch",
            "implementation": side,
            "batch": batch,
            "steps": total,
            "chain_s": medians[side],
            "us_per_step": 1e6 * medians[side] / total,
            "loop_over_scan": medians["python_loop"] / medians["scan"],
            **info,
        }
        for side in ("scan", "python_loop")
    ]


def main(argv):
    del argv
    threads = common.limit_threads(FLAGS.threads, FLAGS.device)
    import torch  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    info = {**common.machine(), "threads": threads, "torch": torch.__version__}
    print(f"# {info}", file=sys.stderr)
    start = time.perf_counter()
    toy = [row for batch in FLAGS.toy_batches for row in toy_rows(info, int(batch))]
    ncsnv2 = ncsnv2_rows(torch, info)
    print(
        f"# {info['device']}, {threads} threads, jax {info['jax']}, torch {info['torch']}, {info['date']}, "
        f"load {info['load_avg_1min']}; {time.perf_counter() - start:.0f} s"
    )
    print(
        f"NCSNv2 CIFAR-10 ngf {FLAGS.ngf}, batch {FLAGS.batch_size}: {FLAGS.levels} of 232 levels run, "
        "extrapolated to the full chain"
    )
    common.print_table(
        ncsnv2,
        [
            "implementation",
            "s_per_evaluation",
            "full_chain_s_extrapolated",
            "images_per_s_extrapolated",
            "ratio_ours_over_torch",
        ],
    )
    print("Toy MLP, 1,000 Langevin steps: compiled scan vs a Python loop of jitted steps")
    common.print_table(toy, ["batch", "implementation", "chain_s", "us_per_step", "loop_over_scan"])
    if FLAGS.out:
        print(f"# wrote {common.write_json(FLAGS.out, ncsnv2 + toy)}")


if __name__ == "__main__":
    app.run(main)
