"""Where our NCSNv2 CPU train step spends its time, and which XLA:CPU settings change it (the evidence behind
benchmarks/README.md's "CPU train step" section).

  python benchmarks/cpu_train_step.py --threads=1                       # variants vs torch, batch 16, ngf 128
  python benchmarks/cpu_train_step.py --threads=1 --profile --variants=default
  python benchmarks/cpu_train_step.py --micro --threads=1               # single convolutions, fwd / dx / dw

* **Variants**: the project's train step (:class:`ncsn_jax.train.Trainer`, ``configs/cifar10.py``) jitted with
  per-compilation XLA options (``train.compile_train_step(..., xla_options=...)``, so every variant lives in one
  process) and timed interleaved with the authors' PyTorch step (as in ``vs_pytorch.py``):

  - ``default``: XLA:CPU's own defaults (jax 0.10: convolutions and dots run as YNNPACK fusions);
  - ``eigen_convs``: ``xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`` — dots stay on
    YNNPACK, convolutions go to Eigen's spatial convolution (what the project's train step uses on the CPU,
    ``ncsn_jax.compiler_options.for_backend``);
  - ``no_ynn``: ``xla_cpu_experimental_ynn_fusion_type=`` (empty) — no YNNPACK at all.

* ``--profile`` (with ``--threads=1``): one step of each variant under ``jax.profiler``; the XLA thunks are grouped (convolution
  forward / input gradient / weight gradient, pooling, transposes, the rest) from the trace and the compiled
  HLO, and ``torch.profiler`` does the same for the reference step.
* ``--micro``: the four convolution shapes of NCSNv2 CIFAR-10 at ngf 128 (3×3; 128 ch at 32², 256 ch at 16², and
  dilations 2 and 4 at 8² and 4²): forward, input gradient and weight gradient, NHWC and NCHW dimension numbers,
  per variant, against ``torch.nn.functional.conv2d`` / ``torch.nn.grad``.

Writes ``benchmarks/results/cpu_train_step.json`` (``--out``).
"""

from __future__ import annotations

import collections
import functools
import glob
import re
import sys
import tempfile

import common
from absl import app, flags

VARIANTS = {
    "default": {},
    "eigen_convs": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "no_ynn": {"xla_cpu_experimental_ynn_fusion_type": ""},
}
CONV_SHAPES = ((32, 128, 1), (16, 256, 1), (8, 256, 2), (4, 256, 4))  # (H = W, channels, dilation)

flags.DEFINE_list("variants", list(VARIANTS), f"XLA option sets: {', '.join(VARIANTS)}.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("ngf", 128, "NCSNv2 width.")
flags.DEFINE_integer("threads", 0, "Threads for both frameworks (0: all cores).")
flags.DEFINE_integer("repeats", 3, "Timed, interleaved calls of each.")
flags.DEFINE_bool("profile", False, "Break one step of each variant (and of torch) down by operation kind.")
flags.DEFINE_integer("top_others", 10, "With --profile: list this many of the largest thunks of 'the rest'.")
flags.DEFINE_bool("micro", False, "Time single convolutions instead of the train step.")
flags.DEFINE_string("out", "cpu_train_step", "Name of the JSON file under benchmarks/results/ ('' to skip).")
FLAGS = flags.FLAGS


def _categorise(name: str, hlo: dict[str, str]) -> str:
    """The kind of operation an XLA:CPU thunk named ``name`` performs, from its line in the compiled HLO."""
    text = hlo.get(name, "")
    is_conv = "conv_general_dilated" in text and name.startswith(
        ("ynn_fusion", "convolution", "conv_general")
    )
    if is_conv:
        if "transpose(jvp" not in text:
            return "conv forward"
        shape = re.match(r"\(?f32\[([\d,]+)\]", text)
        dims = shape.group(1).split(",") if shape else []
        # The weight gradient is a convolution whose output is the kernel, laid out (I, kh, kw, O).
        is_weight_grad = len(dims) == 4 and dims[1] == dims[2] and dims[1] in ("1", "3")
        return "conv weight gradient" if is_weight_grad else "conv input gradient"
    if "reduce-window" in name or "select-and-scatter" in name:
        return "pooling (reduce-window)"
    if "transpose" in name:
        return "transposes"
    return "elementwise, reductions, other"


def profile_ours(compiled, run) -> dict[str, float]:
    """Seconds per operation kind in one call of ``run`` (which calls ``compiled``)."""
    import jax  # pylint: disable=g-import-not-at-top

    hlo = {}
    for line in compiled.as_text().splitlines():
        match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.*)", line)
        if match:
            hlo[match.group(1)] = match.group(2)
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            run()
        trace = jax.profiler.ProfileData.from_file(
            glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[0]
        )
    seconds: dict[str, float] = collections.defaultdict(float)
    others: dict[str, float] = collections.defaultdict(float)
    for plane in trace.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # the intra-op thread pool that runs the thunks
                continue
            for event in line.events:
                if not event.name.startswith("ThunkExecutor"):
                    kind = _categorise(event.name, hlo)
                    seconds[kind] += event.duration_ns / 1e9
                    if kind == "elementwise, reductions, other":
                        others[event.name] += event.duration_ns / 1e9
    largest = sorted(others.items(), key=lambda item: -item[1])[: FLAGS.top_others]
    for name, duration in largest:
        print(f"  other {duration:7.3f} s  {name}: {hlo.get(name, '')[:160]}", file=sys.stderr)
    return {**seconds, "largest others": {name: duration for name, duration in largest}}


