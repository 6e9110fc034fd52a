"""The FID Inception-v3 network in Flax: pool3 features and logits, equal to pytorch-fid's.

FID (Heusel et al., 2017) and the Inception score are defined by one network: the 2015 TensorFlow Inception
graph (``inception-2015-12-05``) that the TTUR code and the original IS code load. pytorch-fid ported its
weights (``pt_inception-2015-12-05-6726825d.pth``) onto torchvision's Inception-v3 with the graph's quirks
patched in; this module is that network, layer for layer:

* ``BasicConv2d``: convolution without bias, BatchNorm with its running statistics (ε = 0.001), ReLU;
* ``FIDInceptionA`` / ``FIDInceptionC`` / ``FIDInceptionE_1``: the pooling branch averages over the valid
  pixels of its 3×3 window only (``count_include_pad=False``, as TensorFlow's average pool);
* ``FIDInceptionE_2`` (``Mixed_7c``): max pooling instead of average pooling in the pooling branch;
* input: bilinear resize to 299×299 (``align_corners=False``, no antialiasing, as ``F.interpolate``), then
  ``x ↦ 2x − 1`` from [0, 1] to [−1, 1];
* outputs: ``pool3``, the 2048 global-average-pooled features FID uses, and the 1008-way ``fc`` logits.

:func:`make_feature_fn` is what the evaluation calls: images in, ``(pool3, logits)`` out, batched to one
fixed batch size (one compilation per image size), split over the devices of a mesh. Its logits leave out the
``fc`` bias, as the original Inception-score code (``pool_3 @ softmax/weights``) and torch-fidelity do;
:func:`forward` returns both.

Why not a package. Two JAX FID packages were checked on PyPI (2026-12-05, ``pip download --no-deps``) before
this network was written; neither computes pytorch-fid's features on today's JAX / Flax:

* ``jax-fid`` 0.0.2 (matthias-wright/jax-fid, the latest release): pins ``numpy==1.19.5``, ``Pillow==7.1.2``
  and ``requests==2.23.0`` (no numpy 1.19 builds exist for Python ≥ 3.10), downloads its weights as a pickle
  from a Dropbox link at construction (a re-export, not pytorch-fid's ``.pth``; no offline path, no
  checksum), and does not resize to 299 by default; its layers follow pytorch-fid's, but it cannot be
  installed beside this project's numpy 2 / Python 3.11;
* ``fidjax`` 1.0.1: its source distribution does not build (``setup.py`` reads a ``requirements.txt`` the
  sdist lacks: ``FileNotFoundError``), and there is no wheel.

Weights: ``.npz`` files written by ``python -m ncsn_jax.evaluation.convert_inception`` from pytorch-fid's
``.pth`` (same tensor names and layouts as the state dict, plus a metadata entry recording the source file's
SHA-256). Loading them needs neither PyTorch nor a network connection.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ncsn_jax import errors, parallel
from ncsn_jax.models import convert as convert_lib

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILENAME}"
)
# torch.hub names checkpoints with the first hex digits of their SHA-256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
WEIGHTS_FORMAT = "ncsn_jax.fid_inception/1"
METADATA_KEY = "__metadata__"

INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_LOGITS = 1008
BATCH_NORM_EPS = 1e-3  # torchvision's BasicConv2d
# State-dict entries that are no parameters of the network.
IGNORED_BUFFER_SUFFIXES = ("num_batches_tracked",)

Padding = tuple[int, int]


class InceptionWeightsError(errors.UserError):
    """The FID Inception weights file is missing or is not a converted pytorch-fid checkpoint."""


def how_to_get_weights(out: str) -> str:
    """The one-line instructions for producing the weights file ``out``."""
    return (
        f"Get pytorch-fid's Inception weights ({FID_WEIGHTS_URL}) and convert them once (needs PyTorch: "
        f'pip install "ncsn-jax[torch]"): python -m ncsn_jax.evaluation.convert_inception '
        f"--pth={FID_WEIGHTS_FILENAME} --out={out}"
    )


# ---------------------------------------------------------------------------------------------------------
# The network.


class FrozenBatchNorm(nn.Module):
    """Inference BatchNorm ``y = (x − running_mean) · scale / sqrt(running_var + ε) + bias`` (torch's eval).

    Parameters ``scale``, ``bias``, ``mean``, ``var`` (torch ``weight``, ``bias``, ``running_mean``,
    ``running_var``) all live in the ``params`` collection: the network never updates them.
    """

    eps: float = BATCH_NORM_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        mean = self.param("mean", nn.initializers.zeros, (channels,))
        var = self.param("var", nn.initializers.ones, (channels,))
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


class BasicConv2d(nn.Module):
    """torchvision's ``BasicConv2d``: ``relu(bn(conv(x)))``, the convolution without bias."""

    features: int
    kernel_size: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: Padding = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (pad_h, pad_w) = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=((pad_h, pad_h), (pad_w, pad_w)),
            use_bias=False,
            precision=jax.lax.Precision.HIGHEST,  # float32 (no TF32 on GPUs), as the reference
            name="conv",
        )(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def avg_pool_3x3_valid_pixels(x: jax.Array) -> jax.Array:
    """3×3 average pool, stride 1, padding 1, averaging over the pixels inside the image only."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3_same(x: jax.Array) -> jax.Array:
    """3×3 max pool, stride 1, padding 1 (FIDInceptionE_2's pooling branch)."""
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class FIDInceptionA(nn.Module):
    """35×35 block (``Mixed_5b``–``5d``): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool (valid pixels)→1×1."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch1x1 = BasicConv2d(64, name="branch1x1")(x)
        branch5x5 = BasicConv2d(48, name="branch5x5_1")(x)
        branch5x5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
        branch3x3dbl = BasicConv2d(64, name="branch3x3dbl_1")(x)
        branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = BasicConv2d(self.pool_features, name="branch_pool")(avg_pool_3x3_valid_pixels(x))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """35→17 reduction (``Mixed_6a``): 3×3/2 | 1×1→3×3→3×3/2 | max-pool 3×3/2."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        branch3x3dbl = BasicConv2d(64, name="branch3x3dbl_1")(x)
        branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionC(nn.Module):
    """17×17 block (``Mixed_6b``–``6e``) with factorised 7×7 convolutions; avg-pool over valid pixels."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        branch1x1 = BasicConv2d(192, name="branch1x1")(x)
        branch7x7 = BasicConv2d(c7, name="branch7x7_1")(x)
        branch7x7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
        branch7x7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
        dbl = BasicConv2d(c7, name="branch7x7dbl_1")(x)
        dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
        dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
        dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
        dbl = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
        branch_pool = BasicConv2d(192, name="branch_pool")(avg_pool_3x3_valid_pixels(x))
        return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    """17→8 reduction (``Mixed_7a``): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool 3×3/2."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = BasicConv2d(192, name="branch3x3_1")(x)
        branch3x3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(branch3x3)
        branch7x7x3 = BasicConv2d(192, name="branch7x7x3_1")(x)
        branch7x7x3 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
        branch7x7x3 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
        branch7x7x3 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionE(nn.Module):
    """8×8 block: ``Mixed_7b`` (FIDInceptionE_1, average pool over valid pixels) and ``Mixed_7c``
    (FIDInceptionE_2, max pool) — ``pool`` picks the pooling branch's operation."""

    pool: Callable[[jax.Array], jax.Array]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch1x1 = BasicConv2d(320, name="branch1x1")(x)
        branch3x3 = BasicConv2d(384, name="branch3x3_1")(x)
        branch3x3 = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
                BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
            ],
            axis=-1,
        )
        dbl = BasicConv2d(448, name="branch3x3dbl_1")(x)
        dbl = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
        dbl = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
                BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl),
            ],
            axis=-1,
        )
        branch_pool = BasicConv2d(192, name="branch_pool")(self.pool(x))
        return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


