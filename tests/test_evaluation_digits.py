"""The digits metric: its classifier, its scores against closed forms, its ordering and its memorisation check."""

import os

import numpy as np
import pytest
from PIL import Image

from ncsn_jax import datasets
from ncsn_jax.evaluation import digits


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("classifier"))
    return path, digits.load_or_train_classifier(path)


def test_real_digits_are_the_project_split_in_the_unit_interval():
    images, labels = digits.real_digits("test")
    assert images.shape == (len(datasets.digits_split_indices("test")), 8, 8, 1)
    assert images.min() >= 0.0 and images.max() < 1.0
    assert np.bincount(labels, minlength=10).min() >= 10  # every digit is held out


def test_classifier_is_accurate_on_the_held_out_split_and_cached(classifier):
    path, params = classifier
    images, labels = digits.real_digits("test")
    logits, features = digits.classifier_outputs(params, images)
    assert np.mean(np.argmax(logits, axis=1) == labels) >= 0.95
    assert features.shape == (len(images), 64)
    cached = os.path.join(path, digits.CLASSIFIER_FILENAME)
    assert os.path.getsize(cached) < 200_000
    reloaded = digits.load_or_train_classifier(cached)
    np.testing.assert_array_equal(digits.classifier_outputs(reloaded, images)[0], logits)


def test_a_cached_classifier_of_another_recipe_is_refitted(tmp_path, classifier, monkeypatch):
    _, params = classifier
    path = str(tmp_path / "clf.msgpack")
    monkeypatch.setitem(digits._RECIPE, "version", -1)
    zeros = {layer: {name: np.zeros_like(v) for name, v in p.items()} for layer, p in params.items()}
    monkeypatch.setattr(digits, "_fitted_params", lambda: zeros)
    digits.load_or_train_classifier(path)  # written under recipe version -1
    monkeypatch.undo()
    refitted = digits.load_or_train_classifier(path)
    np.testing.assert_array_equal(refitted["logits"]["kernel"], params["logits"]["kernel"])


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(1)
    queries, reference = rng.random((7, 8, 8, 1)), rng.random((30, 8, 8, 1))
    distances, indices = digits.nearest_neighbours(queries, reference, k=3)
    brute = np.linalg.norm(queries.reshape(7, 1, -1) - reference.reshape(1, 30, -1), axis=-1)
    np.testing.assert_array_equal(indices, np.argsort(brute, axis=1)[:, :3])
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :3], rtol=1e-9)


def test_report_orders_real_digits_above_degraded_digits_above_noise(classifier, tmp_path):
    path, _ = classifier
    train_images, _ = digits.real_digits("train")
    rng = np.random.default_rng(0)
    real = train_images[rng.choice(len(train_images), 500, replace=False)]
    degraded = np.clip(real + 0.3 * rng.normal(size=real.shape), 0, 1).astype(np.float32)
    grid = str(tmp_path / "nn.png")
    real_report = digits.digits_report(real, classifier_path=path, nn_grid_path=grid)
    degraded_report = digits.digits_report(degraded, classifier_path=path)

    real_row, degraded_row, noise_row = (
        real_report["samples"],
        degraded_report["samples"],
        real_report["noise"],
    )
    assert real_row["inception_score"] > degraded_row["inception_score"] > noise_row["inception_score"]
    assert real_row["frechet_distance"] < degraded_row["frechet_distance"] < noise_row["frechet_distance"]
    # Training digits are within the bootstrap spread of the real reference, and all ten classes show.
    fd = real_report["real_train_bootstrap_fd"]
    assert real_row["frechet_distance"] < fd["mean"] + 3 * fd["std"]
    assert real_row["min_class_share"] > 0.05 and real_report["real_test"]["min_class_share"] > 0.05
    assert real_report["is_fraction_of_real"] > 1.0 > degraded_report["is_fraction_of_real"]
    # Training images are copies of themselves (d1 = 0); held-out digits define ratio 1 and are no copies.
    assert (
        real_row["nn_distance_ratio"] == pytest.approx(0.0, abs=1e-6) and real_row["memorized_share"] == 1.0
    )
    assert real_report["real_test"]["nn_distance_ratio"] == pytest.approx(1.0)
    assert real_report["real_test"]["memorized_share"] < 0.02 and noise_row["memorized_share"] == 0.0
    assert degraded_row["nn_distance_ratio"] > 1.0
    # The grid: 16 rows of a sample and its 4 nearest training digits, 8x upscaled with 2-pixel padding.
    assert Image.open(grid).size == (8 * (5 * 10 + 2), 8 * (16 * 10 + 2))
    assert "samples (500)" in digits.format_report(real_report)


@pytest.mark.slow
def test_report_orders_real_digits_above_a_briefly_trained_model_above_noise(tmp_path):
    """A real model (a noise-conditional MLP trained 1,000 steps on the digits, ~25 s on 2 cores) lands
    between the held-out digits and noise on every number of the metric."""
    import jax  # pylint: disable=g-import-not-at-top

    from configs import digits as digits_config  # pylint: disable=g-import-not-at-top
    from ncsn_jax import generate, parallel, train  # pylint: disable=g-import-not-at-top

    config = digits_config.get_config()
    config.model.name = "mlp"
    config.model.hidden_dims = (256, 256, 256)
    config.model.data_std = 0.4
    config.model.nonlinearity = "swish"
    config.training.n_iters = 1000
    config.training.steps_per_call = 50  # an MLP: no convolutions, so the scan over steps is fast on CPU
    config.training.snapshot_sampling = False
    config.sampling.n_steps_each = 10
    workdir = str(tmp_path / "run")
    train.train(config, workdir)
    restored = generate.restore_for_sampling(config, workdir)
    samples = generate.draw_samples(
        restored.config,
        restored.model,
        restored.params,
        restored.sigmas,
        jax.random.PRNGKey(0),
        300,
        restored.example_shape,
        parallel.create_mesh(),
    ).samples
    report = digits.digits_report(samples, classifier_path=workdir)
    model, real, noise = report["samples"], report["real_test"], report["noise"]
    assert real["inception_score"] > model["inception_score"] > noise["inception_score"]
    assert model["inception_score"] > 0.4 * real["inception_score"]  # measured 0.63: readable digits
    assert (
        report["real_train_bootstrap_fd"]["mean"]
        < model["frechet_distance"]
        < 0.25 * noise["frechet_distance"]
    )
    assert model["min_class_share"] > 0.02  # every digit is drawn
    assert model["memorized_share"] < 0.05
