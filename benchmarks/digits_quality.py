"""Sample quality of a digits configuration on the download-free digits metric, with its train and sample time.

  python benchmarks/digits_quality.py                                    # configs/digits.py as it is
  python benchmarks/digits_quality.py --set=model.ngf=16 --set=training.n_iters=2000 --tag=unet16_2k
  python benchmarks/digits_quality.py --langevin=5:auto,10:auto,20:1e-3  # several (T, ε) on the same weights
  python benchmarks/digits_quality.py --langevin=10:1.2e-3,20:auto --sample_seeds=7,11,12  # 3 draws of each

One run trains in-process (``train.Trainer``: the steps of main.py's loop, without checkpoints or snapshots),
then for each Langevin setting ``T:ε`` (``ε = auto``: NCSNv2's technique 4 for that T) draws ``--num_samples``
samples with the EMA weights (``generate.draw_samples``, the config's sampler otherwise), once per
``--sample_seeds`` entry, and scores them with ``evaluation.digits.digits_report`` against the real held-out
digits. One row per setting and seed is appended to
``benchmarks/results/digits_quality.json``: the digits Inception score and its fraction of the real test
split's, the Fréchet distance with the real bootstrap's mean ± std, the class shares, the nearest-neighbour
ratio and memorised share, the sample range, and the train / sample seconds (in-process, so without main.py's
start-up, compilation of the sampler included). The end-to-end wall time of ``main.py`` itself is
``benchmarks/embedded_defaults.py``.
"""

from __future__ import annotations

import ast
import json
import time

import common  # noqa: F401  (puts the repository on sys.path)
from absl import app, flags

flags.DEFINE_string("config", "digits", "Config module under configs/.")
flags.DEFINE_multi_string("set", [], "Overrides section.field=value (Python literals), repeatable.")
flags.DEFINE_list(
    "langevin", [], "T:eps settings to sample with (eps 'auto': technique 4); default: the config's."
)
flags.DEFINE_integer(
    "num_samples", 1000, "Samples per setting (the metric's references are resampled to this)."
)
flags.DEFINE_list(
    "sample_seeds",
    ["7"],
    "PRNG seeds of the sample draws: one row per setting and seed (the metric's spread).",
)
flags.DEFINE_string("tag", "", "Name of the run in the JSON (default: the overrides).")
flags.DEFINE_string("output", "digits_quality", "benchmarks/results/<output>.json gets the rows appended.")
FLAGS = flags.FLAGS


def _config():
    import importlib  # pylint: disable=import-outside-toplevel

    config = importlib.import_module(f"configs.{FLAGS.config}").get_config()
    for item in FLAGS.set:
        dotted, value = item.split("=", 1)
        section, field = dotted.split(".")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a plain string (a model name, "auto")
        config[section][field] = value
    return config


def _row(config, sigmas, steps_each, step_lr, sample_seed, train_s, sample_s, final_loss, samples, resolved):
    """One JSON row: the run's settings and times, and the digits metric of ``samples``."""
    from ncsn_jax.evaluation import digits  # pylint: disable=import-outside-toplevel

    report = digits.digits_report(samples)
    ours, real_fd = report["samples"], report["real_train_bootstrap_fd"]
    return {
        "tag": FLAGS.tag or " ".join(FLAGS.set) or "defaults",
        "overrides": list(FLAGS.set),
        "model": config.model.name,
        "n_iters": int(config.training.n_iters),
        "sigma_max": float(sigmas[0]),
        "sigma_min": float(sigmas[-1]),
        "num_scales": len(sigmas),
        "n_steps_each": steps_each,
        "step_lr": float(step_lr),
        "sample_seed": sample_seed,
        "train_s": round(train_s, 1),
        "sample_s": round(sample_s, 1),
        "final_loss": final_loss,
        "is_fraction_of_real": round(report["is_fraction_of_real"], 4),
        "inception_score": round(ours["inception_score"], 3),
        "frechet_distance": round(ours["frechet_distance"], 3),
        "real_fd_mean": round(real_fd["mean"], 3),
        "real_fd_std": round(real_fd["std"], 3),
        "min_class_share": ours["min_class_share"],
        "max_class_share": ours["max_class_share"],
        "nn_distance_ratio": round(ours["nn_distance_ratio"], 3),
        "memorized_share": ours["memorized_share"],
        "sample_min": float(samples.min()),
        "sample_max": float(samples.max()),
        "resolved": resolved,
        **common.machine(),
    }


def main(argv):
    del argv
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from ncsn_jax import config_lib, datasets, generate, noise, train  # pylint: disable=import-outside-toplevel

    start = time.perf_counter()
    config = _config()
    dataset = datasets.create_dataset(config, "train")
    config, resolved = config_lib.resolve_auto_fields(config, dataset)
    trainer = train.Trainer.create(config, dataset.example_shape)
    state = trainer.init_state()
    k = config.training.steps_per_call
    for step in range(0, config.training.n_iters, k):
        state, metrics = trainer.multi_step(
            state, trainer.batches(dataset, step, min(k, config.training.n_iters - step))
        )
    final_loss = float(np.mean(np.asarray(metrics["loss"]))) if config.training.n_iters else None
    jax.block_until_ready(state)
    train_s = time.perf_counter() - start

    sigmas = np.asarray(trainer.sigmas)
    settings = [s.split(":") for s in FLAGS.langevin] or [
        (config.sampling.n_steps_each, config.sampling.step_lr)
    ]
    params = state.ema_params if config.sampling.use_ema else state.params
    rows = []
    for steps_each, step_lr in settings:
        steps_each = int(steps_each)
        step_lr = (
            noise.langevin_step_lr(sigmas, int(np.prod(dataset.example_shape)), steps_each)
            if step_lr == "auto"
            else float(step_lr)
        )
        sampling_config = config_lib.apply_resolved(
            config, {"sampling.n_steps_each": steps_each, "sampling.step_lr": float(step_lr)}
        )
        for sample_seed in map(int, FLAGS.sample_seeds):
            begin = time.perf_counter()
            samples = generate.draw_samples(
                sampling_config,
                trainer.model,
                params,
                sigmas,
                jax.random.PRNGKey(sample_seed),
                FLAGS.num_samples,
                dataset.example_shape,
                trainer.mesh,
            ).samples
            sample_s = time.perf_counter() - begin
            rows.append(
                _row(
                    config,
                    sigmas,
                    steps_each,
                    step_lr,
                    sample_seed,
                    train_s,
                    sample_s,
                    final_loss,
                    samples,
                    resolved,
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    common.append_json(FLAGS.output, rows)
    common.print_table(
        rows,
        [
            "tag",
            "n_steps_each",
            "train_s",
            "sample_s",
            "is_fraction_of_real",
            "frechet_distance",
            "real_fd_mean",
            "min_class_share",
            "nn_distance_ratio",
        ],
    )


if __name__ == "__main__":
    app.run(main)
