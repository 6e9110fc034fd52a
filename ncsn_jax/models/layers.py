"""Building blocks of the RefineNet score networks of NCSN and NCSNv2, in NHWC.

Each block follows the reference PyTorch code (``ermongroup/ncsn`` ``models/cond_refinenet_dilated.py``,
``ermongroup/ncsnv2`` ``models/layers.py``) operation for operation, and names its submodules as the torch
module names with list indices joined by ``_`` (torch ``adapt_convs.0.1_1_conv`` is Flax
``adapt_convs_0/1_1_conv``), so that :mod:`ncsn_jax.models.convert` maps checkpoints mechanically.

Every block is called ``block(x, y)`` with ``y`` the (B,) noise-level index for the conditional (NCSN)
variants and ``None`` for NCSNv2. ``normalization`` arguments are constructors from
:func:`ncsn_jax.models.normalization.get_normalization`; ``None`` means "no normalisation" (NCSNv2's
RefineNet blocks have none).

Initialisation is PyTorch's default for ``nn.Conv2d``, which both reference repositories keep:
``kaiming_uniform(a=sqrt(5))`` = U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the kernel and the same range for the
bias.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import errors

Dtype = Any
Normalization = Callable[..., nn.Module] | None

# torch.nn.Conv2d's default: kaiming_uniform_(a=sqrt(5)) => gain^2 = 2 / (1 + 5) = 1/3.
torch_default_kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's default bias initialisation."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "elu": jax.nn.elu,
    "relu": jax.nn.relu,
    "lrelu": functools.partial(jax.nn.leaky_relu, negative_slope=0.2),
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """``config.model.nonlinearity``: elu (the papers' choice) | relu | lrelu (slope 0.2) | swish | softplus."""
    key = name.lower()
    if key not in ACTIVATIONS:
        raise errors.UserError(
            f"Unknown nonlinearity {name!r} (config.model.nonlinearity); valid: {', '.join(ACTIVATIONS)}."
        )
    return ACTIVATIONS[key]


# ----------------------------------------------------------------------------------------------------------
# Convolutions and resampling.
# ----------------------------------------------------------------------------------------------------------

Padding = int | tuple[tuple[int, int], tuple[int, int]]


class Conv2d(nn.Module):
    """torch ``nn.Conv2d(stride=1)`` in NHWC: kernel ``(kh, kw, in, out)`` (torch's is ``(out, in, kh, kw)``).

    ``padding`` is torch's symmetric zero padding (default ``dilation * (kernel_size // 2)``, i.e. "same") or
    explicit ``((top, bottom), (left, right))``. Computes in ``dtype``; parameters are ``param_dtype``.
    """

    features: int
    kernel_size: int = 3
    dilation: int = 1
    padding: Padding | None = None
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def explicit_padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.padding is None:
            p = self.dilation * (self.kernel_size // 2)
            return ((p, p), (p, p))
        if isinstance(self.padding, int):
            return ((self.padding, self.padding), (self.padding, self.padding))
        return tuple(tuple(p) for p in self.padding)  # type: ignore[return-value]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        chex.assert_rank(x, 4)
        k = self.kernel_size
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel", torch_default_kernel_init, (k, k, in_features, self.features), self.param_dtype
        )
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(1, 1),
            padding=self.explicit_padding(),
            rhs_dilation=(self.dilation, self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param(
                "bias", torch_default_bias_init(in_features * k * k), (self.features,), self.param_dtype
            )
            y = y + bias.astype(self.dtype)
        return y


def mean_pool_2x2(x: jax.Array) -> jax.Array:
    """The reference's ``(x[::2, ::2] + x[1::2, ::2] + x[::2, 1::2] + x[1::2, 1::2]) / 4`` over H, W."""
    return (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4.0


class ConvMeanPool(nn.Module):
    """Convolution then 2x2 mean pooling (halves H and W).

    ``adjust_padding`` prepends torch's ``ZeroPad2d((1, 0, 1, 0))`` (one extra row on top, column on the
    left); the torch conv then sits at index 1 of an ``nn.Sequential``, hence the Flax name ``conv_1``.
    """

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    adjust_padding: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.kernel_size // 2
        extra = 1 if self.adjust_padding else 0
        conv = Conv2d(
            self.features,
            self.kernel_size,
            padding=((p + extra, p), (p + extra, p)),
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv_1" if self.adjust_padding else "conv",
        )
        return mean_pool_2x2(conv(x))


def align_corners_interpolation_matrix(size_out: int, size_in: int) -> np.ndarray:
    """(size_out, size_in) weights of 1-D linear interpolation with ``align_corners=True`` (as torch)."""
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    src = np.arange(size_out) * scale
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    matrix = np.zeros((size_out, size_in), np.float64)
    np.add.at(matrix, (np.arange(size_out), lo), 1.0 - frac)
    np.add.at(matrix, (np.arange(size_out), hi), frac)
    return matrix


def resize_bilinear_align_corners(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """``F.interpolate(x, size, mode="bilinear", align_corners=True)`` for NHWC ``x`` (separable, exact)."""
    chex.assert_rank(x, 4)
    height, width = int(size[0]), int(size[1])
    if (x.shape[1], x.shape[2]) == (height, width):
        return x  # align_corners=True at equal size is the identity
    rows = jnp.asarray(align_corners_interpolation_matrix(height, x.shape[1]), x.dtype)
    cols = jnp.asarray(align_corners_interpolation_matrix(width, x.shape[2]), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", rows, x)
    return jnp.einsum("pw,bowc->bopc", cols, x)


def avg_pool_5x5(x: jax.Array) -> jax.Array:
    """torch ``AvgPool2d(5, stride=1, padding=2)``: zero padding counted (``count_include_pad=True``)."""
    return nn.avg_pool(x, (5, 5), strides=(1, 1), padding=((2, 2), (2, 2)), count_include_pad=True)


def _max_over_window(x: jax.Array, axis: int, size: int) -> jax.Array:
    """``y[i] = max(x[i − size//2], …, x[i + size//2])`` along ``axis`` (stride 1, −inf beyond the edges), as a
    chain of ``jnp.maximum`` over shifted slices."""
    pad = size // 2
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    padded = jnp.pad(x, widths, constant_values=-jnp.inf)
    n = x.shape[axis]
    return functools.reduce(
        jnp.maximum, [jax.lax.slice_in_dim(padded, i, i + n, axis=axis) for i in range(size)]
    )


def max_pool_5x5(x: jax.Array) -> jax.Array:
    """torch ``MaxPool2d(5, stride=1, padding=2)`` (padding never wins the max) on NHWC ``x``.

    Computed separably, ``max_{5×5} = max_{rows}(max_{columns})``, each as four ``jnp.maximum`` of shifted
    slices: the same values as a 5×5 ``reduce_window`` max, but XLA:CPU differentiates that ``reduce_window``
    through a variadic arg-max ``reduce_window`` that took 11% of NCSNv2's CIFAR-10 train step (2.2 s of 19 s
    at batch 16, one core; benchmarks/README.md), while these elementwise maxima fuse (5× faster forward +
    backward). Where several entries of a window tie for the maximum the gradient is shared among them
    (``jnp.maximum``'s rule) instead of going to the first one (torch).
    """
    return _max_over_window(_max_over_window(x, 1, 5), 2, 5)


# ----------------------------------------------------------------------------------------------------------
# Residual block.
# ----------------------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """Pre-activation residual block ``shortcut(x) + conv2(act(norm2(conv1(act(norm1(x))))))``.

    ``resample="down"`` without dilation: conv1 3x3 keeps the width, conv2 is a 3x3 :class:`ConvMeanPool`,
    the shortcut a 1x1 ConvMeanPool. With ``dilation`` the convolutions (and the 3x3 shortcut) are dilated and
    nothing is downsampled, as in the reference. The shortcut is the identity when the width is kept and
    ``resample`` is None. ``normalization`` is conditional (NCSN) or not (NCSNv2).
    """

    output_dim: int
    normalization: Callable[..., nn.Module]
    act: Callable[[jax.Array], jax.Array] = jax.nn.elu
    resample: str | None = None
    dilation: int | None = None
    adjust_padding: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        chex.assert_rank(x, 4)
        input_dim = x.shape[-1]
        conv = functools.partial(Conv2d, dtype=self.dtype, param_dtype=self.param_dtype)
        dilation = self.dilation or 1
        if self.resample == "down":
            conv1 = conv(input_dim, 3, dilation=dilation, name="conv1")
            if self.dilation is not None:
                conv2 = conv(self.output_dim, 3, dilation=dilation, name="conv2")
                shortcut = conv(self.output_dim, 3, dilation=dilation, name="shortcut")
            else:
                pool_conv = functools.partial(
                    ConvMeanPool,
                    adjust_padding=self.adjust_padding,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                )
                conv2 = pool_conv(self.output_dim, 3, name="conv2")
                shortcut = pool_conv(self.output_dim, 1, name="shortcut")
        elif self.resample is None:
            conv1 = conv(self.output_dim, 3, dilation=dilation, name="conv1")
            conv2 = conv(self.output_dim, 3, dilation=dilation, name="conv2")
            shortcut_kernel = 3 if self.dilation is not None else 1
            shortcut = conv(self.output_dim, shortcut_kernel, dilation=dilation, name="shortcut")
        else:
            raise ValueError(f"Invalid resample {self.resample!r}; valid: None, 'down'.")

        h = self.normalization(name="normalize1")(x, y)
        h = conv1(self.act(h))
        h = self.normalization(name="normalize2")(h, y)
        h = conv2(self.act(h))
        if self.output_dim == input_dim and self.resample is None:
            return x + h
        return shortcut(x) + h


# ----------------------------------------------------------------------------------------------------------
# RefineNet blocks.
# ----------------------------------------------------------------------------------------------------------


class RCUBlock(nn.Module):
    """Residual conv unit: ``n_blocks`` times ``x += (conv . act . norm)^n_stages (x)``; bias-free 3x3 convs."""

    n_blocks: int
    n_stages: int
    act: Callable[[jax.Array], jax.Array] = jax.nn.elu
    normalization: Normalization = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        features = x.shape[-1]
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                if self.normalization is not None:
                    x = self.normalization(name=f"{i}_{j}_norm")(x, y)
                x = self.act(x)
                x = Conv2d(
                    features,
                    3,
                    use_bias=False,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"{i}_{j}_conv",
                )(x)
            x = x + residual
        return x


class CRPBlock(nn.Module):
    """Chained residual pooling: ``x = act(x)``; then ``n_stages`` times ``path = conv(pool(norm(path)))``,
    ``x += path``. 5x5 stride-1 pooling: average in NCSN (``pool="avg"``), max in NCSNv2 (``pool="max"``)."""

    n_stages: int
    pool: str = "max"
    act: Callable[[jax.Array], jax.Array] = jax.nn.elu
    normalization: Normalization = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        pools = {"max": max_pool_5x5, "avg": avg_pool_5x5}
        if self.pool not in pools:
            raise ValueError(f"Invalid pool {self.pool!r}; valid: {', '.join(pools)}.")
        features = x.shape[-1]
        x = self.act(x)
        path = x
        for i in range(self.n_stages):
            if self.normalization is not None:
                path = self.normalization(name=f"norms_{i}")(path, y)
            path = pools[self.pool](path)
            path = Conv2d(
                features, 3, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=f"convs_{i}"
            )(path)
            x = path + x
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: ``sum_i resize(conv_i(norm_i(x_i)), shape)`` (bilinear, align_corners)."""

    features: int
    normalization: Normalization = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array], y: jax.Array | None, shape: Sequence[int]) -> jax.Array:
        total = None
        for i, x in enumerate(xs):
            h = x
            if self.normalization is not None:
                h = self.normalization(name=f"norms_{i}")(h, y)
            h = Conv2d(
                self.features,
                3,
                use_bias=True,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"convs_{i}",
            )(h)
            h = resize_bilinear_align_corners(h, shape)
            total = h if total is None else total + h
        return total


class RefineBlock(nn.Module):
    """RefineNet block: RCU(2, 2) per input -> MSF (if several inputs) -> CRP(2) -> RCU(3 if end else 1, 2)."""

    features: int
    start: bool = False
    end: bool = False
    pool: str = "max"
    act: Callable[[jax.Array], jax.Array] = jax.nn.elu
    normalization: Normalization = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, xs: Sequence[jax.Array], y: jax.Array | None, output_shape: Sequence[int]
    ) -> jax.Array:
        if self.start != (len(xs) == 1):
            raise ValueError(
                f"A start block takes one input, the others two; got {len(xs)} (start={self.start})."
            )
        common = dict(
            act=self.act, normalization=self.normalization, dtype=self.dtype, param_dtype=self.param_dtype
        )
        hs = [RCUBlock(2, 2, name=f"adapt_convs_{i}", **common)(x, y) for i, x in enumerate(xs)]
        if len(hs) > 1:
            h = MSFBlock(
                self.features,
                normalization=self.normalization,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="msf",
            )(hs, y, output_shape)
        else:
            h = hs[0]
        h = CRPBlock(2, pool=self.pool, name="crp", **common)(h, y)
        return RCUBlock(3 if self.end else 1, 2, name="output_convs", **common)(h, y)


# ----------------------------------------------------------------------------------------------------------
# The cascade shared by NCSN and the NCSNv2 family.
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stage:
    """One residual stage (two :class:`ResidualBlock`) and the RefineNet block that consumes its output.

    Widths are multiples of ``ngf``. The first block of a ``downsample`` stage has ``resample="down"`` (which
    halves the resolution only when ``dilation`` is None).
    """

    name: str
    width: int
    downsample: bool
    dilation: int | None
    refine_name: str
    refine_width: int
    adjust_padding: bool = False


def four_dilated_stages(image_size: int) -> tuple[Stage, ...]:
    """The stages of NCSN's CondRefineNetDilated and of NCSNv2 (32 / 64 px): widths 1, 2, 2, 2 × ngf; only
    ``res2`` halves the resolution (``res3``/``res4`` are dilated 2 and 4 instead). The references pad
    ``res4``'s ConvMeanPool for 28 px inputs; the block is dilated, so this changes nothing."""
    return (
        Stage("res1", 1, downsample=False, dilation=None, refine_name="refine4", refine_width=1),
        Stage("res2", 2, downsample=True, dilation=None, refine_name="refine3", refine_width=1),
        Stage("res3", 2, downsample=True, dilation=2, refine_name="refine2", refine_width=2),
        Stage(
            "res4",
            2,
            downsample=True,
            dilation=4,
            refine_name="refine1",
            refine_width=2,
            adjust_padding=image_size == 28,
        ),
    )


def refinenet_cascade(
    h: jax.Array,
    y: jax.Array | None,
    *,
    stages: Sequence[Stage],
    ngf: int,
    normalization: Callable[..., nn.Module],
    refine_normalization: Normalization,
    pool: str,
    act: Callable[[jax.Array], jax.Array],
    dtype: Dtype,
    param_dtype: Dtype,
) -> jax.Array:
    """Residual stages down, then RefineNet blocks back up from the deepest stage to the first.

    Must be called inside a compact method: the blocks become submodules of the caller (named after the
    torch attributes ``res1_0``, ..., ``refine1``, ...). Returns the output of the last RefineNet block.
    """
    common = dict(act=act, dtype=dtype, param_dtype=param_dtype)
    features = []
    for stage in stages:
        for b in range(2):
            first = b == 0
            block = ResidualBlock(
                stage.width * ngf,
                normalization=normalization,
                resample="down" if (first and stage.downsample) else None,
                dilation=stage.dilation,
                adjust_padding=first and stage.adjust_padding,
                name=f"{stage.name}_{b}",
                **common,
            )
            h = block(h, y)
        features.append(h)

    ref = None
    for k, (stage, layer) in enumerate(reversed(list(zip(stages, features, strict=True)))):
        inputs = [layer] if ref is None else [layer, ref]
        ref = RefineBlock(
            stage.refine_width * ngf,
            start=ref is None,
            end=k == len(stages) - 1,
            pool=pool,
            normalization=refine_normalization,
            name=stage.refine_name,
            **common,
        )(inputs, y, layer.shape[1:3])
    return ref
