"""Deterministic, stateless input pipelines: TFDS images, scikit-learn digits and NCSN's 2-D toy mixture.

Every source is created by :func:`create_dataset` and answers one question: *what is the batch of global
step t?* There is no iterator and no hidden state, so a resumed run, a run on a different number of
hosts and a run that asks for the same step twice all see exactly the same data.

Determinism contract (batch = f(seed, step))
--------------------------------------------
For a finite dataset of N examples, global step ``t`` with global batch size ``B`` covers positions
``[t·B, (t+1)·B)`` of an infinite stream made of shuffled epochs: position ``q`` lies in epoch
``e = q // N`` at offset ``q % N`` and holds example ``π_e[q % N]``, where the permutation ``π_e`` is
drawn by ``np.random.default_rng([seed, PERMUTATION_STREAM, e])``. Every example therefore appears
exactly once per epoch, and batches simply run across epoch boundaries (nothing is dropped).

Augmentations of step ``t`` come from one counter-based generator, ``np.random.Philox(np.random.
SeedSequence([seed, AUGMENT_STREAM, t]))``, whose 64-bit outputs ``r_q`` are laid out over the *global*
batch of ``B`` examples of ``D`` values each: with ``u_q = (r_q >> 40)·2⁻²⁴ ∈ [0, 1)``, row ``j`` flips iff
``u_j < ½``, and its dequantization noise is ``u_{B + j·D + i}`` for its values ``i = 0 … D−1`` in
``(H, W, C)`` order. A process jumps the counter straight to its own rows (``Philox.advance``): its cost is
proportional to the *local* batch, with one generator per step rather than one per example (which cost
~50 µs each, 6 ms per batch of 128, a tenth of the digits default's train step), a host of a large pod does
not pay for the other hosts' examples, and the result cannot depend on the process count.

The 2-D toy mixture is an infinite generative source: the global batch of step ``t`` is drawn by
``np.random.default_rng([seed, TOY_STREAM, split_id, t])`` and then sliced per process.

Every stream carries its own tag (``*_STREAM``), so permutations, augmentations and toy samples never
share random numbers even when an epoch number equals a step number.

Sharding contract (multi-host)
------------------------------
``get_batch(t, B, process_index=p, process_count=P)`` returns rows ``[p·B/P, (p+1)·B/P)`` of the global
batch of step ``t``. Concatenating the slices of all processes gives, bit for bit, the batch a single
process would get. ``B % P != 0`` is a ``ValueError``.

Data space
----------
Images are float32 ``(H, W, C)`` in ``[0, 1]``: ``v / 255`` for uint8 pixels ``v``, or, with
``config.data.uniform_dequantization``, ``(v + u) / 256`` with ``u ~ U[0, 1)`` as in the reference code,
which puts each value in the half-open bin ``[v/256, (v+1)/256)``. The 8×8 digits take values
``v ∈ {0, …, 16}``: ``v / 16``, or ``(v + u) / 17`` dequantized. ``config.data.random_flip`` mirrors an
image horizontally with probability 1/2. The toy mixture is returned in its own units, shape ``(2,)``.

Preparing TFDS datasets
-----------------------
CIFAR-10, MNIST and CelebA are read with ``tfds.data_source`` (random access, *no TensorFlow needed to
read*), which requires the ArrayRecord file format. Building a dataset once does need TensorFlow (the
``tfds`` CLI imports it and TFDS's builders encode images with it), plus ``importlib_resources``, which
TFDS's download code imports without declaring it; e.g. in a separate virtual environment::

    pip install tensorflow-cpu importlib_resources && \\
        tfds build cifar10 --data_dir=~/tensorflow_datasets --file_format=array_record

(``mnist`` and ``celeb_a`` likewise; CelebA's Google-Drive download often hits a quota, in which case the
files go in a folder passed as ``--manual_dir``.) Items are read one index at a time (``ds[i]``) on a small
thread pool, then preprocessed as in the reference code: CelebA is center-cropped to 140×140 with
torchvision's offsets and resized (PIL bilinear) to ``config.data.image_size``; other datasets are resized
only when ``image_size`` differs from their native size. The scikit-learn digits need no preparation; their
fixed train/test split is described in :func:`digits_split_indices`.

``data_dir`` is the ``data_dir`` argument of :func:`create_dataset`, else ``config.data.data_dir``, else
TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). A dataset that is not prepared raises
:class:`ncsn_jax.errors.DatasetNotPreparedError` whose message is the exact command for that dataset and
folder.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import logging as python_logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import chex
import ml_collections
import numpy as np
from PIL import Image

from ncsn_jax import errors, mixtures

__all__ = [
    "DATASET_NAMES",
    "DataSource",
    "FiniteImageSource",
    "ToyMixtureSource",
    "center_crop",
    "create_dataset",
    "digits_split_indices",
    "resize_image",
]

DATASET_NAMES: tuple[str, ...] = ("toy", "digits", "cifar10", "mnist", "celeba")

# Tags that separate the random streams derived from one seed (see the module docstring).
PERMUTATION_STREAM = 0
AUGMENT_STREAM = 1
TOY_STREAM = 2
SAMPLE_STREAM = 3

_TOY_SPLIT_IDS = {"train": 0, "test": 1, "validation": 2}

# The digits split is fixed once and for all (it does not depend on config.seed): a permutation of the
# 1,797 images from this seed, whose first 90% (sorted) are "train" and the rest (sorted) "test".
DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_FRACTION = 0.9

# torchvision.transforms.CenterCrop(140) then Resize(image_size), as in the NCSN / NCSNv2 CelebA code.
CELEBA_CROP_SIZE = 140

# TFDS name, native image side, channels.
_TFDS_DATASETS: dict[str, tuple[str, int, int]] = {
    "cifar10": ("cifar10", 32, 3),
    "mnist": ("mnist", 28, 1),
    "celeba": ("celeb_a", CELEBA_CROP_SIZE, 3),
}
_DEFAULT_IMAGE_SIZE = {"digits": 8, "cifar10": 32, "mnist": 28, "celeba": 64}
_NUM_CHANNELS = {"digits": 1, "cifar10": 3, "mnist": 1, "celeba": 3}

_CELEBA_MANUAL_FILES = (
    "img_align_celeba.zip",
    "list_eval_partition.txt",
    "list_attr_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "identity_CelebA.txt",
)


# ----------------------------------------------------------------------------------------------------
# Sharding and stream helpers.


def _local_rows(global_batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """Rows ``[p·B/P, (p+1)·B/P)`` of the global batch that process ``p`` of ``P`` takes."""
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size}.")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"Need 0 <= process_index < process_count, got process_index={process_index}, "
            f"process_count={process_count}."
        )
    if global_batch_size % process_count:
        raise errors.UserError(
            f"The global batch size {global_batch_size} is not divisible by the process count "
            f"{process_count}: every process must get the same number of examples. Choose a "
            f"batch size that is a multiple of {process_count}."
        )
    per_process = global_batch_size // process_count
    return process_index * per_process, (process_index + 1) * per_process


def _philox_uniforms(seed_sequence: np.random.SeedSequence, first: int, n: int) -> np.ndarray:
    """``u_q = (r_q >> 40)·2⁻²⁴`` (float32 in ``[0, 1)``) for ``q = first … first + n − 1``, ``r_q`` the
    q-th 64-bit output of ``Philox(seed_sequence)``: the counter jumps to ``first`` (4 outputs per block)."""
    generator = np.random.Philox(seed_sequence)
    generator.advance(first // 4)
    raw = generator.random_raw(first % 4 + n)[first % 4 :]
    return (raw >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def _check_step(step: int) -> int:
    if int(step) != step or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}.")
    return int(step)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise errors.UserError(f"config.seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


# ----------------------------------------------------------------------------------------------------
# Image preprocessing (deterministic, before augmentation).


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Central ``size × size`` crop of an ``(H, W, C)`` image, with torchvision's ``CenterCrop`` offsets.

    top = round((H − size) / 2), left = round((W − size) / 2); for a 218×178 CelebA image and size 140
    that is rows 39:179 and columns 19:159.
    """
    height, width = image.shape[:2]
    if size > height or size > width:
        raise errors.UserError(f"Cannot crop {size}×{size} out of a {height}×{width} image.")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image[top : top + size, left : left + size]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``(H, W, C)`` image to ``size × size`` with PIL's bilinear filter (antialiased).

    This is what ``torchvision.transforms.Resize`` does to the PIL images of the reference code. uint8 in,
    uint8 out (so dequantization bins keep their meaning); float32 in (the 0..16 digits), float32 out.
    """
    chex.assert_rank(image, 3)
    if image.shape[0] == size and image.shape[1] == size:
        return image
    channels = image.shape[-1]
    if image.dtype == np.uint8:  # PIL modes "L" (one channel) and "RGB"
        pil_image = Image.fromarray(image[..., 0] if channels == 1 else image)
        resized = np.asarray(pil_image.resize((size, size), Image.Resampling.BILINEAR), np.uint8)
        return resized.reshape(size, size, channels)
    if image.dtype == np.float32:
        planes = [Image.fromarray(np.ascontiguousarray(image[..., c])) for c in range(channels)]  # mode "F"
        resized = [np.asarray(p.resize((size, size), Image.Resampling.BILINEAR)) for p in planes]
        return np.stack(resized, axis=-1).astype(np.float32)
    raise TypeError(f"resize_image takes uint8 or float32 images, got {image.dtype}.")


# ----------------------------------------------------------------------------------------------------
# Sources.


class DataSource(abc.ABC):
    """A deterministic source of training examples: the batch of a step is a function of (seed, step).

    Attributes:
      name: the dataset name (one of :data:`DATASET_NAMES`).
      example_shape: ``(H, W, C)`` for images in ``[0, 1]``, ``(D,)`` for vectors.
      num_examples: the size of the split, or ``None`` for an infinite generative source.
    """

    name: str
    example_shape: tuple[int, ...]
    num_examples: int | None

    @abc.abstractmethod
    def get_batch(
        self, step: int, global_batch_size: int, *, process_index: int = 0, process_count: int = 1
    ) -> np.ndarray:
        """This process's rows of the global batch of ``step``.

        Returns:
          float32 array ``(global_batch_size // process_count, *example_shape)`` in data space.
        """

    @abc.abstractmethod
    def sample_examples(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` clean examples (no augmentation), float32 ``(min(n, N), *example_shape)``.

        For NCSNv2's data-driven choice of σ_max (the maximum pairwise distance of training examples).
        """

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, example_shape={self.example_shape}, "
            f"num_examples={self.num_examples})"
        )