class Classifier(nn.Module):
    """The 1008-way ``fc`` layer: returns ``(x @ kernel + bias, x @ kernel)``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], NUM_LOGITS))
        bias = self.param("bias", nn.initializers.zeros, (NUM_LOGITS,))
        unbiased = jnp.dot(x, kernel, precision=jax.lax.Precision.HIGHEST)
        return unbiased + bias, unbiased


class InceptionOutputs(NamedTuple):
    """``pool3`` (B, 2048); ``logits`` = ``pool3 @ W + b``, ``logits_unbiased`` = ``pool3 @ W`` (B, 1008)."""

    pool3: jax.Array
    logits: jax.Array
    logits_unbiased: jax.Array


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``fid_inception_v3()`` on NHWC inputs already in [−1, 1] (see :func:`preprocess`).

    Submodules carry torchvision's attribute names (``Conv2d_1a_3x3``, ``Mixed_5b``, ``fc``, ...), so each
    parameter's state-dict key is its path joined with dots (:func:`state_dict_key`).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> InceptionOutputs:
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = max_pool_3x3_stride2(x)
        x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = max_pool_3x3_stride2(x)
        x = FIDInceptionA(32, name="Mixed_5b")(x)
        x = FIDInceptionA(64, name="Mixed_5c")(x)
        x = FIDInceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = FIDInceptionC(128, name="Mixed_6b")(x)
        x = FIDInceptionC(160, name="Mixed_6c")(x)
        x = FIDInceptionC(160, name="Mixed_6d")(x)
        x = FIDInceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = FIDInceptionE(avg_pool_3x3_valid_pixels, name="Mixed_7b")(x)
        x = FIDInceptionE(max_pool_3x3_same, name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        logits, logits_unbiased = Classifier(name="fc")(pool3)
        return InceptionOutputs(pool3, logits, logits_unbiased)


def preprocess(images: jax.Array) -> jax.Array:
    """``(B, H, W, C)`` images → ``(B, 299, 299, 3)`` float32 network input in [−1, 1].

    uint8 images are divided by 255 (as ``torchvision.transforms.ToTensor``); floating images must already be
    in [0, 1]. One channel is repeated to three (grayscale shown as RGB). Then pytorch-fid's input pipeline:
    bilinear resize to 299×299 with half-pixel centres and no antialiasing (``F.interpolate(...,
    mode='bilinear', align_corners=False)``), and ``x ↦ 2x − 1``.
    """
    chex.assert_rank(images, 4)
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"Images must have 1 or 3 channels (NHWC), got shape {images.shape}.")
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="linear", antialias=False)
    return 2.0 * x - 1.0


def forward(params: Any, images: jax.Array) -> InceptionOutputs:
    """:func:`preprocess` then :class:`FIDInceptionV3`: a pure function of ``(params, images)`` (jit it)."""
    return FIDInceptionV3().apply({"params": params}, preprocess(images))


# ---------------------------------------------------------------------------------------------------------
# Weights.


def state_dict_key(flax_path: tuple[str, ...]) -> str:
    """pytorch-fid's state-dict key of a parameter: ``("Mixed_5b", "branch1x1", "bn", "mean")`` →
    ``"Mixed_5b.branch1x1.bn.running_mean"``; kernels and BatchNorm scales are torch's ``weight``."""
    *modules, leaf = flax_path
    torch_leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    return ".".join([*modules, torch_leaf.get(leaf, leaf)])


