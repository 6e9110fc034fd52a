"""Quality against cost of the score-matching estimators where the true score is known: Gaussian mixtures.

  python benchmarks/estimator_quality.py                          # D = 2, 10, 30, 100; ~4 min on 2 CPU cores
  python benchmarks/estimator_quality.py --dims=2,100 --steps=500

The sliced score matching paper's claim (Song, Garg, Shi & Ermon 2019, §4-5): SSM-VR matches exact score
matching's quality at a fraction of its cost, and beats DSM, whose small σ trades bias for variance. Here, for
each dimension D, data come from a mixture ``p = Σ_k w_k N(μ_k, I)`` (:mod:`ncsn_jax.mixtures`, K = 3, weights
0.5 / 0.3 / 0.2, means drawn once from N(0, I_D)), fresh samples every step, and the same unconditional MLP
(``models.NoiseConditionalMLP(sigma_conditioning="none")``) is trained from the same initialisation for the same
number of Adam steps by

* ``exact``  — ``losses.exact_score_matching`` on the clean data (D Jacobian-vector products per step);
* ``ssm`` / ``ssm_vr`` — ``losses.sliced_score_matching`` on the clean data (one Rademacher projection);
* ``dsm`` — ``losses.denoising_score_matching`` at one small σ (``--dsm_sigmas``), unweighted.

Reported per (estimator, D): the Fisher divergence ``½ E_p ‖s_θ(x) − ∇ₓ log p(x)‖²`` on 10,000 held-out samples,
the same relative to ``½ E_p ‖∇ₓ log p‖²`` (0 perfect, 1 for a zero score), and the wall time of training
(compilation excluded; the estimators of one D run interleaved in chunks, so load spikes hit them alike).
Writes ``benchmarks/results/estimator_quality.json``.
"""

from __future__ import annotations

import functools
import sys
import time

import common
import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from ncsn_jax import losses, mixtures, models

