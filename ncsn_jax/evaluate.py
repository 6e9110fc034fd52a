"""Evaluation modes: ``--mode=fid_stats`` (reference statistics of a dataset) and ``--mode=eval``.

``--mode=fid_stats`` runs the FID Inception-v3 (:mod:`ncsn_jax.evaluation.inception`) over the *whole*
training split of ``config.data.dataset``, the uint8 images as stored (no dequantisation, no flips; CelebA
cropped and resized as in training), and writes their pool3 mean and covariance, plus a fixed random subset
of ``config.eval.kid_subset`` feature vectors for KID, to ``config.eval.stats_file`` (default
:func:`default_stats_file`). The file records the dataset, split, image shape, number of images and the
SHA-256 of the Inception weights, and ``--mode=eval`` refuses statistics that do not match.

``--mode=eval`` evaluates the checkpoints chosen by ``config.eval.checkpoints`` (``"latest"``, a step
``"12000"``, a range ``"5000:20000"`` of every checkpoint with ``5000 ≤ step ≤ 20000``, or ``"all"``). For
each one it draws ``config.eval.num_samples`` samples with the EMA weights in rounds of
``config.eval.batch_size`` (the sampler of ``config.sampling``), and writes ``workdir/eval/<step>/``:

* ``round_<r>.npz`` — the samples of round ``r`` (images quantised to uint8 as a PNG file stores them,
  ``round(255·clip(x, 0, 1))``) and, for image datasets with Inception statistics, their pool3 features
  and logits. Round ``r`` of step ``s`` is drawn from :func:`ncsn_jax.rng.eval_key` ``(seed, s, r)``, so a
  round never depends on the others; a round file is written atomically once complete. An eval that is
  killed resumes with the first missing round, and its report is bit-identical to an uninterrupted one.
* ``report.json`` — the metrics of the dataset's kind (below), the held-out loss, and how they were
  computed; the same numbers go to TensorBoard under ``eval/``.

Metrics by dataset:

* CIFAR-10, CelebA, MNIST (needs ``config.eval.inception_weights`` and the statistics file): FID
  (:func:`~ncsn_jax.evaluation.metrics.frechet_distance` of the pool3 statistics), Inception score (10
  splits) and KID against the stored feature subset.
* digits: the download-free digits metric of :mod:`ncsn_jax.evaluation.digits` (a small classifier trained
  once on the training split and cached in the workdir), with the real held-out digits as the ceiling.
* toy: the weight of each mixture mode, MMD² to fresh true samples, and the Fisher divergence of the learned
  score to the analytic noisy score at every σ (:mod:`ncsn_jax.evaluation.toy`).

Every dataset's report also holds the held-out loss: the DSM loss of each noise level on
``config.eval.loss_examples`` test examples with fixed noise (:func:`ncsn_jax.evaluation.held_out.per_level_loss`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from ncsn_jax import (
    checkpointing,
    config_lib,
    datasets,
    errors,
    generate,
    likelihood,
    logging_utils,
    models,
    parallel,
    rng,
    sde,
)
from ncsn_jax.evaluation import digits as digits_eval
from ncsn_jax.evaluation import held_out, inception, metrics
from ncsn_jax.evaluation import toy as toy_eval

INCEPTION_DATASETS = ("cifar10", "celeba", "mnist")
REPORT_FILE = "report.json"
IS_SPLITS = 10  # the Inception score's splits (Salimans et al.; fewer only when there are fewer samples)


# ----------------------------------------------------------------------------------------------------
# Quantisation and checkpoint choice.


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in ``[0, 1]`` as a PNG file stores them: ``round(255 · clip(x, 0, 1))`` (torchvision's
    ``save_image`` rounding), the form every published FID was computed from."""
    return np.floor(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def select_steps(spec: str, available: list[int]) -> list[int]:
    """The checkpoint steps ``config.eval.checkpoints`` names among ``available`` (ascending).

    ``"latest"``: the newest; ``"all"``: every one; ``"12000"``: that step; ``"5000:20000"``: every step in
    the closed range (either end may be left empty).

    Raises:
        UserError: a malformed spec, or no checkpoint of the named step(s).
    """
    spec = str(spec).strip().lower()
    available = sorted(set(int(s) for s in available))
    shown = ", ".join(map(str, available)) or "none"
    if not available:
        raise errors.CheckpointNotFoundError(
            "No checkpoint to evaluate: train first (--mode=train with the same --workdir)."
        )
    if spec == "latest":
        return available[-1:]
    if spec == "all":
        return available
    try:
        if ":" in spec:
            low_text, high_text = spec.split(":", 1)
            low = int(low_text) if low_text else available[0]
            high = int(high_text) if high_text else available[-1]
            chosen = [s for s in available if low <= s <= high]
        else:
            chosen = [s for s in available if s == int(spec)]
    except ValueError:
        raise errors.UserError(
            f"config.eval.checkpoints={spec!r}: use 'latest', 'all', a step such as '12000' or a range such as "
            "'5000:20000'."
        ) from None
    if not chosen:
        raise errors.CheckpointNotFoundError(
            f"config.eval.checkpoints={spec!r} names no checkpoint of this workdir; its steps: {shown}."
        )
    return chosen


# ----------------------------------------------------------------------------------------------------
# Reference statistics (--mode=fid_stats).


def default_stats_file(config: ml_collections.ConfigDict) -> str:
    """``<data_dir>/fid_stats/<dataset>_<size>px_train.npz``: next to the prepared dataset, shared by every
    workdir that trains on it."""
    name = f"{config.data.dataset}_{config.data.image_size}px_train.npz"
    return os.path.join(datasets.data_dir(config), "fid_stats", name)


def stats_file(config: ml_collections.ConfigDict) -> str:
    return config.eval.stats_file or default_stats_file(config)


def _stats_identity(config: ml_collections.ConfigDict, weights_sha256: str) -> dict[str, Any]:
    """What reference statistics must agree on with the samples they are compared with."""
    return {
        "dataset": config.data.dataset,
        "split": "train",
        "image_shape": list(models.example_shape(config)),
        "inception_weights_sha256": weights_sha256,
    }


def _check_inception_dataset(config: ml_collections.ConfigDict, mode: str) -> None:
    if config.data.dataset not in INCEPTION_DATASETS:
        raise errors.UserError(
            f"--mode={mode} computes Inception statistics of natural images ({', '.join(INCEPTION_DATASETS)}); "
            f"config.data.dataset={config.data.dataset!r} is evaluated by --mode=eval with its own "
            "download-free metrics and needs no statistics file."
        )


def _load_inception(config: ml_collections.ConfigDict, mesh) -> tuple[Any, str]:
    """The Inception feature function and the SHA-256 of its weights file (clear error if missing)."""
    path = os.path.expanduser(config.eval.inception_weights)
    params, _ = inception.load_weights(path)
    feature_fn = inception.feature_fn_from_params(params, mesh, batch_size=config.eval.inception_batch_size)
    return feature_fn, inception.sha256_of_file(path)


def compute_fid_stats(config: ml_collections.ConfigDict) -> str:
    """``--mode=fid_stats``: Inception statistics of the whole training split; returns the file written."""
    config_lib.validate(config)
    _check_inception_dataset(config, "fid_stats")
    out = stats_file(config)
    mesh = parallel.create_mesh()
    parallel.check_batch_size(config.eval.inception_batch_size, "config.eval.inception_batch_size")
    feature_fn, sha = _load_inception(config, mesh)
    dataset = datasets.create_dataset(config, "train", data_dir=config.data.data_dir or None)
    stats = metrics.FeatureStatistics(
        inception.POOL3_DIM,
        keep=config.eval.kid_subset,
        seed=rng.KID_SUBSET_SEED,
        metadata={**_stats_identity(config, sha), "num_images": dataset.num_examples},
    )
    chunk = 10 * config.eval.inception_batch_size
    logging_utils.log_devices()
    with logging_utils.progress(total=dataset.num_examples, desc="fid_stats") as bar:
        for start in range(0, dataset.num_examples, chunk):
            indices = np.arange(start, min(start + chunk, dataset.num_examples))
            stats.update(feature_fn(dataset.raw_images(indices)).pool3)
            bar.update(len(indices))
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        stats.save(out)
    logging.info("Wrote the Inception statistics of %d images to %s", stats.count, out)
    return out


def load_reference_stats(config: ml_collections.ConfigDict, weights_sha256: str) -> metrics.FeatureStatistics:
    """The statistics written by ``--mode=fid_stats`` for ``config``'s dataset.

    Raises:
        UserError: no file, not a statistics file, or statistics of another dataset, resolution or
            Inception weights.
    """
    path = stats_file(config)
    command = (
        f"python main.py --config=<this config> --mode=fid_stats --config.data.dataset={config.data.dataset} "
        f"--config.data.image_size={config.data.image_size}"
    )
    if not os.path.isfile(path):
        raise errors.UserError(
            f"No Inception statistics file {path}. Compute it once with: {command} "
            "(or point config.eval.stats_file at one you computed)."
        )
    try:
        stats = metrics.FeatureStatistics.load(path)
    except ValueError as e:
        raise errors.UserError(f"config.eval.stats_file: {e}") from None
    want = _stats_identity(config, weights_sha256)
    have = {key: stats.metadata.get(key) for key in want}
    if have != want:
        differing = "; ".join(
            f"{k}: file {have[k]!r}, this run {want[k]!r}" for k in want if have[k] != want[k]
        )
        raise errors.UserError(
            f"The statistics in {path} do not fit this evaluation ({differing}). Compute matching ones with: "
            f"{command} --config.eval.stats_file=<new file>"
        )
    return stats


# ----------------------------------------------------------------------------------------------------
# --mode=eval.


def metric_kind(config: ml_collections.ConfigDict) -> str:
    """``"inception"`` (natural images), ``"digits"`` or ``"toy"``: which metrics a dataset is judged by."""
    if config.data.dataset in INCEPTION_DATASETS:
        return "inception"
    return config.data.dataset


def round_sizes(num_samples: int, batch_size: int) -> list[int]:
    """Rounds of ``batch_size`` samples, the last one smaller when ``batch_size`` does not divide the total;
    every round a multiple of the device count."""
    for name, value in (("config.eval.num_samples", num_samples), ("config.eval.batch_size", batch_size)):
        if value < 1:
            raise errors.UserError(f"{name}={value} must be positive.")
        parallel.check_batch_size(value, name)
    full, rest = divmod(num_samples, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def _write_npz_atomically(path: str, **arrays: np.ndarray) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _read_round(path: str) -> dict[str, np.ndarray] | None:
    """A finished round's arrays, or None if the file is missing or was cut short."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as e:
        logging.warning("Drawing round %s again: the file cannot be read (%s).", path, e)
        return None


@dataclasses.dataclass
class _Collected:
    """What the metrics need from one checkpoint's rounds, taken in round order and the rest dropped: for
    Inception metrics the streamed pool3 statistics (with the KID reservoir) and the logits (the Inception
    score's splits need every row; 4 kB per sample), otherwise the samples."""

    stats: metrics.FeatureStatistics | None
    logits: list[np.ndarray] = dataclasses.field(default_factory=list)
    samples: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        if self.stats is not None:
            self.stats.update(arrays["pool3"])
            self.logits.append(arrays["logits"])
        else:
            self.samples.append(arrays["samples"])


class _Evaluator:
    """What stays the same over the checkpoints of one ``--mode=eval``: devices, the metric's inputs."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.workdir = workdir
        self.kind = metric_kind(config)
        self.mesh = parallel.create_mesh()
        self.sizes = round_sizes(config.eval.num_samples, config.eval.batch_size)
        self.feature_fn = self.reference = None
        if self.kind == "inception":
            parallel.check_batch_size(config.eval.inception_batch_size, "config.eval.inception_batch_size")
            self.feature_fn, sha = _load_inception(config, self.mesh)
            self.reference = load_reference_stats(config, sha)

    def draw_round(self, restored: generate.Restored, step: int, index: int) -> dict[str, np.ndarray]:
        config = restored.config
        out = generate.draw_samples(
            config,
            restored.model,
            restored.params,
            restored.sigmas,
            rng.eval_key(config.seed, step, index),
            self.sizes[index],
            restored.example_shape,
            self.mesh,
            method=config.sampling.method,
        )
        if self.kind != "inception":
            return {"samples": out.samples.astype(np.float32)}
        images = to_uint8(out.samples)
        features = self.feature_fn(images)
        return {"samples": images, "pool3": features.pool3, "logits": features.logits}

    def collect(self, config: ml_collections.ConfigDict) -> _Collected:
        """An empty :class:`_Collected` for one checkpoint's rounds."""
        stats = None
        if self.kind == "inception":
            stats = metrics.FeatureStatistics(
                inception.POOL3_DIM, keep=config.eval.kid_subset, seed=rng.KID_SUBSET_SEED
            )
        return _Collected(stats)

    def metrics(self, restored: generate.Restored, collected: _Collected, out_dir: str):
        config = restored.config
        if self.kind == "inception":
            generated = collected.stats
            fid = metrics.frechet_distance(
                generated.mean, generated.covariance, self.reference.mean, self.reference.covariance
            )
            logits = np.concatenate(collected.logits)
            is_mean, is_std = metrics.inception_score(logits, splits=min(IS_SPLITS, len(logits)))
            kid_mean, kid_std = metrics.kernel_inception_distance(
                generated.kept, self.reference.kept, seed=rng.KID_SUBSET_SEED
            )
            return {
                "fid": fid,
                "inception_score": is_mean,
                "inception_score_std": is_std,
                "kid": kid_mean,
                "kid_std": kid_std,
                "reference_images": self.reference.count,
            }
        samples = np.concatenate(collected.samples)
        if self.kind == "digits":
            return digits_eval.digits_report(
                samples,
                classifier_path=os.path.join(self.workdir, "eval"),
                nn_grid_path=os.path.join(out_dir, "nearest_neighbours.png"),
                seed=config.seed,
            )
        if self.kind == "toy":
            score_fn = models.get_score_fn(restored.model, {"params": restored.params})
            return toy_eval.toy_report(
                samples, rng.metric_key(config.seed), score_fn=score_fn, sigmas=restored.sigmas
            )
        return {}


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """``--mode=eval`` (see the module docstring); returns the reports written."""
    config_lib.validate(config)
    if config.sampling.method not in config_lib.GENERATIVE_METHODS:
        raise errors.UserError(
            f"--mode=eval draws samples from scratch: config.sampling.method={config.sampling.method!r} is not "
            f"one of {', '.join(config_lib.GENERATIVE_METHODS)}."
        )
    store = checkpointing.CheckpointStore(workdir, read_only=True)
    steps = select_steps(config.eval.checkpoints, store.steps())
    evaluator = _Evaluator(config, workdir)  # every check that needs no sampling, before any writing
    writer = logging_utils.MetricWriter(workdir, enabled=jax.process_index() == 0)
    logging_utils.log_devices()
    reports = []
    for step in steps:
        restored = generate.restore_for_sampling(config, workdir, step)
        out_dir = os.path.join(workdir, "eval", str(step))
        if jax.process_index() == 0:
            os.makedirs(out_dir, exist_ok=True)
        collected = evaluator.collect(restored.config)
        paths = [os.path.join(out_dir, f"round_{i:05d}.npz") for i in range(len(evaluator.sizes))]
        finished = sum(os.path.isfile(path) for path in paths)  # the bar's rate and ETA: drawn rounds only
        with logging_utils.progress(
            total=len(paths),
            initial=finished,
            desc=f"eval {step}",
            unit="round",
            enabled=jax.process_index() == 0,
        ) as bar:
            for index, path in enumerate(paths):
                arrays = _read_round(path)
                if arrays is None:
                    arrays = evaluator.draw_round(restored, step, index)
                    if jax.process_index() == 0:
                        _write_npz_atomically(path, **arrays)
                    bar.update(1)
                collected.add(arrays)
        report = {
            "step": step,
            "num_samples": int(sum(evaluator.sizes)),
            "sampler": _sampler_description(restored.config),
            "metrics": evaluator.metrics(restored, collected, out_dir),
            "held_out_loss": held_out.HeldOutLoss.from_config(
                restored.config, restored.model, restored.sigmas, evaluator.mesh
            )(restored.params),
        }
        if config.eval.likelihood:
            report["likelihood"] = held_out_likelihood(restored, evaluator.mesh)
        if jax.process_index() == 0:
            path = os.path.join(out_dir, REPORT_FILE)
            with open(path, "w") as f:
                json.dump(report, f, indent=2)
            writer.write_eval(
                step,
                {
                    **_scalars(report["metrics"]),
                    "held_out_loss": report["held_out_loss"]["loss"],
                    **_scalars(report.get("likelihood", {}), "likelihood/"),
                },
                {"held_out_loss": np.asarray(report["held_out_loss"]["per_level"])},
                restored.sigmas,
            )
            reports.append(path)
            logging.info("Step %d: %s", step, json.dumps(report["metrics"])[:500])
    writer.close()
    return reports


def _scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) metrics dict, flattened to ``a/b`` names, for TensorBoard."""
    out: dict[str, float] = {}
    for name, value in values.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + name] = float(value)
    return out


def _sampler_description(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The sampler settings a report's numbers depend on."""
    sampling = config.sampling
    fields = {"annealed_langevin": ("n_steps_each", "step_lr", "denoise", "init")}
    fields["pc"] = ("num_steps", "predictor", "corrector", "snr", "n_steps_corrector", "denoise")
    fields["ode"] = ("num_steps", "ode_solver", "ode_rtol", "ode_atol", "ode_eps", "denoise")
    return {"method": sampling.method, **{name: sampling[name] for name in fields[sampling.method]}}


def held_out_likelihood(restored: generate.Restored, mesh) -> dict[str, Any]:
    """Bits/dim (images) or nats per example (vectors) of the test split under the probability-flow ODE.

    Images are uniformly dequantised as :func:`ncsn_jax.likelihood.bits_per_dim` assumes (``(v + u)/K``),
    whatever ``config.data.uniform_dequantization`` says; the ODE runs on the model's own σ range.
    """
    config = restored.config
    sde.check_continuous_sigma(restored.model, "config.eval.likelihood (bits/dim through the ODE)")
    data_config = config.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.data.uniform_dequantization = True
        data_config.data.random_flip = False
    test = datasets.create_dataset(data_config, "test", data_dir=config.data.data_dir or None)
    n = config.eval.likelihood_examples
    if test.num_examples is not None:
        n = min(n, test.num_examples)
    batch = config.eval.likelihood_batch_size
    parallel.check_batch_size(batch, "config.eval.likelihood_batch_size")
    process = sde.VESDE(float(restored.sigmas[-1]), float(restored.sigmas[0]), max(2, len(restored.sigmas)))
    score_fn_of = lambda params: models.get_score_fn(restored.model, {"params": params})

    @jax.jit
    def run(params, x, key):
        return likelihood.log_likelihood(
            score_fn_of(params),
            process,
            x,
            key,
            exact_divergence=config.eval.exact_divergence,
            n_projections=config.eval.n_projections,
        )

    log_p, evaluations = [], 0
    for index, start in enumerate(range(0, n, batch)):
        local = test.get_batch(
            index, batch, process_index=jax.process_index(), process_count=jax.process_count()
        )
        out = run(
            restored.params,
            parallel.global_batch(local, mesh),
            jax.random.fold_in(rng.likelihood_key(config.seed), index),
        )
        log_p.append(parallel.to_host(out.log_p)[: n - start])
        evaluations += int(out.n_evaluations)
    log_p = np.concatenate(log_p).astype(np.float64)
    result = {
        "num_examples": int(len(log_p)),
        "log_p_nats": float(log_p.mean()),
        "score_evaluations": evaluations,
    }
    if len(restored.example_shape) == 3:
        dim = int(np.prod(restored.example_shape))
        bpd = likelihood.bits_per_dim(log_p, dim, num_levels=test.max_value + 1)
        result["bits_per_dim"] = float(np.mean(bpd))
        result["bits_per_dim_std_error"] = float(np.std(bpd) / np.sqrt(len(bpd)))
    return result
