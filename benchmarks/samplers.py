"""Score evaluations and wall time per sampler on NCSN's 2-D toy mixture, at the quality each reaches.

  python benchmarks/samplers.py                      # all samplers, batch 10000, writes results/samplers.json
  python benchmarks/samplers.py --batch_size=2000 --repeats=1

Every sampler uses the analytic noisy score of 0.8·N(5·1, I) + 0.2·N(−5·1, I) (``ncsn_jax.mixtures``), so
the only errors are the sampler's: quality is the weight of the +5·1 mode among the samples (target 0.8,
Monte-Carlo standard error √(0.16/B)) and the mean within-mode standard deviation per coordinate (the clean
modes have 1; annealed Langevin in NCSN's toy setting stops at σ_L = 1, i.e. at √2). Rows:

* ``ald``: annealed Langevin (``sampling.annealed_langevin_dynamics``), NCSN's toy experiment — σ 20 → 1 over
  L = 10 levels, T steps per level, ε = 0.1, uniform start on [−8, 8]².
* ``pc:<predictor>+<corrector>``: ``sde_sampling.pc_sampler`` on ``VESDE(0.01, σ_max, N)`` from the prior.
* ``ode:<solver>``: ``sde_sampling.ode_sampler`` (probability-flow ODE, rtol = atol = tol) from the prior.
  Its weight carries the prior mismatch of N(0, σ_max²I): ≈ 0.777 at σ_max = 50, 0.788 at 100, 0.799 at 10³.

Wall time is the median of ``--repeats`` runs of the compiled sampler (compilation reported separately).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ncsn_jax import mixtures, noise, sampling  # noqa: E402
from ncsn_jax.sde import VESDE  # noqa: E402
from ncsn_jax.sde_sampling import ode_sampler, pc_sampler  # noqa: E402

flags.DEFINE_integer("batch_size", 10_000, "Samples per sampler.")
flags.DEFINE_integer("repeats", 3, "Timed runs per sampler (median reported).")
flags.DEFINE_string("output", os.path.join(REPO, "benchmarks", "results", "samplers.json"), "JSON results.")
FLAGS = flags.FLAGS

MIXTURE = mixtures.ncsn_toy_mixture()
SIGMA_MIN = 0.01


def _quality(samples: np.ndarray) -> tuple[float, float]:
    """(+5·1 mode weight, mean within-mode std per coordinate)."""
    heavy = np.asarray(MIXTURE.nearest_component(jnp.asarray(samples)) == 0)
    stds = [samples[mask].std(axis=0).mean() for mask in (heavy, ~heavy) if mask.sum() > 1]
    return float(heavy.mean()), float(np.mean(stds))


def _time(run: Callable[[], object]) -> tuple[float, float, object]:
    """(compile + first run seconds, median steady-state seconds, output)."""
    start = time.perf_counter()
    out = jax.block_until_ready(run())
    first = time.perf_counter() - start
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), out


def _samplers(batch_size: int):
    """(name, settings, sigma_max, thunk returning (samples, n_evaluations)) for every benchmarked sampler."""
    key = jax.random.key(0)
    rows = []

    uniform = jax.random.uniform(jax.random.key(1), (batch_size, 2), minval=-8.0, maxval=8.0)
    toy_sigmas = noise.geometric_sigmas(20.0, 1.0, 10)
    for steps_each in (100, 30, 10):
        fn = jax.jit(
            lambda x, k, t=steps_each: sampling.annealed_langevin_dynamics(
                MIXTURE.score, x, toy_sigmas, k, n_steps_each=t, step_lr=0.1
            )
        )
        rows.append(
            (
                "ald",
                f"L=10 T={steps_each} eps=0.1",
                20.0,
                lambda fn=fn, t=steps_each: (fn(uniform, key).samples, 10 * t),
            )
        )

    pc_variants = [
        ("reverse_diffusion", "langevin"),
        ("reverse_diffusion", "none"),
        ("ancestral", "none"),
        ("euler_maruyama", "none"),
    ]
    for n_levels in (1000, 300, 100, 30):
        sde = VESDE(SIGMA_MIN, 50.0, n_levels)
        prior = sde.prior_sampling(jax.random.key(2), (batch_size, 2))
        for predictor, corrector in pc_variants:
            fn = jax.jit(
                lambda x, k, sde=sde, p=predictor, c=corrector: pc_sampler(
                    MIXTURE.score, sde, x, k, predictor=p, corrector=c
                )
            )
            rows.append(
                (
                    f"pc:{predictor}+{corrector}",
                    f"N={n_levels} snr=0.16",
                    50.0,
                    lambda fn=fn, x=prior: fn(x, key),
                )
            )

    for sigma_max in (50.0, 1000.0):
        sde = VESDE(SIGMA_MIN, sigma_max, 1000)
        prior = sde.prior_sampling(jax.random.key(3), (batch_size, 2))
        for solver in ("tsit5", "dopri5"):
            for tol in (1e-5, 1e-3):
                fn = jax.jit(
                    lambda x, sde=sde, s=solver, tol=tol: ode_sampler(
                        MIXTURE.score, sde, x, rtol=tol, atol=tol, solver=s
                    )
                )
                rows.append((f"ode:{solver}", f"tol={tol:g}", sigma_max, lambda fn=fn, x=prior: fn(x)))
    return rows


def main(argv):
    del argv
    batch_size = FLAGS.batch_size
    results = []
    header = "| sampler | settings | σ_max | score evals | wall s | compile+first s | +mode weight | within-mode std |"
    print(
        f"# {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}; B={batch_size}"
    )
    print(f"# +mode weight target 0.8, Monte-Carlo s.e. {np.sqrt(0.16 / batch_size):.4f}")
    print(header)
    print("|---|---|---|---|---|---|---|---|")
    for name, settings, sigma_max, run in _samplers(batch_size):
        first, wall, (samples, n_evaluations) = _time(run)
        weight, within_std = _quality(np.asarray(samples, np.float64))
        row = {
            "sampler": name,
            "settings": settings,
            "sigma_max": sigma_max,
            "score_evaluations": int(n_evaluations),
            "wall_s": wall,
            "compile_and_first_run_s": first,
            "heavy_mode_weight": weight,
            "within_mode_std": within_std,
        }
        results.append(row)
        print(
            f"| {name} | {settings} | {sigma_max:g} | {row['score_evaluations']} | {wall:.3f} | {first:.2f} | "
            f"{weight:.3f} | {within_std:.3f} |",
            flush=True,
        )
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(
            {
                "date": datetime.date.today().isoformat(),
                "device": jax.devices()[0].device_kind,
                "cpu_count": os.cpu_count(),
                "load_average": os.getloadavg()[0],
                "jax": jax.__version__,
                "batch_size": batch_size,
                "repeats": FLAGS.repeats,
                "mode_weight_standard_error": float(np.sqrt(0.16 / batch_size)),
                "rows": results,
            },
            f,
            indent=2,
        )
    print(f"# wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