def profile_torch(torch, reference) -> dict[str, float]:
    """Seconds per operation kind in one reference step (self CPU time of torch's operators)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        reference.train_step()
    seconds: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages():
        name = event.key
        if "convolution_backward" in name:
            kind = "conv input + weight gradient"
        elif "conv" in name and "backward" not in name:
            kind = "conv forward"
        elif "max_pool" in name:
            kind = "pooling (max_pool2d + backward)"
        else:
            kind = "elementwise, reductions, other"
        seconds[kind] += event.self_cpu_time_total / 1e6
    return dict(seconds)


def train_step_rows(torch, info) -> list[dict]:
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    from configs import cifar10  # pylint: disable=g-import-not-at-top
    from ncsn_jax import parallel, train  # pylint: disable=g-import-not-at-top

    config = cifar10.get_config()
    config.model.ngf = FLAGS.ngf
    config.training.batch_size = FLAGS.batch_size
    config.training.steps_per_call = 1
    shape = (32, 32, 3)
    x = np.random.default_rng(0).uniform(size=(FLAGS.batch_size, *shape)).astype(np.float32)
    trainer = train.Trainer.create(config, shape)
    batch = parallel.global_batch(x[None], trainer.mesh, leading_axes=1)
    reference = common.TorchReference(torch, "ncsnv2", config, x, "cpu")

    calls, compiled_steps = {}, {}
    for variant in FLAGS.variants:
        state = trainer.init_state()
        # The trainer's own step is jitted with the project's options (compiler_options.for_backend), which a
        # later .compile(compiler_options=...) only adds to: each variant jits the step afresh with its own
        # options alone ({} = XLA's defaults).
        step = train.compile_train_step(
            trainer.model,
            config,
            trainer.sigmas,
            trainer.optimizer,
            trainer.mesh,
            xla_options=VARIANTS[variant],
        )
        compiled = step.lower(state, batch).compile()
        holder = {"state": state}

        def run(compiled=compiled, holder=holder):
            holder["state"], metrics = compiled(holder["state"], batch)
            jax.block_until_ready(metrics["loss"])

        run()  # warm-up
        calls[variant], compiled_steps[variant] = run, compiled
        print(f"compiled {variant}", file=sys.stderr, flush=True)
    reference.train_step()
    calls["torch"] = reference.train_step
    medians = common.interleaved_medians(calls, FLAGS.repeats)
    rows = []
    for name, seconds in medians.items():
        row = {
            "variant": name,
            "xla_options": VARIANTS.get(name),
            "batch": FLAGS.batch_size,
            "ngf": FLAGS.ngf,
            "step_s": seconds,
            "ratio_to_torch": seconds / medians["torch"],
            **info,
        }
        if FLAGS.profile:
            breakdown = (
                profile_torch(torch, reference)
                if name == "torch"
                else profile_ours(compiled_steps[name], calls[name])
            )
            row["profile_s"] = breakdown
            print(
                f"{name}: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(breakdown.items()) if isinstance(v, float)),
                flush=True,
            )
        rows.append(row)
    return rows


def micro_rows(torch, info) -> list[dict]:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    rows = []
    for size, channels, dilation in CONV_SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((FLAGS.batch_size, size, size, channels)).astype(np.float32)
        w = (0.05 * rng.standard_normal((3, 3, channels, channels))).astype(np.float32)
        g = rng.standard_normal((FLAGS.batch_size, size, size, channels)).astype(np.float32)
        calls = {}
        for layout in ("NHWC", "NCHW"):
            if layout == "NHWC":
                args, numbers = (x, w, g), ("NHWC", "HWIO", "NHWC")
            else:
                args = (x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2))
                numbers = ("NCHW", "OIHW", "NCHW")
            args = tuple(jnp.asarray(a) for a in args)

            def conv(x, w, numbers=numbers, dilation=dilation):
                padding = ((dilation, dilation), (dilation, dilation))
                return jax.lax.conv_general_dilated(
                    x, w, (1, 1), padding, rhs_dilation=(dilation, dilation), dimension_numbers=numbers
                )

            kinds = {
                "fwd": lambda x, w, g, conv=conv: conv(x, w),
                "dx": lambda x, w, g, conv=conv: jax.vjp(conv, x, w)[1](g)[0],
                "dw": lambda x, w, g, conv=conv: jax.vjp(conv, x, w)[1](g)[1],
            }
            for variant in FLAGS.variants:
                for kind, fn in kinds.items():
                    compiled = jax.jit(fn).lower(*args).compile(compiler_options=VARIANTS[variant] or None)
                    calls[f"{variant} {layout} {kind}"] = lambda compiled=compiled, args=args: (
                        jax.block_until_ready(compiled(*args))
                    )
        xt, wt, gt = (
            torch.tensor(a)
            for a in (x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2))
        )
        torch_args = dict(padding=dilation, dilation=dilation)
        calls["torch fwd"] = functools.partial(torch.nn.functional.conv2d, xt, wt, **torch_args)
        calls["torch dx"] = functools.partial(torch.nn.grad.conv2d_input, xt.shape, wt, gt, **torch_args)
        calls["torch dw"] = functools.partial(torch.nn.grad.conv2d_weight, xt, wt.shape, gt, **torch_args)
        with torch.no_grad():
            for call in calls.values():
                call()
            medians = common.interleaved_medians(calls, FLAGS.repeats)
        for name, seconds in medians.items():
            kind = name.split()[-1]
            rows.append(
                {
                    "conv": f"3x3 {channels}->{channels} at {size}x{size} dilation {dilation}",
                    "case": name,
                    "ms": 1e3 * seconds,
                    "ratio_to_torch": seconds / medians[f"torch {kind}"],
                    "batch": FLAGS.batch_size,
                    **info,
                }
            )
    return rows


def main(argv):
    del argv
    threads = common.limit_threads(FLAGS.threads)
    if FLAGS.profile and threads != 1:
        # Measured 2026-12-07: with 2 threads the trace put 0.02 s of a 10.7 s step under convolutions; their
        # thunks then run off the "XLAEigen" lines that profile_ours reads.
        raise app.UsageError("--profile attributes XLA's thunks only with --threads=1.")
    import torch  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    info = {**common.machine(), "threads": threads, "torch": torch.__version__}
    print(f"# {info}", file=sys.stderr)
    print(
        f"# {info['device']}, {threads} threads, jax {info['jax']}, torch {info['torch']}, {info['date']}, "
        f"load {info['load_avg_1min']}; batch {FLAGS.batch_size}, ngf {FLAGS.ngf}; median of {FLAGS.repeats} "
        "interleaved calls"
    )
    if FLAGS.micro:
        rows = micro_rows(torch, info)
        common.print_table(rows, ["conv", "case", "ms", "ratio_to_torch"])
    else:
        rows = train_step_rows(torch, info)
        common.print_table(rows, ["variant", "step_s", "ratio_to_torch"])
    if FLAGS.out:
        print(f"# wrote {common.write_json(FLAGS.out + ('_micro' if FLAGS.micro else ''), rows)}")


if __name__ == "__main__":
    app.run(main)
