"""Our NCSNv2 / NCSN against the authors' PyTorch networks, in one process: train step and forward pass.

  python benchmarks/vs_pytorch.py                                      # CIFAR-10 ngf 128, batch 16, CPU
  python benchmarks/vs_pytorch.py --batch_size=128 --models=ncsnv2
  python benchmarks/vs_pytorch.py --device=gpu --batch_size=128      # MFU against the GPU's TF32 peak

The PyTorch side is the reference architecture re-typed from ermongroup/ncsn and ermongroup/ncsnv2
(``tests/torch_reference.py``, loaded by path), trained as the reference trains it: ``anneal_dsm_score_estimation``
(a level per example, ``x̃ = x + σz``, ``½‖s(x̃) + z/σ‖²·σ²``), ``Adam``, and NCSNv2's ``EMAHelper`` update. Ours is the
project's own jitted train step (:class:`ncsn_jax.train.Trainer` on ``configs/cifar10.py`` /
``configs/cifar10_ncsn.py``: annealed DSM, Adam, EMA, state donated, ``steps_per_call = 1``). Both get the same
batch (uniform images in [0, 1]), the same batch size, and the same number of threads: ``torch.set_num_threads(n)``
and, for XLA, ``--xla_cpu_multi_thread_eigen=true`` plus a CPU affinity mask of ``n`` cores when ``n`` is below
the machine's count (XLA sizes its thread pool from the schedulable CPUs).

Timing: each model's steps run interleaved (one of ours, one of theirs, repeated ``--repeats`` times, after warm-up)
and the table reports medians and the ratio ours / reference (< 1: ours is faster). MFU: FLOPs of one call from
XLA's cost analysis of *our* compiled step (every op, not only the convolutions) divided by the time and by
the device's dense peak for the dtype (``common.peak_tflops``: float32 on the CPU, threads × the measured
single-core SGEMM rate; TF32 on H100 / H200 / A100, at which float32 convolutions run by default in both
frameworks; ``--peak_tflops`` overrides, 0 skips it); the reference does the same arithmetic, so its MFU uses the
same FLOP count. Writes ``benchmarks/results/<--out>.json``.
"""

from __future__ import annotations

import importlib
import os
import sys

import common
from absl import app, flags

flags.DEFINE_list(
    "models", ["ncsnv2", "ncsn"], "ncsnv2 (configs/cifar10.py) and/or ncsn (configs/cifar10_ncsn.py)."
)
flags.DEFINE_integer("batch_size", 16, "Train-step batch size.")
flags.DEFINE_integer("forward_batch_size", 8, "Forward-pass batch size.")
flags.DEFINE_integer("ngf", 128, "Base width of both networks.")
flags.DEFINE_integer("threads", 0, "Threads for both frameworks (0: all cores).")
flags.DEFINE_integer("repeats", 5, "Timed, interleaved calls of each side.")
flags.DEFINE_integer("warmup", 2, "Untimed calls of each side after compilation.")
flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "cpu, or gpu (CUDA for torch, the GPU backend for JAX).")
flags.DEFINE_float(
    "peak_tflops",
    -1.0,
    "Device peak TFLOP/s for the MFU (-1: common.peak_tflops for --peak_dtype, i.e. threads x 91 GFLOP/s on "
    "this CPU, the data sheet on H100/H200/A100; 0: no MFU).",
)
flags.DEFINE_enum(
    "peak_dtype",
    "auto",
    ["auto", "float32", "tf32", "bfloat16"],
    "Which peak: auto = float32 on the CPU, tf32 on a GPU (float32 convolutions run as TF32 there by default).",
)
flags.DEFINE_bool("train", True, "Time the train step.")
flags.DEFINE_bool("forward", True, "Time the forward pass.")
flags.DEFINE_string("out", "vs_pytorch", "Name of the JSON file under benchmarks/results/ ('' to skip).")
FLAGS = flags.FLAGS

CONFIGS = {"ncsnv2": "cifar10", "ncsn": "cifar10_ncsn"}


