"""Cost of the score-matching estimators against the data dimension D (the sliced score matching paper's claim).

  python benchmarks/estimators.py                                   # D = 2 … 3072, CPU, ~3 min on 2 cores
  python benchmarks/estimators.py --dims=16,784 --repeats=3

Times one training step of the same unconditional MLP score network (``models.NoiseConditionalMLP`` with
``sigma_conditioning="none"``, hidden widths ``--hidden``) under each objective of :mod:`ncsn_jax.losses` at a
single noise level (``num_scales = 1``, σ = ``--sigma``), through the project's own jitted train step
(:class:`ncsn_jax.train.Trainer`: value_and_grad, Adam, EMA, state donated), batch ``--batch_size``:

* ``exact``:  ½‖s‖² + tr ∇ₓs, the trace from D Jacobian-vector products: cost and memory grow with D·(cost of
  a forward pass), i.e. ~D² for an MLP whose input layer dominates;
* ``ssm`` / ``ssm_vr``: one Jacobian-vector product per projection (``--n_projections``): a constant times DSM;
* ``dsm``: one forward and backward pass.

Each step is compiled ahead of time; ``step_ms`` is the median over ``--repeats`` calls, the four estimators
timed round-robin (the machine is shared). ``peak_mb`` is XLA's own account of the compiled step
(``compiled.memory_analysis()``: arguments + outputs + temporaries − donated buffers), not RSS.
Exact SM is skipped where ``B·D²`` exceeds ``losses.EXACT_SM_MAX_JACOBIAN_ENTRIES`` (the same check that stops
training with ``loss="exact"``); its row then has ``step_ms = null`` and the reason.

Writes ``benchmarks/results/estimators.json``: a list of rows ``{"estimator", "dim", "step_ms", "peak_mb", …}``.
"""

from __future__ import annotations

import sys

import common  # first: puts the repository on sys.path
import jax
import numpy as np
from absl import app, flags

from configs import toy
from ncsn_jax import losses, parallel, train

ESTIMATORS = ("exact", "ssm", "ssm_vr", "dsm")

flags.DEFINE_list("dims", ["2", "16", "64", "256", "784", "3072"], "Data dimensions D.")
flags.DEFINE_list("estimators", list(ESTIMATORS), "Objectives (names of losses.get_loss_fn).")
flags.DEFINE_integer("batch_size", 64, "Batch size B.")
flags.DEFINE_list("hidden", ["256", "256", "256"], "Hidden widths of the MLP.")
flags.DEFINE_float(
    "sigma", 0.01, "The single noise level (DSM's σ; the sliced/exact losses perturb with it)."
)
flags.DEFINE_integer("n_projections", 1, "Projections of SSM / SSM-VR.")
flags.DEFINE_integer("repeats", 7, "Timed calls per estimator (median reported).")
flags.DEFINE_string("out", "estimators", "Name of the JSON file under benchmarks/results/.")
FLAGS = flags.FLAGS


def single_sigma_config(dim: int, loss: str):
    """The toy MLP config made unconditional at one noise level, for ``(dim,)`` vectors."""
    config = toy.get_config()
    config.data.dim = dim
    config.model.sigma_conditioning = "none"
    config.model.hidden_dims = tuple(int(w) for w in FLAGS.hidden)
    config.model.data_std = 1.0
    config.model.sigma_max = config.model.sigma_min = FLAGS.sigma
    config.model.num_scales = 1
    config.training.loss = loss
    config.training.batch_size = FLAGS.batch_size
    config.training.n_projections = FLAGS.n_projections
    config.training.steps_per_call = 1
    return config


def compiled_step(dim: int, loss: str):
    """``(run, peak_bytes)``: ``run()`` performs one train step (state carried across calls) and blocks."""
    trainer = train.Trainer.create(single_sigma_config(dim, loss), (dim,))
    state = trainer.init_state()
    rng = np.random.default_rng(dim)
    batch = parallel.global_batch(
        rng.standard_normal((1, FLAGS.batch_size, dim)).astype(np.float32), trainer.mesh, leading_axes=1
    )
    compiled = trainer.multi_step.lower(state, batch).compile()
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics["loss"])

    run()  # first call: allocation, caches
    return run, common.compiled_peak_bytes(compiled)


def main(argv):
    del argv
    info = common.machine()
    print(f"# {info}", file=sys.stderr)
    rows = []
    for dim in (int(d) for d in FLAGS.dims):
        runs, peaks, skipped = {}, {}, {}
        for name in FLAGS.estimators:
            if name == "exact":
                try:
                    losses.check_exact_affordable((FLAGS.batch_size, dim))
                except ValueError as error:
                    skipped[name] = str(error).split(". Use")[0]
                    continue
            runs[name], peaks[name] = compiled_step(dim, name)
        medians = common.interleaved_medians(runs, FLAGS.repeats)
        for name in FLAGS.estimators:
            row = {
                "estimator": name,
                "dim": dim,
                "step_ms": 1e3 * medians[name] if name in medians else None,
                "peak_mb": peaks[name] / 2**20 if name in peaks else None,
                "batch_size": FLAGS.batch_size,
                "hidden": [int(w) for w in FLAGS.hidden],
                "repeats": FLAGS.repeats,
            }
            if name in skipped:
                row["skipped"] = skipped[name]
            rows.append({**row, **info})
            print(
                f"D={dim:5d} {name:7s} "
                + (f"{row['step_ms']:9.2f} ms {row['peak_mb']:8.1f} MB" if name in medians else "skipped"),
                file=sys.stderr,
            )
    path = common.write_json(FLAGS.out, rows)

    by_key = {(r["estimator"], r["dim"]): r for r in rows}
    table = []
    for dim in sorted({r["dim"] for r in rows}):
        entry = {"D": dim}
        dsm = by_key.get(("dsm", dim), {}).get("step_ms")
        for name in FLAGS.estimators:
            row = by_key[(name, dim)]
            entry[f"{name} ms"] = row["step_ms"]
            entry[f"{name} MB"] = row["peak_mb"]
            if dsm and row["step_ms"] and name != "dsm":
                entry[f"{name}/dsm"] = row["step_ms"] / dsm
        table.append(entry)
    columns = ["D"] + [
        c for name in FLAGS.estimators for c in (f"{name} ms", f"{name} MB", f"{name}/dsm") if c != "dsm/dsm"
    ]
    print(
        f"# {info['device']}, jax {info['jax']}, {info['date']}, load {info['load_avg_1min']}; "
        f"batch {FLAGS.batch_size}, MLP {FLAGS.hidden}; median of {FLAGS.repeats} interleaved steps"
    )
    common.print_table(table, columns)
    print(f"# wrote {path}")


if __name__ == "__main__":
    app.run(main)