class ToyMixtureSource(DataSource):
    """A Gaussian mixture ``Σ_k w_k N(μ_k, s_k² I)`` as an infinite stream of samples.

    By default NCSN's 2-D toy distribution ``0.8·N(5·1, I) + 0.2·N(−5·1, I)``, taken from
    :func:`ncsn_jax.mixtures.ncsn_toy_mixture` (the analytic ground truth of the toy experiments); it is
    sampled here with numpy to keep the pipeline on the host. The global batch of step ``t`` is drawn by
    ``default_rng([seed, TOY_STREAM, split_id, t])`` (component labels with ``rng.choice(K, p=w)``, then
    standard normals), then sliced per process.
    """

    def __init__(self, *, seed: int, split: str = "train", mixture: mixtures.GaussianMixture | None = None):
        if split not in _TOY_SPLIT_IDS:
            raise ValueError(
                f"Unknown split {split!r} for the toy mixture; valid: {', '.join(_TOY_SPLIT_IDS)}."
            )
        mixture = mixtures.ncsn_toy_mixture() if mixture is None else mixture
        self.name = "toy"
        self.seed = _check_seed(seed)
        self.split = split
        weights = np.asarray(mixture.weights, np.float64)
        self.weights = weights / weights.sum()  # float32 weights; rng.choice wants a float64 sum of 1
        self.means = np.asarray(mixture.means, np.float64)
        self.stds = np.asarray(mixture.stds, np.float64)
        self.example_shape = (self.means.shape[1],)
        self.num_examples = None

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        components = rng.choice(len(self.weights), size=n, p=self.weights)
        noise = rng.standard_normal((n, *self.example_shape))
        return (self.means[components] + self.stds[components, None] * noise).astype(np.float32)

    def get_batch(
        self, step: int, global_batch_size: int, *, process_index: int = 0, process_count: int = 1
    ) -> np.ndarray:
        start, stop = _local_rows(global_batch_size, process_index, process_count)
        rng = np.random.default_rng([self.seed, TOY_STREAM, _TOY_SPLIT_IDS[self.split], _check_step(step)])
        batch = self._draw(rng, global_batch_size)[start:stop]
        chex.assert_shape(batch, (stop - start, *self.example_shape))
        return batch

    def sample_examples(self, n: int, seed: int = 0) -> np.ndarray:
        return self._draw(np.random.default_rng([_check_seed(seed), SAMPLE_STREAM]), int(n))