@functools.cache
def abstract_params() -> Any:
    """Shapes and dtypes of the network's parameters (no computation)."""
    shapes = jax.eval_shape(
        FIDInceptionV3().init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
    )
    return shapes["params"]


def params_from_state_dict(state_dict: Mapping[str, Any]) -> Any:
    """The Flax parameters from a pytorch-fid Inception state dict (names → arrays in torch layout).

    Every parameter must be present with its torch shape (conv OIHW and linear (out, in) are transposed);
    ``num_batches_tracked`` buffers are ignored; any other entry is an error.

    Raises:
        UserError: naming every missing, mis-shaped or unexpected entry.
    """
    params, leftover = convert_lib.map_state_dict(state_dict, abstract_params(), key_fn=state_dict_key)
    unexpected = [
        f"{key} {tuple(value.shape)}"
        for key, value in leftover.items()
        if not key.endswith(IGNORED_BUFFER_SUFFIXES)
    ]
    if unexpected:
        raise errors.UserError(
            f"{len(unexpected)} entr{'y' if len(unexpected) == 1 else 'ies'} not used by the FID Inception "
            f"network: {'; '.join(unexpected)}"
        )
    return params


def sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(state_dict: Mapping[str, Any], out: str, source: str | None = None) -> dict[str, Any]:
    """Checks ``state_dict`` against the network and writes it as the ``.npz`` :func:`load_weights` reads.

    The file holds the state dict's parameters under their torch names, in torch layout, as float32, and a
    JSON metadata entry: the format, the source file's name and SHA-256, and whether that is pytorch-fid's
    published checkpoint (``official``; only then are the numbers comparable with published ones).

    Returns:
        The metadata written.
    """
    params_from_state_dict(state_dict)  # raises on missing / mis-shaped / unexpected entries
    arrays = {
        key: np.asarray(convert_lib.to_numpy(value), np.float32)
        for key, value in convert_lib.strip_module_prefix(state_dict).items()
        if not key.endswith(IGNORED_BUFFER_SUFFIXES)
    }
    sha256 = sha256_of_file(source) if source is not None else None
    metadata = {
        "format": WEIGHTS_FORMAT,
        "source": os.path.basename(source) if source is not None else None,
        "source_sha256": sha256,
        "official": bool(sha256 and sha256.startswith(FID_WEIGHTS_SHA256_PREFIX)),
    }
    tmp = f"{out}.tmp-{os.getpid()}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **{METADATA_KEY: np.asarray(json.dumps(metadata))}, **arrays)
    os.replace(tmp, out)
    return metadata


