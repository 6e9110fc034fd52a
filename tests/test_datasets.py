"""Input pipelines: batches are a pure function of (seed, step), shard exactly across processes, visit every
example once per epoch, and augment as the references do. TFDS sources run on ``tfds.testing.mock_data``."""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from ncsn_jax import datasets, errors, mixtures

SEED = 7
MOCK_EXAMPLES = 24  # small split: a few steps make an epoch and batches straddle epoch boundaries

# (our name, TFDS name, config.data overrides)
TFDS_CASES = [
    ("cifar10", "cifar10", {}),
    ("mnist", "mnist", {}),
    ("celeba", "celeb_a", {"image_size": 64}),
]


def make_config(dataset: str, *, seed: int = SEED, **data) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = seed
    config.data = ml_collections.ConfigDict({"dataset": dataset, **data})
    return config


def expected_indices(seed: int, num_examples: int, positions: np.ndarray) -> np.ndarray:
    """The documented order, re-implemented: position q holds π_e[q mod N], π_e from rng([seed, 0, e])."""
    permutation = lambda epoch: np.random.default_rng([seed, 0, epoch]).permutation(num_examples)  # noqa: E731
    return np.array([permutation(q // num_examples)[q % num_examples] for q in positions])


def documented_uniforms(seed: int, step: int, count: int) -> np.ndarray:
    """The documented augmentation draws of step t, all from the start (no counter jump): u_q = (r_q >> 40)
    · 2⁻²⁴ for the first ``count`` outputs r_q of Philox(SeedSequence([seed, 1, t]))."""
    raw = np.random.Philox(np.random.SeedSequence([seed, 1, step])).random_raw(count)
    return (raw >> np.uint64(40)).astype(np.float64) / 2**24


def documented_flip_bits(seed: int, step: int, rows) -> np.ndarray:
    """Row j of step t flips iff u_j < 1/2."""
    rows = np.asarray(list(rows))
    return documented_uniforms(seed, step, int(rows.max()) + 1)[rows] < 0.5


def sorted_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (flattened per example) in lexicographic order: compares multisets of examples."""
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


def concat_process_slices(source, step: int, batch_size: int, process_count: int) -> np.ndarray:
    return np.concatenate(
        [
            source.get_batch(step, batch_size, process_index=p, process_count=process_count)
            for p in range(process_count)
        ]
    )


# ----------------------------------------------------------------------------------------------------
# Digits (scikit-learn): the data is known, so batches are checked value by value.


@pytest.fixture(scope="module")
def digit_images() -> np.ndarray:
    return load_digits().images  # (1797, 8, 8), values 0..16


def test_digits_split_is_a_fixed_partition():
    train, test = datasets.digits_split_indices("train"), datasets.digits_split_indices("test")
    assert (len(train), len(test)) == (1617, 180)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    assert np.array_equal(train, datasets.digits_split_indices("train"))
    source = datasets.create_dataset(make_config("digits"), "test")
    assert source.num_examples == 180
    with pytest.raises(ValueError, match="valid: train, test"):
        datasets.create_dataset(make_config("digits"), "validation")


def test_digits_clean_batches_are_sklearn_images_over_16(digit_images):
    source = datasets.create_dataset(make_config("digits"))
    split_ids = datasets.digits_split_indices("train")
    batch_size = 100  # step 16 covers positions 1600..1699 and straddles the end of epoch 0 (N = 1617)
    for step in (0, 3, 16, 17):
        indices = source.batch_indices(step, batch_size)
        positions = step * batch_size + np.arange(batch_size)
        np.testing.assert_array_equal(indices, expected_indices(SEED, 1617, positions))
        batch = source.get_batch(step, batch_size)
        assert batch.dtype == np.float32 and batch.shape == (batch_size, 8, 8, 1)
        expected = (digit_images[split_ids[indices]] / 16).astype(np.float32)
        np.testing.assert_array_equal(batch[..., 0], expected)


def test_digits_every_example_once_per_epoch(digit_images):
    source = datasets.create_dataset(make_config("digits"))
    batch_size = 231  # 7 steps = one epoch of 1617
    epoch0 = np.concatenate([source.get_batch(t, batch_size) for t in range(7)])
    epoch1 = np.concatenate([source.get_batch(t, batch_size) for t in range(7, 14)])
    split_images = (digit_images[datasets.digits_split_indices("train")] / 16).astype(np.float32)[..., None]
    np.testing.assert_array_equal(sorted_rows(epoch0), sorted_rows(split_images))
    np.testing.assert_array_equal(sorted_rows(epoch1), sorted_rows(split_images))
    assert not np.array_equal(epoch0, epoch1)  # a fresh permutation per epoch
    indices = np.concatenate([source.batch_indices(t, 100) for t in range(17)])  # 1700 positions
    assert np.array_equal(np.sort(indices[:1617]), np.arange(1617))


def test_digits_deterministic_and_process_slices_with_augmentation():
    config = make_config("digits", random_flip=True, uniform_dequantization=True)
    first, second = datasets.create_dataset(config), datasets.create_dataset(config)
    batch = first.get_batch(5, 64)
    np.testing.assert_array_equal(batch, second.get_batch(5, 64))
    for process_count in (2, 4):
        np.testing.assert_array_equal(concat_process_slices(second, 5, 64, process_count), batch)
    assert not np.allclose(batch, first.get_batch(6, 64))
    other_seed = datasets.create_dataset(
        make_config("digits", seed=SEED + 1, random_flip=True, uniform_dequantization=True)
    )
    assert not np.allclose(batch, other_seed.get_batch(5, 64))


def test_digits_dequantization_fills_the_bins_of_17_levels(digit_images):
    source = datasets.create_dataset(make_config("digits", uniform_dequantization=True))
    split_ids = datasets.digits_split_indices("train")
    batch = source.get_batch(2, 256)[..., 0].astype(np.float64)
    v = digit_images[split_ids[source.batch_indices(2, 256)]]
    assert np.all(batch >= v / 17 - 1e-7) and np.all(batch < (v + 1) / 17 + 1e-7)
    offsets = batch * 17 - v  # U[0, 1): mean 1/2, variance 1/12
    assert abs(offsets.mean() - 0.5) < 0.01 and abs(offsets.var() - 1 / 12) < 0.005


def test_digits_flip_and_dequantization_follow_the_documented_draws(digit_images):
    """Row j of step t, re-derived from the documented layout of the step's draws (drawn from the start,
    where the source jumps the counter to each process's rows): flip iff u_j < 1/2, then x = (v + u)/17 with
    u = u_{B + j·64 + i} for pixel i, mirrored with the row."""
    source = datasets.create_dataset(make_config("digits", random_flip=True, uniform_dequantization=True))
    split_ids = datasets.digits_split_indices("train")
    step, batch_size = 3, 42  # process slices start at rows 21, 14, 7, 6: off Philox's 4-output blocks
    u = documented_uniforms(SEED, step, batch_size * 65)
    v = digit_images[split_ids[source.batch_indices(step, batch_size)]]
    expected = (v + u[batch_size:].reshape(batch_size, 8, 8)) / 17
    flips = u[:batch_size] < 0.5
    expected[flips] = expected[flips, :, ::-1]
    for process_count in (1, 2, 3, 6, 7):
        batch = concat_process_slices(source, step, batch_size, process_count)[..., 0]
        np.testing.assert_allclose(batch, expected, rtol=1e-6, atol=0)
    assert 0.3 < flips.mean() < 0.7


def test_digits_resize_to_config_image_size():
    source = datasets.create_dataset(make_config("digits", image_size=16))
    batch = source.get_batch(0, 8)
    assert source.example_shape == (16, 16, 1) and batch.shape == (8, 16, 16, 1)
    assert 0.0 <= batch.min() and batch.max() <= 1.0


def test_sample_examples_are_clean_distinct_and_seeded(digit_images):
    config = make_config("digits", random_flip=True, uniform_dequantization=True)
    source = datasets.create_dataset(config)
    examples = source.sample_examples(50, seed=1)
    split_images = {
        (img / 16).astype(np.float32).tobytes()
        for img in digit_images[datasets.digits_split_indices("train")]
    }
    assert examples.shape == (50, 8, 8, 1)
    assert all(np.ascontiguousarray(x[..., 0]).tobytes() in split_images for x in examples)  # no augmentation
    np.testing.assert_array_equal(examples, source.sample_examples(50, seed=1))
    assert not np.array_equal(examples, source.sample_examples(50, seed=2))
    assert len(source.sample_examples(10_000)) == 1617  # at most the whole split


# ----------------------------------------------------------------------------------------------------
# Toy mixture.


def test_toy_mixture_statistics():
    source = datasets.create_dataset(make_config("toy"))
    assert source.example_shape == (2,) and source.num_examples is None
    n = 10_000
    x = source.get_batch(3, n).astype(np.float64)
    heavy = x[:, 0] > 0  # components are 10 standard deviations apart: the sign tells them apart
    assert np.array_equal(heavy, x[:, 1] > 0)
    assert abs(heavy.mean() - 0.8) < 4 * np.sqrt(0.8 * 0.2 / n)
    for mask, mean in ((heavy, 5.0), (~heavy, -5.0)):
        samples = x[mask]
        m = len(samples)
        np.testing.assert_allclose(samples.mean(0), [mean, mean], atol=4 / np.sqrt(m))
        covariance = np.cov(samples.T)
        np.testing.assert_allclose(np.diag(covariance), [1.0, 1.0], atol=4 * np.sqrt(2 / m))
        assert abs(covariance[0, 1]) < 4 / np.sqrt(m)


def test_toy_uses_the_analytic_mixture_parameters():
    source = datasets.create_dataset(make_config("toy"))
    reference = mixtures.ncsn_toy_mixture()
    np.testing.assert_allclose(source.weights, [0.8, 0.2], rtol=1e-6)
    np.testing.assert_allclose(source.means, [[5, 5], [-5, -5]])
    np.testing.assert_allclose(source.stds, [1, 1])
    np.testing.assert_allclose(source.means, np.asarray(reference.means))


def test_toy_deterministic_and_process_slices():
    config = make_config("toy")
    batch = datasets.create_dataset(config).get_batch(11, 32)
    fresh = datasets.create_dataset(config)
    np.testing.assert_array_equal(batch, fresh.get_batch(11, 32))
    for process_count in (2, 4):
        np.testing.assert_array_equal(concat_process_slices(fresh, 11, 32, process_count), batch)
    assert not np.allclose(batch, fresh.get_batch(12, 32))
    assert not np.allclose(batch, datasets.create_dataset(config, "test").get_batch(11, 32))
    samples = fresh.sample_examples(1000, seed=4)
    np.testing.assert_array_equal(samples, fresh.sample_examples(1000, seed=4))
    assert abs((samples[:, 0] > 0).mean() - 0.8) < 4 * np.sqrt(0.16 / 1000)


# ----------------------------------------------------------------------------------------------------
# TFDS datasets on mock data (tfds.testing.mock_data), checked against a second reader of the same source.


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        yield


def reference_images(name: str, tfds_name: str, indices) -> np.ndarray:
    """uint8 images read straight from tfds.data_source and preprocessed as in the reference code."""
    source = tfds.data_source(tfds_name, split="train")
    images = []
    for i in indices:
        image = np.asarray(source[int(i)]["image"])
        if name == "celeba":  # torchvision CenterCrop(140) on 218×178 → rows 39:179, cols 19:159; Resize(64)
            assert image.shape == (218, 178, 3)
            crop = image[39:179, 19:159]
            image = np.asarray(Image.fromarray(crop).resize((64, 64), Image.Resampling.BILINEAR))
        images.append(image)
    return np.stack(images)


@pytest.mark.parametrize("name,tfds_name,data", TFDS_CASES)
def test_tfds_clean_batches_are_the_source_images(mock_tfds, name, tfds_name, data):
    source = datasets.create_dataset(make_config(name, **data))
    size, channels = {"cifar10": (32, 3), "mnist": (28, 1), "celeba": (64, 3)}[name]
    assert source.example_shape == (size, size, channels) and source.num_examples == MOCK_EXAMPLES
    batch_size = 10  # steps 2 and 4 straddle epoch boundaries
    for step in range(5):
        positions = step * batch_size + np.arange(batch_size)
        indices = expected_indices(SEED, MOCK_EXAMPLES, positions)
        batch = source.get_batch(step, batch_size)
        assert batch.dtype == np.float32 and batch.shape == (batch_size, size, size, channels)
        expected = (reference_images(name, tfds_name, indices) / 255).astype(np.float32)
        np.testing.assert_array_equal(batch, expected)


@pytest.mark.parametrize("name,tfds_name,data", TFDS_CASES)
def test_tfds_every_example_once_per_epoch(mock_tfds, name, tfds_name, data):
    source = datasets.create_dataset(make_config(name, **data))
    epoch = np.concatenate([source.get_batch(t, 8) for t in range(MOCK_EXAMPLES // 8)])
    everything = (reference_images(name, tfds_name, range(MOCK_EXAMPLES)) / 255).astype(np.float32)
    np.testing.assert_array_equal(sorted_rows(epoch), sorted_rows(everything))


@pytest.mark.parametrize("name,tfds_name,data", TFDS_CASES)
def test_tfds_deterministic_and_process_slices(mock_tfds, name, tfds_name, data):
    config = make_config(name, random_flip=True, uniform_dequantization=True, **data)
    batch = datasets.create_dataset(config).get_batch(3, 8)
    fresh = datasets.create_dataset(config)
    np.testing.assert_array_equal(batch, fresh.get_batch(3, 8))
    for process_count in (2, 4):
        np.testing.assert_array_equal(concat_process_slices(fresh, 3, 8, process_count), batch)
    assert not np.allclose(batch, fresh.get_batch(4, 8))
    assert 0.0 <= batch.min() and batch.max() < 1.0


def test_tfds_uniform_dequantization_bins(mock_tfds):
    source = datasets.create_dataset(make_config("cifar10", uniform_dequantization=True))
    steps, batch_size = range(2), 16
    x = np.concatenate([source.get_batch(t, batch_size) for t in steps]).astype(np.float64)
    indices = expected_indices(SEED, MOCK_EXAMPLES, np.arange(len(steps) * batch_size))
    v = reference_images("cifar10", "cifar10", indices).astype(np.float64)
    assert np.all(x >= v / 256) and np.all(x < (v + 1) / 256)  # half-open bins [v/256, (v+1)/256)
    offsets = x * 256 - v  # U[0, 1) on ~98k values: mean 1/2 (i.e. 0.5/256 in data units), variance 1/12
    assert abs(offsets.mean() - 0.5) < 0.01 and abs(offsets.var() - 1 / 12) < 0.005


def test_tfds_random_flips_mirror_half_the_images(mock_tfds):
    source = datasets.create_dataset(make_config("cifar10", random_flip=True))
    batch_size, steps = 10, range(20)
    mirrored = []
    for step in steps:
        batch = source.get_batch(step, batch_size)
        indices = expected_indices(SEED, MOCK_EXAMPLES, step * batch_size + np.arange(batch_size))
        raw = reference_images("cifar10", "cifar10", indices)
        clean = (raw / 255).astype(np.float32)
        same = np.all(batch == clean, axis=(1, 2, 3))
        flipped = np.all(batch == clean[:, :, ::-1], axis=(1, 2, 3))
        assert np.all(same != flipped)  # each image is exactly one of: the source, its mirror image
        np.testing.assert_array_equal(flipped, documented_flip_bits(SEED, step, range(batch_size)))
        mirrored.append(flipped)
    n = batch_size * len(steps)
    assert abs(np.mean(mirrored) - 0.5) < 4 * np.sqrt(0.25 / n)


def test_tfds_resize_and_sample_examples(mock_tfds):
    source = datasets.create_dataset(
        make_config("mnist", image_size=32, random_flip=True, uniform_dequantization=True)
    )
    assert source.example_shape == (32, 32, 1)
    examples = source.sample_examples(10, seed=0)
    everything = reference_images("mnist", "mnist", range(MOCK_EXAMPLES))
    resized = {
        np.asarray(Image.fromarray(img[..., 0]).resize((32, 32), Image.Resampling.BILINEAR)).tobytes()
        for img in everything
    }
    assert examples.shape == (10, 32, 32, 1)
    for x in examples:  # clean: exactly a resized source image over 255
        v = np.round(x[..., 0].astype(np.float64) * 255).astype(np.uint8)
        np.testing.assert_array_equal(x[..., 0], (v / 255).astype(np.float32))
        assert v.tobytes() in resized


# ----------------------------------------------------------------------------------------------------
# Preprocessing helpers (golden numbers from torchvision's CenterCrop rule and bilinear sampling).


def test_center_crop_uses_torchvision_offsets():
    image = np.arange(218 * 178 * 3).reshape(218, 178, 3)
    np.testing.assert_array_equal(datasets.center_crop(image, 140), image[39:179, 19:159])


def test_resize_bilinear_reproduces_a_linear_ramp():
    ramp = np.tile(np.arange(140, dtype=np.uint8), (140, 1))[..., None]  # value = source column
    out = datasets.resize_image(ramp, 64)[..., 0].astype(np.float64)
    assert out.shape == (64, 64)
    centers = (np.arange(64) + 0.5) * 140 / 64 - 0.5  # output pixel centres in source coordinates
    interior = slice(3, 61)  # away from the borders, where the filter window is clipped
    expected = np.broadcast_to(centers[interior], (64, 58))
    np.testing.assert_allclose(out[:, interior], expected, atol=0.5 + 1e-9)  # uint8 rounding
    np.testing.assert_array_equal(datasets.resize_image(ramp, 140), ramp)


# ----------------------------------------------------------------------------------------------------
# Errors.


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(errors.UserError) as info:
        datasets.create_dataset(make_config("imagenet"))
    assert "imagenet" in str(info.value)
    for name in datasets.DATASET_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("dataset", ["toy", "digits"])
def test_batch_not_divisible_by_process_count(dataset):
    source = datasets.create_dataset(make_config(dataset))
    with pytest.raises(errors.UserError, match="10 is not divisible by the process count 4"):
        source.get_batch(0, 10, process_index=0, process_count=4)


def test_num_channels_mismatch():
    with pytest.raises(errors.UserError, match="num_channels=3"):
        datasets.create_dataset(make_config("digits", num_channels=3))


def test_not_prepared_dataset_says_the_prepare_command(tmp_path):
    data_dir = str(tmp_path / "tfds")
    os.makedirs(data_dir)
    with pytest.raises(errors.DatasetNotPreparedError) as info:
        datasets.create_dataset(make_config("cifar10"), data_dir=data_dir)
    message = str(info.value)
    assert isinstance(info.value, errors.UserError)
    assert (
        f"pip install tensorflow-cpu importlib_resources && "
        f"tfds build cifar10 --data_dir={data_dir} --file_format=array_record"
    ) in message
    assert os.listdir(data_dir) == []  # nothing was downloaded or written

    with pytest.raises(errors.DatasetNotPreparedError) as info:  # data_dir from the config
        datasets.create_dataset(make_config("celeba", data_dir=data_dir))
    assert f"tfds build celeb_a --data_dir={data_dir} --file_format=array_record" in str(info.value)
    assert "--manual_dir" in str(info.value)