class FiniteImageSource(DataSource):
    """A finite set of quantized images, shuffled per epoch and augmented per example.

    Args:
      name: dataset name.
      read: ``read(indices) -> (n, H, W, C)`` raw images of the split, already cropped/resized; uint8 for
        pixel data, float32 for the 0..16 digits. Must be a pure function of the indices.
      num_examples: size of the split.
      example_shape: ``(H, W, C)``.
      max_value: the largest raw value (255 or 16): clean examples are ``v / max_value``; dequantized ones
        ``(v + u) / (max_value + 1)``.
      seed: ``config.seed``.
      random_flip: mirror horizontally with probability 1/2.
      uniform_dequantization: add ``U[0, 1)`` to the raw value before scaling.
    """

    def __init__(
        self,
        *,
        name: str,
        read: Callable[[np.ndarray], np.ndarray],
        num_examples: int,
        example_shape: tuple[int, int, int],
        max_value: int,
        seed: int,
        random_flip: bool,
        uniform_dequantization: bool,
    ):
        if num_examples < 1:
            raise errors.UserError(f"Dataset {name!r} has no examples.")
        self.name = name
        self.example_shape = tuple(int(d) for d in example_shape)
        self.num_examples = int(num_examples)
        self.max_value = int(max_value)
        self.seed = _check_seed(seed)
        self.random_flip = bool(random_flip)
        self.uniform_dequantization = bool(uniform_dequantization)
        self._read = read
        self._permutations: dict[int, np.ndarray] = {}

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """``π_e``: the order of the split's examples in epoch ``e`` (``default_rng([seed, 0, e])``)."""
        if epoch not in self._permutations:
            if len(self._permutations) >= 4:  # batches touch at most a couple of neighbouring epochs
                self._permutations.pop(next(iter(self._permutations)))
            rng = np.random.default_rng([self.seed, PERMUTATION_STREAM, epoch])
            self._permutations[epoch] = rng.permutation(self.num_examples)
        return self._permutations[epoch]

    def batch_indices(
        self, step: int, global_batch_size: int, *, process_index: int = 0, process_count: int = 1
    ) -> np.ndarray:
        """Split indices of this process's rows of step ``step``: ``π_e[q mod N]`` for positions q."""
        start, stop = _local_rows(global_batch_size, process_index, process_count)
        positions = _check_step(step) * global_batch_size + np.arange(start, stop, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_examples)
        indices = np.empty_like(positions)
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch
            indices[in_epoch] = self.epoch_permutation(int(epoch))[offsets[in_epoch]]
        return indices

    def _read_checked(self, indices: np.ndarray) -> np.ndarray:
        raw = np.asarray(self._read(indices))
        chex.assert_shape(raw, (len(indices), *self.example_shape))
        return raw

    def _augment(self, raw: np.ndarray, step: int, start: int, global_batch_size: int) -> np.ndarray:
        """Flip and dequantize rows ``start …`` of the global batch of ``step`` with the draws laid out in the
        module docstring."""
        seed_sequence = np.random.SeedSequence([self.seed, AUGMENT_STREAM, step])
        n, size = len(raw), int(np.prod(raw.shape[1:]))
        value = raw.astype(np.float64)
        if self.uniform_dequantization:
            levels = self.max_value + 1
            noise = _philox_uniforms(seed_sequence, global_batch_size + start * size, n * size)
            bin_start = value / levels
            value = (value + noise.reshape(raw.shape)) / levels
            # float32 rounding could land on the next bin's edge; keep x in [v/L, (v+1)/L).
            out = np.minimum(
                value.astype(np.float32),
                np.nextafter((bin_start + 1.0 / levels).astype(np.float32), np.float32(0)),
            )
        else:
            out = (value / self.max_value).astype(np.float32)
        if self.random_flip:
            flips = _philox_uniforms(seed_sequence, start, n) < 0.5
            out[flips] = out[flips, :, ::-1]
        return out

    def get_batch(
        self, step: int, global_batch_size: int, *, process_index: int = 0, process_count: int = 1
    ) -> np.ndarray:
        step = _check_step(step)
        start, stop = _local_rows(global_batch_size, process_index, process_count)
        indices = self.batch_indices(
            step, global_batch_size, process_index=process_index, process_count=process_count
        )
        batch = self._augment(self._read_checked(indices), step, start, global_batch_size)
        chex.assert_shape(batch, (stop - start, *self.example_shape))
        return batch

    def raw_images(self, indices: np.ndarray) -> np.ndarray:
        """The split's examples ``indices`` as stored (uint8 for TFDS images, after CelebA's crop and resize;
        float32 0..16 for the digits): no dequantisation, no flip. For Inception statistics."""
        return self._read_checked(np.asarray(indices, np.int64))

    def sample_examples(self, n: int, seed: int = 0) -> np.ndarray:
        n = min(int(n), self.num_examples)
        rng = np.random.default_rng([_check_seed(seed), SAMPLE_STREAM])
        indices = rng.choice(self.num_examples, size=n, replace=False)
        raw = self._read_checked(indices)
        return (raw.astype(np.float64) / self.max_value).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Digits (scikit-learn, no download).


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits().images`` of the digits ``"train"`` / ``"test"`` split.

    A fixed permutation (``default_rng(DIGITS_SPLIT_SEED)``) of the 1,797 images: its first 90% (1,617
    images) are the train split, the other 180 the test split; each split is sorted.
    """
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    total = len(load_digits().images)
    permutation = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(total)
    n_train = int(DIGITS_TRAIN_FRACTION * total)
    if split == "train":
        return np.sort(permutation[:n_train])
    if split == "test":
        return np.sort(permutation[n_train:])
    raise ValueError(f"Unknown split {split!r} for digits; valid: train, test.")


def _create_digits(config: ml_collections.ConfigDict, split: str) -> FiniteImageSource:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    image_size = _image_size(config, "digits")
    chosen = load_digits().images[digits_split_indices(split)].astype(np.float32)[..., None]
    if image_size != 8:
        chosen = np.stack([resize_image(image, image_size) for image in chosen])
    return FiniteImageSource(
        name="digits",
        read=lambda indices: chosen[indices],
        num_examples=len(chosen),
        example_shape=(image_size, image_size, 1),
        max_value=16,
        seed=config.seed,
        random_flip=config.data.get("random_flip", False),
        uniform_dequantization=config.data.get("uniform_dequantization", False),
    )


# ----------------------------------------------------------------------------------------------------
# TFDS datasets (random access through tfds.data_source; no TensorFlow).


def _prepare_command(tfds_name: str, data_dir: str) -> str:
    return (
        f"pip install tensorflow-cpu importlib_resources && "
        f"tfds build {tfds_name} --data_dir={data_dir} --file_format=array_record"
    )


def _not_prepared_message(name: str, tfds_name: str, data_dir: str, problem: str) -> str:
    message = (
        f"Dataset {name!r} (TFDS {tfds_name!r}) {problem} in data_dir {data_dir!r}. ncsn_jax reads "
        "TFDS datasets with tfds.data_source (random access, no TensorFlow at training time), which "
        "needs the ArrayRecord format. Prepare it once with (building needs TensorFlow, e.g. in a "
        "separate virtual environment; on macOS install `tensorflow` instead of `tensorflow-cpu`):\n"
        f"    {_prepare_command(tfds_name, data_dir)}\n"
        "or point config.data.data_dir (or the data_dir argument) at a folder where it is prepared."
    )
    if tfds_name == "celeb_a":
        message += (
            "\nCelebA is downloaded from Google Drive, which often refuses with a quota error. If it "
            f"does, download {', '.join(_CELEBA_MANUAL_FILES)} from the CelebA website "
            "(mmlab.ie.cuhk.edu.hk/projects/CelebA.html) into one folder and add "
            "--manual_dir=<that folder> to the tfds build command."
        )
    return message


class _TFDSReader:
    """Reads split indices from a TFDS random-access source, decoded and preprocessed to uint8 images.

    One item per index (``ds[i]``) on a small thread pool (decoding and record reads release the GIL);
    ``Executor.map`` keeps the order, so the result is a pure function of the indices.
    """

    def __init__(
        self, source: Sequence[Any], preprocess: Callable[[np.ndarray], np.ndarray], num_threads: int = 8
    ):
        self._source = source
        self._preprocess = preprocess
        self._num_threads = num_threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _read_one(self, index: int) -> np.ndarray:
        return self._preprocess(np.asarray(self._source[index]["image"]))

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        indices = [int(i) for i in indices]
        if self._num_threads <= 1 or len(indices) < 2:
            images = [self._read_one(i) for i in indices]
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._num_threads, thread_name_prefix="tfds-read"
                )
            images = list(self._pool.map(self._read_one, indices))
        return np.stack(images)


def data_dir(config: ml_collections.ConfigDict) -> str:
    """The folder TFDS datasets of ``config`` are read from: ``config.data.data_dir`` or TFDS's default."""
    return os.path.expanduser(config.data.data_dir) if config.data.data_dir else _default_data_dir()


