"""Download-free sample quality for the 8×8 digits: a small classifier's Inception score and Fréchet distance,
class shares, and a nearest-neighbour check for memorisation.

FID and the Inception score need an ImageNet network; for scikit-learn's 8×8 digits this module trains its own
judge instead, once, in a few seconds: :class:`DigitsClassifier`, an MLP ``64 → 256 → 64 → 10`` (ReLU), fit on
the digits *training* split (:func:`ncsn_jax.datasets.digits_split_indices`) as the generative models see it
(``[0, 1]``, uniformly dequantized, :func:`real_digits`), to ≈ 99 % accuracy on the held-out test split. The
fit is deterministic (fixed seed, fixed batches) and cached as a ~90 kB file (:func:`load_or_train_classifier`).

With ``p(y|x)`` its softmax and ``f(x)`` its 64 penultimate (ReLU) activations, :func:`digits_report` gives

* the **digits Inception score** ``IS = exp(E_x KL(p(y|x) ‖ p(y)))``, ``p(y) = E_x p(y|x)`` (one split; between
  1 and 10: high when every sample is confidently one digit and all digits are equally common);
* the **Fréchet distance** in feature space to the held-out test digits,
  ``‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2(C₁C₂)^{1/2})`` of the feature means and covariances (as FID);
* the **class shares** of the classifier's predictions (a model that drops a digit shows a zero);
* **memorisation**: ``memorized_share``, the share of samples whose nearest training image (pixel-space L2) is
  less than a third as far as the second nearest, ``d₁/d₂ < 1/3`` (the criterion of Gu et al., 2023, "On
  Memorization in Diffusion Models"; a copy of a training image has ``d₁ ≈ 0``), with the median ``d₁/d₂``;
  and the **nearest-neighbour distance ratio**, the mean ``d₁`` of the samples over that of the held-out test
  digits (about 1: as far from the training set as unseen real digits; a denoised sample, being a posterior
  mean, is smoother than a real digit and sits somewhat closer, so values a little below 1 are not copies).

Each number comes with the same number for the real held-out digits (the ceiling) and for uniform noise (the
floor). The Fréchet reference for real data is FD(training digits, test digits) with the training digits
resampled with replacement to the number of samples (a bootstrap: its mean and standard deviation over
``bootstrap_draws`` draws), so that the finite-sample bias of FD is the same as for the samples.

Samples are clipped to ``[0, 1]`` first (what a saved picture shows; the sampler itself never clips).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ncsn_jax import datasets
from ncsn_jax.evaluation import metrics

__all__ = [
    "CLASSIFIER_FILENAME",
    "DigitsClassifier",
    "classifier_outputs",
    "digits_report",
    "format_report",
    "load_or_train_classifier",
    "nearest_neighbours",
    "real_digits",
    "save_nearest_neighbour_grid",
    "train_classifier",
]

CLASSIFIER_FILENAME = "digits_classifier.msgpack"
NUM_CLASSES = 10

# Everything that determines the classifier's weights; a cached file with another recipe is refitted.
_RECIPE: dict[str, Any] = {
    "version": 1,
    "hidden": 256,
    "features": 64,
    "steps": 600,
    "batch_size": 128,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "seed": 0,
}
_DATA_SEED = 0  # the fixed dequantization draws of the real digits used everywhere here
MEMORIZED_RATIO = 1.0 / 3.0  # d₁/d₂ below this: a memorised sample (Gu et al., 2023)


class DigitsClassifier(nn.Module):
    """MLP ``x (B, 8, 8, 1) ∈ [0, 1] → (logits (B, 10), features (B, features))``, ReLU hidden layers."""

    hidden: int = 256
    features: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x.reshape(x.shape[0], -1).astype(jnp.float32)
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(h))
        features = nn.relu(nn.Dense(self.features, name="features")(h))
        return nn.Dense(NUM_CLASSES, name="logits")(features), features


def _data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "seed": _DATA_SEED,
            "data": {
                "dataset": "digits",
                "image_size": 8,
                "num_channels": 1,
                "random_flip": False,
                "uniform_dequantization": True,
            },
        }
    )


@functools.cache
def _labels(split: str) -> np.ndarray:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    return load_digits().target[datasets.digits_split_indices(split)].astype(np.int32)


@functools.cache
def real_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image of the digits ``split`` once, as the generative models see them, with its label.

    The images are ``datasets.create_dataset``'s batch 0 of the whole split (seed 0): ``(v + u) / 17`` for
    pixel value ``v ∈ {0..16}`` and ``u ~ U[0, 1)``, in a fixed shuffled order. Returns ``(images (N, 8, 8, 1)
    float32, labels (N,) int32)``; arrays are shared, do not modify them.
    """
    source = datasets.create_dataset(_data_config(), split)
    n = source.num_examples
    images = source.get_batch(0, n)
    labels = _labels(split)[source.batch_indices(0, n)]
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def train_classifier() -> dict[str, Any]:
    """Fit :class:`DigitsClassifier` on the training split (AdamW, cosine decay, fixed batches); its params.

    Batch ``t`` is ``create_dataset``'s training batch of step ``t`` (fresh dequantization noise every epoch);
    labels follow the batch's indices. Deterministic: the same params on every call on one platform.
    """
    recipe = _RECIPE
    source = datasets.create_dataset(_data_config(), "train")
    labels = _labels("train")
    steps, batch_size = recipe["steps"], recipe["batch_size"]
    images = np.stack([source.get_batch(t, batch_size) for t in range(steps)])
    targets = np.stack([labels[source.batch_indices(t, batch_size)] for t in range(steps)])

    model = DigitsClassifier(recipe["hidden"], recipe["features"])
    params = model.init(jax.random.PRNGKey(recipe["seed"]), images[0])["params"]
    optimizer = optax.adamw(
        optax.cosine_decay_schedule(recipe["lr"], steps), weight_decay=recipe["weight_decay"]
    )

    def step(carry, batch):
        params, opt_state = carry
        x, y = batch

        def loss_fn(params):
            logits, _ = model.apply({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    fit = jax.jit(lambda params, x, y: jax.lax.scan(step, (params, optimizer.init(params)), (x, y))[0][0])
    return jax.device_get(fit(params, images, targets))


def load_or_train_classifier(path: str | None = None) -> dict[str, Any]:
    """The classifier's params: read from ``path`` if it holds this recipe's fit, else fitted (and written to
    ``path`` when one is given). ``path`` may be a directory (the file is then ``CLASSIFIER_FILENAME`` in it).
    Fits are also kept in memory for the process."""
    if path is not None and os.path.isdir(path):
        path = os.path.join(path, CLASSIFIER_FILENAME)
    if path is not None and os.path.exists(path):
        with open(path, "rb") as f:
            stored = flax.serialization.msgpack_restore(f.read())
        if stored.get("recipe") == _recipe_record():
            return jax.tree.map(np.asarray, stored["params"])
    params = _fitted_params()
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        payload = flax.serialization.msgpack_serialize({"recipe": _recipe_record(), "params": params})
        temporary = f"{path}.tmp{os.getpid()}"
        with open(temporary, "wb") as f:
            f.write(payload)
        os.replace(temporary, path)  # atomic: a concurrent reader sees the old file or the whole new one
    return params


def _recipe_record() -> dict[str, str]:
    return {key: str(value) for key, value in _RECIPE.items()}


@functools.cache
def _fitted_params() -> dict[str, Any]:
    return train_classifier()


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: DigitsClassifier, params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return model.apply({"params": params}, x)


def classifier_outputs(params: Any, images) -> tuple[np.ndarray, np.ndarray]:
    """``(logits (N, 10), features (N, 64))`` of the classifier for ``images (N, 8, 8, 1)`` in ``[0, 1]``."""
    images = jnp.asarray(images, jnp.float32)
    chex.assert_shape(images, (None, 8, 8, 1))
    logits, features = _apply(DigitsClassifier(_RECIPE["hidden"], _RECIPE["features"]), params, images)
    return np.asarray(logits, np.float64), np.asarray(features, np.float64)


# ----------------------------------------------------------------------------------------------------
# Scores (float64; the generic FD and IS of ncsn_jax.evaluation.metrics).


def _statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def _class_shares(logits: np.ndarray) -> np.ndarray:
    return np.bincount(np.argmax(logits, axis=1), minlength=NUM_CLASSES) / len(logits)


# ----------------------------------------------------------------------------------------------------
# Nearest neighbours.


def nearest_neighbours(queries, reference, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean (pixel-space) distances ``(N, k)`` and indices ``(N, k)`` of each query's ``k`` nearest
    reference images, nearest first."""
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    r = np.asarray(reference, np.float64).reshape(len(reference), -1)
    squared = np.sum(q**2, axis=1)[:, None] + np.sum(r**2, axis=1)[None, :] - 2.0 * q @ r.T
    indices = np.argsort(squared, axis=1, kind="stable")[:, :k]
    distances = np.sqrt(np.maximum(np.take_along_axis(squared, indices, axis=1), 0.0))
    return distances, indices


def save_nearest_neighbour_grid(samples, path: str, *, n_rows: int = 16, k: int = 4) -> None:
    """A PNG whose rows are a sample followed by its ``k`` nearest training digits (nearest first)."""
    from ncsn_jax import plotting  # pylint: disable=g-import-not-at-top

    train_images, _ = real_digits("train")
    samples = np.clip(np.asarray(samples, np.float32)[:n_rows], 0.0, 1.0)
    _, indices = nearest_neighbours(samples, train_images, k)
    rows = [np.concatenate([sample[None], train_images[row]]) for sample, row in zip(samples, indices)]
    plotting.save_image_grid(np.concatenate(rows), path, n_cols=k + 1, scale=8)


# ----------------------------------------------------------------------------------------------------
# The report.


def _image_metrics(
    params: Any, images: np.ndarray, test_stats: tuple[np.ndarray, np.ndarray], nn_reference: dict[str, Any]
) -> dict[str, Any]:
    logits, features = classifier_outputs(params, images)
    shares = _class_shares(logits)
    distances, _ = nearest_neighbours(images, nn_reference["train"], k=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        neighbour_ratio = np.where(distances[:, 1] > 0, distances[:, 0] / distances[:, 1], 0.0)
    return {
        "num_images": len(images),
        "inception_score": metrics.inception_score(logits, splits=1)[0],
        "frechet_distance": metrics.frechet_distance(*_statistics(features), *test_stats),
        "class_shares": shares.tolist(),
        "min_class_share": float(shares.min()),
        "max_class_share": float(shares.max()),
        "nn_distance_ratio": float(np.mean(distances[:, 0]) / nn_reference["test_mean"]),
        "memorized_share": float(np.mean(neighbour_ratio < MEMORIZED_RATIO)),
        "median_neighbour_ratio": float(np.median(neighbour_ratio)),
    }


def digits_report(
    samples,
    *,
    classifier_path: str | None = None,
    nn_grid_path: str | None = None,
    seed: int = 0,
    bootstrap_draws: int = 10,
) -> dict[str, Any]:
    """The digits metrics of ``samples`` next to those of the real held-out digits and of uniform noise.

    Args:
      samples: ``(N, 8, 8, 1)`` images in data space (``[0, 1]``; clipped here), ``N ≥ 2``; FD and IS are
        compared between sets of equal size, so evaluate a few hundred samples or more.
      classifier_path: where the classifier is cached (a file or a directory, e.g. the workdir); None: fit
        in memory only.
      nn_grid_path: if given, write :func:`save_nearest_neighbour_grid` of the first samples there.
      seed: seed of the noise images and of the bootstrap draws.
      bootstrap_draws: number of bootstrap resamples of the training digits for the real FD reference.

    Returns:
      A JSON-ready dict: ``samples``, ``real_test`` and ``noise`` rows (each with ``inception_score``,
      ``frechet_distance``, ``class_shares``, ``min_class_share``, ``max_class_share``, ``nn_distance_ratio``,
      ``memorized_share``, ``median_neighbour_ratio``), ``real_train_bootstrap_fd`` ``{mean, std, draws}`` (the real-data FD at the
      samples' size), ``is_fraction_of_real`` (samples' IS / the test digits' IS) and
      ``classifier_test_accuracy``. The ``real_test`` row's ``frechet_distance`` is FD(test, test) = 0 and its
      nearest-neighbour ratio is 1 by definition; its IS and class shares are the ceiling.
    """
    samples = np.clip(np.asarray(samples, np.float32), 0.0, 1.0)
    chex.assert_shape(samples, (None, 8, 8, 1))
    if len(samples) < 2:
        raise ValueError(f"digits_report needs at least 2 samples, got {len(samples)}.")
    params = load_or_train_classifier(classifier_path)
    train_images, _ = real_digits("train")
    test_images, test_labels = real_digits("test")

    test_logits, test_features = classifier_outputs(params, test_images)
    test_stats = _statistics(test_features)
    test_distances, _ = nearest_neighbours(test_images, train_images)
    nn_reference = {"train": train_images, "test_mean": float(np.mean(test_distances))}

    rng = np.random.default_rng([seed, 0x5EED])
    n = len(samples)
    noise = rng.random(samples.shape, dtype=np.float32)
    _, train_features = classifier_outputs(params, train_images)
    bootstrap = [
        metrics.frechet_distance(
            *_statistics(train_features[rng.integers(0, len(train_features), n)]), *test_stats
        )
        for _ in range(bootstrap_draws)
    ]
    report = {
        "samples": _image_metrics(params, samples, test_stats, nn_reference),
        "real_test": _image_metrics(params, test_images, test_stats, nn_reference),
        "noise": _image_metrics(params, noise, test_stats, nn_reference),
        "real_train_bootstrap_fd": {
            "mean": float(np.mean(bootstrap)),
            "std": float(np.std(bootstrap)),
            "draws": bootstrap_draws,
            "size": n,
        },
        "classifier_test_accuracy": float(np.mean(np.argmax(test_logits, axis=1) == test_labels)),
    }
    report["is_fraction_of_real"] = (
        report["samples"]["inception_score"] / report["real_test"]["inception_score"]
    )
    if nn_grid_path is not None:
        save_nearest_neighbour_grid(samples, nn_grid_path)
    return report


def format_report(report: dict[str, Any]) -> str:
    """A small text table of :func:`digits_report`'s rows, for logs and the README."""
    fd = report["real_train_bootstrap_fd"]
    lines = [
        "| images | IS | FD to test | min / max class share | NN distance ratio | memorised |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("samples", "real_test", "noise"):
        row = report[name]
        fd_text = f"{row['frechet_distance']:.3g}"
        if name == "real_test":
            fd_text = f"{fd['mean']:.3g} ± {fd['std']:.2g} (train, n={fd['size']})"
        lines.append(
            f"| {name} ({row['num_images']}) | {row['inception_score']:.3f} | {fd_text} | "
            f"{row['min_class_share']:.3f} / {row['max_class_share']:.3f} | {row['nn_distance_ratio']:.3f} | "
            f"{row['memorized_share']:.3f} |"
        )
    lines.append(
        f"samples' IS = {100 * report['is_fraction_of_real']:.1f}% of the held-out digits'; "
        f"classifier test accuracy {report['classifier_test_accuracy']:.3f}"
    )
    return "\n".join(lines)