def benchmark(kind: str, torch, info) -> list[dict]:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    from ncsn_jax import parallel, train  # pylint: disable=g-import-not-at-top

    config = importlib.import_module(f"configs.{CONFIGS[kind]}").get_config()
    config.model.ngf = FLAGS.ngf
    config.training.batch_size = FLAGS.batch_size
    config.training.steps_per_call = 1
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(FLAGS.batch_size, *shape)).astype(np.float32)
    torch_device = "cuda" if FLAGS.device == "gpu" else "cpu"
    reference = common.TorchReference(torch, kind, config, x, torch_device)

    trainer = train.Trainer.create(config, shape)
    rows = []
    flops_note = {}
    if FLAGS.train:
        state = trainer.init_state()
        batch = parallel.global_batch(x[None], trainer.mesh, leading_axes=1)
        compiled = trainer.multi_step.lower(state, batch).compile()
        holder = {"state": state}

        def ours_train():
            holder["state"], metrics = compiled(holder["state"], batch)
            jax.block_until_ready(metrics["loss"])

        for _ in range(FLAGS.warmup):
            ours_train()
            reference.train_step()
        medians = common.interleaved_medians(
            {"ours": ours_train, "torch": reference.train_step}, FLAGS.repeats
        )
        flops_note["train"] = common.compiled_flops(compiled)
        rows.append(_row(kind, "train step", FLAGS.batch_size, medians, flops_note["train"], info))
        del holder, state, compiled

    if FLAGS.forward:
        n = FLAGS.forward_batch_size
        params = trainer.init_state().params
        sigmas = np.asarray(trainer.sigmas)
        labels = rng.integers(0, len(sigmas), n)
        xf = jnp.asarray(x[:n] if n <= len(x) else rng.uniform(size=(n, *shape)).astype(np.float32))
        sigma = jnp.asarray(sigmas[labels])
        forward = jax.jit(lambda params, x, sigma: trainer.model.apply({"params": params}, x, sigma))
        compiled_forward = forward.lower(params, xf, sigma).compile()
        xt = torch.tensor(common.torch_reference().nchw(np.asarray(xf)), device=reference.x.device)
        lt = torch.tensor(labels, device=reference.x.device)

        def ours_forward():
            jax.block_until_ready(compiled_forward(params, xf, sigma))

        def torch_forward():
            reference.forward(xt, lt)

        for _ in range(FLAGS.warmup):
            ours_forward()
            torch_forward()
        medians = common.interleaved_medians({"ours": ours_forward, "torch": torch_forward}, FLAGS.repeats)
        rows.append(_row(kind, "forward", n, medians, common.compiled_flops(compiled_forward), info))
    return rows


def _row(kind, what, batch, medians, flops, info) -> dict:
    peak = FLAGS.peak_tflops
    row = {
        "model": kind,
        "what": what,
        "batch": batch,
        "ngf": FLAGS.ngf,
        "ours_ms": 1e3 * medians["ours"],
        "torch_ms": 1e3 * medians["torch"],
        "ratio": medians["ours"] / medians["torch"],
        "gflop": flops / 1e9,
        "repeats": FLAGS.repeats,
    }
    if peak > 0:
        row["mfu_ours_%"] = 100 * flops / medians["ours"] / (peak * 1e12)
        row["mfu_torch_%"] = 100 * flops / medians["torch"] / (peak * 1e12)
    print(
        f"{kind} {what} batch {batch}: ours {row['ours_ms']:.0f} ms, torch {row['torch_ms']:.0f} ms, "
        f"ratio {row['ratio']:.2f}",
        file=sys.stderr,
        flush=True,
    )
    return {**row, **info}


def main(argv):
    del argv
    threads = common.limit_threads(FLAGS.threads, FLAGS.device)
    import torch  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    info = {
        **common.machine(),
        "threads": threads,
        "torch": torch.__version__,
        "xla_flags": os.environ["XLA_FLAGS"],
    }
    if FLAGS.peak_tflops < 0:
        FLAGS.peak_tflops, peak_note = common.peak_tflops(FLAGS.peak_dtype, threads)
    else:
        peak_note = "--peak_tflops"
    info["peak_tflops"], info["peak"] = FLAGS.peak_tflops, peak_note
    print(f"# {info}", file=sys.stderr)
    rows = [row for kind in FLAGS.models for row in benchmark(kind, torch, info)]
    print(
        f"# {info['device']}, {threads} threads, jax {info['jax']}, torch {info['torch']}, {info['date']}, "
        f"load {info['load_avg_1min']}; CIFAR-10 32x32 ngf {FLAGS.ngf}; median of {FLAGS.repeats} interleaved calls; "
        f"MFU against {FLAGS.peak_tflops:g} TFLOP/s ({peak_note})"
    )
    columns = ["model", "what", "batch", "ours_ms", "torch_ms", "ratio", "gflop"]
    if FLAGS.peak_tflops > 0:
        columns += ["mfu_ours_%", "mfu_torch_%"]
    common.print_table(rows, columns)
    if FLAGS.out:
        print(f"# wrote {common.write_json(FLAGS.out, rows)}")


if __name__ == "__main__":
    app.run(main)