def load_weights(path: str) -> tuple[Any, dict[str, Any]]:
    """Reads a weights file written by the converter; returns ``(params, metadata)``.

    Raises:
        InceptionWeightsError: the file is missing, unreadable, not written by the converter, or its arrays
            do not fit the network; the message says how to produce a valid one.
    """
    if not os.path.isfile(path):
        raise InceptionWeightsError(
            f"FID Inception weights file {path} does not exist. {how_to_get_weights(path)}"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        metadata = json.loads(str(arrays.pop(METADATA_KEY)))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        detail = "no metadata entry" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise InceptionWeightsError(
            f"{path} is not an FID Inception weights file written by ncsn_jax.evaluation.convert_inception "
            f"({detail}). {how_to_get_weights(path)}"
        ) from None
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise InceptionWeightsError(
            f"{path} has format {metadata.get('format')!r}, expected {WEIGHTS_FORMAT!r}. "
            + how_to_get_weights(path)
        )
    try:
        params = params_from_state_dict(arrays)
    except errors.UserError as e:
        raise InceptionWeightsError(
            f"{path} does not fit the FID Inception network: {e}. {how_to_get_weights(path)}"
        ) from None
    return params, metadata


# ---------------------------------------------------------------------------------------------------------
# The batched, sharded feature function.


class InceptionFeatures(NamedTuple):
    """``pool3`` (N, 2048) and ``logits`` (N, 1008, without the fc bias: the Inception-score logits)."""

    pool3: np.ndarray
    logits: np.ndarray


def check_images(images: np.ndarray) -> None:
    """Raises ``ValueError`` unless ``images`` are NHWC, 1 or 3 channels, uint8 or floating in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Expected NHWC images with 1 or 3 channels, got shape {images.shape}.")
    if images.dtype == np.uint8:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"Images must be uint8 in [0, 255] or floating point in [0, 1], got {images.dtype}.")
    if images.size:
        low, high = float(images.min()), float(images.max())
        if not (low >= -1e-3 and high <= 1 + 1e-3):
            raise ValueError(
                f"Floating-point images must lie in [0, 1] (found values in [{low:.3g}, {high:.3g}]); clip "
                "samples to [0, 1] or quantise them to uint8 first."
            )


def feature_fn_from_params(
    params: Any, mesh: Mesh | None = None, batch_size: int = 100
) -> Callable[[np.ndarray], InceptionFeatures]:
    """:func:`make_feature_fn` for parameters already loaded (or random ones, for benchmarks)."""
    mesh = parallel.create_mesh() if mesh is None else mesh
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(
            f"The Inception batch size ({batch_size}) must be a positive multiple of the number of devices "
            f"({mesh.size})."
        )
    params = jax.device_put(params, parallel.replicated(mesh))
    data_sharding = parallel.batch_sharded(mesh)

    @jax.jit
    def compute(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        outputs = forward(params, images)
        return outputs.pool3, outputs.logits_unbiased

    def feature_fn(images: np.ndarray) -> InceptionFeatures:
        images = np.asarray(images)
        check_images(images)
        pending = []
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size]
            rows = chunk.shape[0]
            if rows < batch_size:  # pad the last chunk: one compiled shape
                chunk = np.concatenate([chunk, np.zeros((batch_size - rows, *chunk.shape[1:]), chunk.dtype)])
            pending.append((rows, compute(params, jax.device_put(chunk, data_sharding))))
        pool3 = [parallel.to_host(p)[:rows] for rows, (p, _) in pending]
        logits = [parallel.to_host(lg)[:rows] for rows, (_, lg) in pending]
        if not pending:
            return InceptionFeatures(
                np.zeros((0, POOL3_DIM), np.float32), np.zeros((0, NUM_LOGITS), np.float32)
            )
        return InceptionFeatures(np.concatenate(pool3), np.concatenate(logits))

    return feature_fn


def make_feature_fn(
    weights_path: str, mesh: Mesh | None = None, batch_size: int = 100
) -> Callable[[np.ndarray], InceptionFeatures]:
    """``fn(images) -> InceptionFeatures(pool3 (N, 2048), logits (N, 1008))``, float32 numpy.

    ``images``: ``(N, H, W, C)`` numpy (or host-convertible) array, any N, H, W; uint8 in [0, 255] or
    floating point in [0, 1]; ``C`` = 3, or 1 for grayscale, which is repeated to 3 channels (the network
    only knows RGB: a gray image is the RGB image with three equal channels). They are cut into chunks of
    ``batch_size`` (the last one padded), so the network compiles once per image size; each chunk is split
    over ``mesh``'s data axis (default: all devices), the weights replicated. With several processes, every
    process passes the same images and gets all features back.

    ``logits`` are ``pool3 @ W`` without the fc bias, the logits of the original Inception-score code.

    Raises:
        InceptionWeightsError: ``weights_path`` is missing or invalid (see :func:`load_weights`).
        ValueError: ``batch_size`` is not a multiple of the mesh size.
    """
    params, _ = load_weights(weights_path)
    return feature_fn_from_params(params, mesh, batch_size)