flags.DEFINE_list("dims", ["2", "10", "30", "100"], "Data dimensions D.")
flags.DEFINE_list("estimators", ["exact", "ssm", "ssm_vr", "dsm"], "Objectives to train with.")
flags.DEFINE_list("dsm_sigmas", ["0.1", "0.01"], "Noise levels of DSM (one run each).")
flags.DEFINE_integer("steps", 2000, "Adam steps per run.")
flags.DEFINE_integer("chunk", 100, "Steps per compiled lax.scan call.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_list("hidden", ["128", "128"], "Hidden widths of the MLP.")
flags.DEFINE_float("lr", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("seed", 0, "Seed of the mixture, the initialisation and the data.")
flags.DEFINE_string("out", "estimator_quality", "Name of the JSON file under benchmarks/results/.")
FLAGS = flags.FLAGS

HELD_OUT = 10_000


def make_mixture(dim: int, key: jax.Array) -> mixtures.GaussianMixture:
    """Three unit-variance components with means ~ N(0, I_D) and weights 0.5 / 0.3 / 0.2."""
    means = jax.random.normal(key, (3, dim))
    return mixtures.GaussianMixture.create(weights=[0.5, 0.3, 0.2], means=means, stds=[1.0, 1.0, 1.0])


def objective(name: str, sigma: float, score_fn, x: jax.Array, key: jax.Array) -> jax.Array:
    """The scalar loss of estimator ``name`` on the clean batch ``x`` (DSM perturbs it with ``sigma``)."""
    if name == "exact":
        return losses.exact_score_matching(score_fn, x)[0]
    if name in ("ssm", "ssm_vr"):
        return losses.sliced_score_matching(score_fn, x, key, variance_reduction=name == "ssm_vr")[0]
    if name == "dsm":
        conditional = lambda x, sigma: score_fn(x)  # noqa: E731  (one fixed level: the network ignores σ)
        return losses.denoising_score_matching(conditional, x, jnp.array([sigma]), key, anneal_power=0.0)[0]
    raise ValueError(f"Unknown estimator {name!r}.")


def make_trainer(name: str, sigma: float, model, mixture, optimizer):
    """A jitted ``(params, opt_state, key) -> (params, opt_state)`` running ``--chunk`` Adam steps on fresh
    mixture samples."""

    def step(carry, key):
        params, opt_state = carry
        data_key, loss_key = jax.random.split(key)
        x = mixture.sample(data_key, FLAGS.batch_size)
        grads = jax.grad(
            lambda p: objective(name, sigma, lambda y: model.apply({"params": p}, y), x, loss_key)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def run(params, opt_state, key):
        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), jax.random.split(key, FLAGS.chunk))
        return params, opt_state

    return run


def fisher_divergence(model, params, mixture, x) -> tuple[float, float]:
    """``½ E‖s_θ − ∇log p‖²`` and its ratio to ``½ E‖∇log p‖²`` on the samples ``x``."""
    true = mixture.score(x)
    error = 0.5 * jnp.mean(jnp.sum((model.apply({"params": params}, x) - true) ** 2, axis=-1))
    scale = 0.5 * jnp.mean(jnp.sum(true**2, axis=-1))
    return float(error), float(error / scale)


def run_dimension(dim: int, info: dict) -> list[dict]:
    key = jax.random.PRNGKey(FLAGS.seed)
    mixture_key, init_key, train_key, test_key = jax.random.split(jax.random.fold_in(key, dim), 4)
    mixture = make_mixture(dim, mixture_key)
    x_test = mixture.sample(test_key, HELD_OUT)
    model = models.NoiseConditionalMLP(
        hidden_dims=tuple(int(w) for w in FLAGS.hidden), sigma_conditioning="none"
    )
    initial = models.init_variables(model, init_key, (1, dim))["params"]
    optimizer = optax.adam(FLAGS.lr)
    runs = [(name, None) for name in FLAGS.estimators if name != "dsm"]
    if "dsm" in FLAGS.estimators:
        runs += [("dsm", float(s)) for s in FLAGS.dsm_sigmas]

    states, trainers, seconds = {}, {}, {}
    for name, sigma in runs:
        run = make_trainer(name, sigma or 0.0, model, mixture, optimizer)
        params = jax.tree.map(jnp.copy, initial)
        # Compile (and check the budget) on copies; the timed runs start from the shared initialisation.
        jax.block_until_ready(run(jax.tree.map(jnp.copy, params), optimizer.init(params), train_key))
        states[(name, sigma)] = (params, optimizer.init(params))
        trainers[(name, sigma)] = run
        seconds[(name, sigma)] = 0.0
    for chunk in range(FLAGS.steps // FLAGS.chunk):
        chunk_key = jax.random.fold_in(train_key, chunk)
        for run_id, run in trainers.items():  # interleaved: one chunk of each estimator in turn
            start = time.perf_counter()
            states[run_id] = jax.block_until_ready(run(*states[run_id], chunk_key))
            seconds[run_id] += time.perf_counter() - start

    rows = []
    for (name, sigma), (params, _) in states.items():
        fd, relative = fisher_divergence(model, params, mixture, x_test)
        rows.append(
            {
                "estimator": name,
                "dim": dim,
                "dsm_sigma": sigma,
                "fisher_divergence": fd,
                "relative_fisher_divergence": relative,
                "train_s": seconds[(name, sigma)],
                "step_ms": 1e3 * seconds[(name, sigma)] / FLAGS.steps,
                "steps": FLAGS.steps,
                "batch_size": FLAGS.batch_size,
                "hidden": [int(w) for w in FLAGS.hidden],
                **info,
            }
        )
        label = name if sigma is None else f"{name}(σ={sigma:g})"
        print(
            f"D={dim:4d} {label:14s} FD {fd:10.4g} relative {relative:8.4f} {seconds[(name, sigma)]:7.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return rows


def main(argv):
    del argv
    info = common.machine()
    print(f"# {info}", file=sys.stderr)
    rows = [row for dim in (int(d) for d in FLAGS.dims) for row in run_dimension(dim, info)]
    path = common.write_json(FLAGS.out, rows)
    table = [
        {
            "D": r["dim"],
            "estimator": r["estimator"] + ("" if r["dsm_sigma"] is None else f" σ={r['dsm_sigma']:g}"),
            "Fisher div.": r["fisher_divergence"],
            "relative": r["relative_fisher_divergence"],
            "train s": r["train_s"],
            "ms/step": r["step_ms"],
        }
        for r in rows
    ]
    print(
        f"# {info['device']}, jax {info['jax']}, {info['date']}, load {info['load_avg_1min']}; "
        f"{FLAGS.steps} Adam steps (lr {FLAGS.lr}), batch {FLAGS.batch_size}, MLP {FLAGS.hidden}; "
        f"Fisher divergence on {HELD_OUT} held-out samples"
    )
    common.print_table(table, ["D", "estimator", "Fisher div.", "relative", "train s", "ms/step"])
    print(f"# wrote {path}")


if __name__ == "__main__":
    app.run(main)