def _default_data_dir() -> str:
    """TFDS's default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


class _DropMissingDatasetInfo(python_logging.Filter):
    """TFDS warns "Variant folder … has no dataset_info.json" each time it looks into a folder where the
    dataset is not prepared; the error raised then says what to do instead."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Variant folder")


@contextlib.contextmanager
def _without_missing_dataset_info_warnings() -> Iterator[None]:
    logger, quiet = python_logging.getLogger("absl"), _DropMissingDatasetInfo()  # TFDS logs through absl
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _open_tfds(name: str, tfds_name: str, split: str, data_dir: str) -> Sequence[Any]:
    """``tfds.data_source`` without downloading; failures are diagnosed into actionable errors."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    with _without_missing_dataset_info_warnings():
        return _open_tfds_quietly(tfds, name, tfds_name, split, data_dir)


def _open_tfds_quietly(tfds: Any, name: str, tfds_name: str, split: str, data_dir: str) -> Sequence[Any]:
    try:
        return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # diagnosed below, re-raised if it is none of the known cases
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        if not builder.is_prepared():
            raise errors.DatasetNotPreparedError(
                _not_prepared_message(name, tfds_name, data_dir, "is not prepared")
            ) from error
        if isinstance(error, NotImplementedError):  # prepared, but only in TFRecord (no random access)
            problem = f"is prepared only in the {builder.info.file_format} format at {builder.data_dir}"
            message = _not_prepared_message(name, tfds_name, data_dir, problem)
            raise errors.DatasetNotPreparedError(message) from error
        available = list(builder.info.splits)
        if available and split.split("[")[0] not in available:
            raise ValueError(
                f"Unknown split {split!r} for {name!r}; valid: {', '.join(available)}."
            ) from error
        raise


def _create_tfds(config: ml_collections.ConfigDict, split: str, data_dir: str | None) -> FiniteImageSource:
    name = config.data.dataset
    tfds_name, native_size, channels = _TFDS_DATASETS[name]
    image_size = _image_size(config, name)
    data_dir = os.path.expanduser(data_dir or config.data.get("data_dir") or _default_data_dir())
    source = _open_tfds(name, tfds_name, split, data_dir)

    if name == "celeba":

        def preprocess(image: np.ndarray) -> np.ndarray:
            return resize_image(center_crop(image, CELEBA_CROP_SIZE), image_size)
    elif image_size != native_size:

        def preprocess(image: np.ndarray) -> np.ndarray:
            return resize_image(image, image_size)
    else:

        def preprocess(image: np.ndarray) -> np.ndarray:
            return image

    return FiniteImageSource(
        name=name,
        read=_TFDSReader(source, preprocess),
        num_examples=len(source),
        example_shape=(image_size, image_size, channels),
        max_value=255,
        seed=config.seed,
        random_flip=config.data.get("random_flip", False),
        uniform_dequantization=config.data.get("uniform_dequantization", False),
    )


# ----------------------------------------------------------------------------------------------------
# Entry point.


def _image_size(config: ml_collections.ConfigDict, name: str) -> int:
    image_size = config.data.get("image_size", None) or _DEFAULT_IMAGE_SIZE[name]
    if int(image_size) != image_size or image_size < 1:
        raise errors.UserError(f"config.data.image_size must be a positive integer, got {image_size!r}.")
    if name == "celeba" and image_size > CELEBA_CROP_SIZE:
        raise errors.UserError(
            f"config.data.image_size={image_size} exceeds CelebA's {CELEBA_CROP_SIZE}-pixel crop."
        )
    return int(image_size)


def create_dataset(
    config: ml_collections.ConfigDict, split: str = "train", *, data_dir: str | None = None
) -> DataSource:
    """The data source of ``config.data.dataset`` for ``split``.

    Args:
      config: uses ``config.seed`` and ``config.data.{dataset, image_size, num_channels, random_flip,
        uniform_dequantization, data_dir}`` (missing optional fields: native size, no augmentation).
      split: ``"train"`` / ``"test"`` (TFDS datasets accept any TFDS split, e.g. ``"train[:90%]"``).
      data_dir: TFDS data directory; overrides ``config.data.data_dir``.

    Raises:
      UserError: unknown dataset, or a config inconsistent with the dataset.
      ValueError: unknown split.
      DatasetNotPreparedError: (a UserError) a TFDS dataset is not prepared in ``data_dir`` (message: the
        command).
    """
    name = config.data.dataset
    if name not in DATASET_NAMES:
        raise errors.UserError(
            f"Unknown dataset {name!r} (config.data.dataset); valid: {', '.join(DATASET_NAMES)}."
        )
    if name == "toy":
        return ToyMixtureSource(seed=config.seed, split=split)
    num_channels = config.data.get("num_channels", None)  # None / 0: not set
    if num_channels and num_channels != _NUM_CHANNELS[name]:
        raise errors.UserError(
            f"config.data.num_channels={num_channels} but {name!r} images have "
            f"{_NUM_CHANNELS[name]} channel(s)."
        )
    if name == "digits":
        return _create_digits(config, split)
    return _create_tfds(config, split, data_dir)
