"""Score networks: published sizes, shapes and FLOPs, normalisation formulas, sigma conditioning, training.

Full-size networks are only traced abstractly (``jax.eval_shape``); numerics use tiny widths (ngf 4-8).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ncsn_jax import config_lib, errors, models
from ncsn_jax.losses import denoising_score_matching
from ncsn_jax.models import layers, normalization
from ncsn_jax.models.ncsn import CondRefineNetDilated
from ncsn_jax.models.ncsnv2 import NCSNv2


def make_config(
    name: str,
    *,
    ngf: int = 128,
    image_size: int = 32,
    num_channels: int = 3,
    num_scales: int = 10,
    sigma_max: float = 1.0,
    sigma_min: float = 0.01,
    dtype: str = "float32",
    **model_fields,
) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(
        dict(dataset="cifar10", image_size=image_size, num_channels=num_channels, centered=False)
    )
    fields = dict(
        name=name,
        ngf=ngf,
        sigma_max=sigma_max,
        sigma_min=sigma_min,
        num_scales=num_scales,
        dtype=dtype,
        normalization="InstanceNorm++",
        nonlinearity="elu",
    )
    config.model = ml_collections.ConfigDict({**fields, **model_fields})
    return config


def abstract_params(config):
    model = models.create(config)
    return models.abstract_variables(model, (1, *models.example_shape(config)))["params"]


# ----------------------------------------------------------------------------------------------------------
# Registry and construction.
# ----------------------------------------------------------------------------------------------------------


def test_registry_names_and_unknown_name_error():
    assert set(models.MODEL_NAMES) == {"ncsn", "ncsnv2", "ncsnv2_deeper", "ncsnv2_deepest", "mlp", "unet"}
    with pytest.raises(
        errors.UserError, match="valid names: mlp, ncsn, ncsnv2, ncsnv2_deeper, ncsnv2_deepest, unet"
    ):
        models.create(make_config("ncsnv3"))


def test_create_reads_config_and_tolerates_missing_optional_fields():
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(dict(image_size=8, num_channels=1))
    config.model = ml_collections.ConfigDict(dict(name="ncsnv2"))
    model = models.create(config)  # every optional field defaulted
    assert isinstance(model, NCSNv2) and model.ngf == 128 and model.dtype == jnp.float32
    config = make_config("ncsn", ngf=16, num_scales=4, sigma_max=2.0, dtype="bfloat16")
    model = models.create(config)
    assert isinstance(model, CondRefineNetDilated) and model.ngf == 16 and model.dtype == jnp.bfloat16
    np.testing.assert_allclose(model.sigmas, np.geomspace(2.0, 0.01, 4), rtol=1e-6)
    with pytest.raises(ValueError, match="resolve 'auto'"):
        models.create(make_config("ncsn", num_scales="auto"))
    with pytest.raises(errors.UserError, match="config.model.dtype"):
        models.create(make_config("ncsnv2", dtype="float8"))


# ----------------------------------------------------------------------------------------------------------
# Published architectures: parameter counts, per-block counts, feature maps, FLOPs.
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ngf, image_size, num_channels, expected",
    [
        ("ncsn", 64, 28, 1, 7_638_657),  # NCSN MNIST
        ("ncsn", 128, 32, 3, 30_117_635),  # NCSN CIFAR-10
        ("ncsnv2", 128, 32, 3, 29_694_083),  # NCSNv2 CIFAR-10
        ("ncsnv2", 128, 64, 3, 29_694_083),  # NCSNv2 CelebA 64
        ("ncsnv2_deeper", 128, 128, 3, 83_445_379),  # LSUN 128
        ("ncsnv2_deepest", 128, 256, 3, 94_132_611),  # FFHQ 256
    ],
)
def test_published_parameter_counts(name, ngf, image_size, num_channels, expected):
    config = make_config(name, ngf=ngf, image_size=image_size, num_channels=num_channels)
    assert models.count_params(abstract_params(config)) == expected


def _leaves_named(params, name):
    return [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if path[-1].key == name]


def test_ncsn_cifar10_conditional_norm_embeddings():
    ncsn = abstract_params(make_config("ncsn", ngf=128))
    ncsnv2 = abstract_params(make_config("ncsnv2", ngf=128))
    embeddings = _leaves_named(ncsn, "embedding")
    assert all(e.shape[0] == 10 for e in embeddings)  # one row per noise level
    # The issue's 423,552 is NCSN's count minus NCSNv2's: the (10, 3C) embedding tables (433,920, as in the
    # reference state dict) replace NCSNv2's 17 per-channel InstanceNorm++ layers (10,368 parameters); the
    # convolutions of the two networks are identical.
    assert models.count_params(ncsn) - models.count_params(ncsnv2) == 423_552
    assert sum(math.prod(e.shape) for e in embeddings) == 433_920
    norm_params = sum(
        math.prod(leaf.shape) for name in ("alpha", "gamma", "beta") for leaf in _leaves_named(ncsnv2, name)
    )
    assert norm_params == 10_368

    def count_without(tree, names):
        return models.count_params(
            [
                leaf
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
                if path[-1].key not in names
            ]
        )

    assert count_without(ncsn, {"embedding"}) == count_without(ncsnv2, {"alpha", "gamma", "beta"})


def test_ncsnv2_cifar10_per_block_parameter_counts():
    params = abstract_params(make_config("ncsnv2", ngf=128))
    count = lambda *names: sum(models.count_params(params[n]) for n in names)
    assert count("begin_conv") == 3_584
    assert count("res1_0", "res1_1") == 591_872
    assert count("res2_0", "res2_1") == 1_658_240
    assert count("res3_0", "res3_1") == 2_953_472
    assert count("res4_0", "res4_1") == 2_953_472
    assert count("refine1") == 4_718_592
    assert count("refine2") == 8_258_048
    assert count("refine3") == 5_898_496
    assert count("refine4") == 2_654_464
    assert count("normalizer") == 384
    assert count("end_conv") == 3_459


def _feature_shapes(config, image_size):
    model = models.create(config)
    x = jnp.zeros((1, image_size, image_size, config.data.num_channels))
    sigma = jnp.full((1,), 0.01)

    def run(key):
        return model.init(key, x, sigma, capture_intermediates=True)["intermediates"]

    inter = jax.eval_shape(run, jax.random.PRNGKey(0))
    return {
        name: inter[name]["__call__"][0].shape
        for name in ("res1_1", "res2_1", "res3_1", "res4_1", "refine1", "refine2", "refine3", "refine4")
    }


@pytest.mark.parametrize("name", ["ncsn", "ncsnv2"])
def test_feature_map_shapes_cifar10(name):
    shapes = _feature_shapes(make_config(name, ngf=128), 32)
    assert shapes["res1_1"] == (1, 32, 32, 128)
    for stage in ("res2_1", "res3_1", "res4_1"):  # only the non-dilated stage downsamples
        assert shapes[stage] == (1, 16, 16, 256)
    assert shapes["refine1"] == shapes["refine2"] == (1, 16, 16, 256)
    assert shapes["refine3"] == (1, 16, 16, 128)
    assert shapes["refine4"] == (1, 32, 32, 128)


class _OneConv(nn.Module):
    """A single dilated Conv2d in the (x, sigma) calling convention."""

    @nn.compact
    def __call__(self, x, sigma):
        del sigma
        return layers.Conv2d(features=5, kernel_size=3, dilation=2)(x)


def test_conv_flops_counter_on_one_convolution():
    # 2 FLOP x (2 x 7 x 9 output pixels) x 5 outputs x 3 inputs x 9 taps
    assert models.conv_flops(_OneConv(), (2, 7, 9, 3)) == 2 * (2 * 7 * 9) * 5 * 3 * 9


@pytest.mark.parametrize(
    "name, image_size, gflops, digits",
    [("ncsn", 32, 19.79, 2), ("ncsnv2", 32, 19.79, 2), ("ncsnv2", 64, 79.1, 1)],
)
def test_forward_conv_flops(name, image_size, gflops, digits):
    model = models.create(make_config(name, ngf=128, image_size=image_size))
    flops = models.conv_flops(model, (1, image_size, image_size, 3))
    assert round(flops / 1e9, digits) == gflops
    assert models.conv_flops(model, (4, image_size, image_size, 3)) == 4 * flops


def _jaxpr_conv_flops(model, input_shape) -> int:
    """A second count: ``2 · |output| · C_in · k_h · k_w`` of every ``conv_general_dilated`` in the jaxpr
    of the forward pass (whatever module issued it)."""
    variables = models.abstract_variables(model, input_shape)
    x = jnp.zeros(input_shape)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, jnp.ones(input_shape[0])))(variables, x)
    total = 0
    for eqn in _equations(jaxpr.jaxpr):
        if eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # HWIO (flax and layers.Conv2d both use NHWC / HWIO)
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(kernel[:-1])
    return total


@pytest.mark.parametrize("name", ["ncsnv2", "unet"])
def test_conv_flops_equals_the_count_from_the_jaxpr(name):
    model = models.create(make_config(name, ngf=16, image_size=8, num_channels=1))
    flops = models.conv_flops(model, (2, 8, 8, 1))
    assert flops == _jaxpr_conv_flops(model, (2, 8, 8, 1)) and flops > 0


# ----------------------------------------------------------------------------------------------------------
# Normalisations against the formulas, computed independently in numpy (float64).
# ----------------------------------------------------------------------------------------------------------


def numpy_instance_norm_plus(x, gamma, alpha, beta):
    """InstanceNorm++ as the reference code computes it: gamma * (IN(x) + alpha * mu_tilde) + beta."""
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=(1, 2), keepdims=True)
    normalized = (x - mu) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
    means = mu[:, 0, 0, :]
    mu_tilde = (means - means.mean(-1, keepdims=True)) / np.sqrt(means.var(-1, ddof=1, keepdims=True) + 1e-5)
    return gamma * (normalized + alpha * mu_tilde[:, None, None, :]) + beta


@pytest.fixture(scope="module")
def feature_maps():
    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    # Channel-dependent offsets and scales, so that means, variances and mu_tilde are far from trivial.
    offsets = jnp.linspace(-3.0, 4.0, 6)
    scales = jnp.linspace(0.5, 3.0, 6)
    return offsets + scales * jax.random.normal(key1, (3, 5, 7, 6)) + jax.random.normal(key2, (3, 1, 1, 6))


def test_instance_normalize_gives_zero_mean_unit_variance_channels(feature_maps):
    z = np.asarray(normalization.instance_normalize(feature_maps), np.float64)
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0.0, atol=1e-5)
    # Biased variance var / (var + eps): 1 up to eps / var.
    np.testing.assert_allclose(z.var(axis=(1, 2)), 1.0, atol=1e-4)


def test_instance_norm_plus_pre_affine_part_and_full_formula(feature_maps):
    norm = normalization.InstanceNormPlus()
    params = norm.init(jax.random.PRNGKey(1), feature_maps)["params"]
    c = feature_maps.shape[-1]
    identity_affine = {"gamma": jnp.ones(c), "alpha": jnp.zeros(c), "beta": jnp.zeros(c)}
    pre_affine = np.asarray(norm.apply({"params": identity_affine}, feature_maps), np.float64)
    np.testing.assert_allclose(pre_affine.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(pre_affine.var(axis=(1, 2)), 1.0, atol=1e-4)

    rng = np.random.default_rng(0)
    random_params = {k: jnp.asarray(rng.normal(size=c), jnp.float32) for k in ("gamma", "alpha", "beta")}
    out = norm.apply({"params": random_params}, feature_maps)
    expected = numpy_instance_norm_plus(
        feature_maps, *(np.asarray(random_params[k], np.float64) for k in ("gamma", "alpha", "beta"))
    )
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=1e-5)
    # Initialisation: gamma, alpha ~ N(1, 0.02), beta = 0.
    assert np.all(np.abs(np.asarray(params["gamma"]) - 1) < 0.1) and np.all(params["beta"] == 0)


def test_conditional_instance_norm_plus_table_layout_and_levels(feature_maps):
    num_classes, c = 4, feature_maps.shape[-1]
    norm = normalization.ConditionalInstanceNormPlus(num_classes=num_classes)
    y = jnp.array([0, 2, 3], jnp.int32)
    params = norm.init(jax.random.PRNGKey(2), feature_maps, y)["params"]
    table = np.asarray(params["embed"]["embedding"])
    assert table.shape == (num_classes, 3 * c)  # torch nn.Embedding(num_classes, 3C): [gamma | alpha | beta]
    assert np.all(table[:, 2 * c :] == 0) and np.all(np.abs(table[:, : 2 * c] - 1) < 0.1)

    table = np.random.default_rng(1).normal(size=table.shape).astype(np.float32)
    out = np.asarray(norm.apply({"params": {"embed": {"embedding": table}}}, feature_maps, y))
    for b, level in enumerate(np.asarray(y)):
        gamma, alpha, beta = np.split(table[level].astype(np.float64), 3)
        expected = numpy_instance_norm_plus(feature_maps[b : b + 1], gamma, alpha, beta)[0]
        np.testing.assert_allclose(out[b], expected, atol=3e-5, rtol=1e-5)

    # Different levels give different outputs on the same input.
    same_input = jnp.broadcast_to(feature_maps[:1], (num_classes, *feature_maps.shape[1:]))
    outs = norm.apply({"params": params}, same_input, jnp.arange(num_classes))
    for i in range(num_classes):
        for j in range(i + 1, num_classes):
            assert float(jnp.max(jnp.abs(outs[i] - outs[j]))) > 1e-3


def test_conditional_norm_requires_level_index(feature_maps):
    norm = normalization.ConditionalInstanceNormPlus(num_classes=3)
    with pytest.raises(ValueError, match="level index"):
        norm.init(jax.random.PRNGKey(0), feature_maps)
    with pytest.raises(errors.UserError, match="valid"):
        normalization.get_normalization("LayerNorm", conditional=False)


def test_align_corners_resize_matches_closed_form():
    # Bilinear interpolation with align_corners=True reproduces any affine function of the pixel position.
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(3.0), indexing="ij")
    x = jnp.asarray((2.0 * rows - 0.5 * cols + 1.0)[None, :, :, None])
    out = np.asarray(layers.resize_bilinear_align_corners(x, (7, 5)))[0, :, :, 0]
    r_out, c_out = np.meshgrid(np.linspace(0, 3, 7), np.linspace(0, 2, 5), indexing="ij")
    np.testing.assert_allclose(out, 2.0 * r_out - 0.5 * c_out + 1.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Tiny networks: sigma conditioning, per-example structure, precision, training.
# ----------------------------------------------------------------------------------------------------------

TINY = dict(ngf=8, image_size=8, num_channels=2, num_scales=5, sigma_max=1.0, sigma_min=0.05)


@pytest.fixture(scope="module")
def tiny_models():
    """(config, model, variables, jitted apply) for tiny NCSN / NCSNv2 / MLP."""
    out = {}
    for name in ("ncsn", "ncsnv2", "mlp", "unet"):
        config = make_config(name, **TINY, hidden_dims=(32, 32), sigma_conditioning="embedding")
        if name == "mlp":
            config.data.dataset = "toy"  # 2-D examples
        model = models.create(config)
        variables = models.init_variables(model, jax.random.PRNGKey(3), (1, *models.example_shape(config)))
        apply = lambda variables, x, sigma, model=model: models.get_score_fn(model, variables)(x, sigma)
        out[name] = (config, model, variables, apply)
    return out


def _images(key, batch, config):
    return jax.random.uniform(key, (batch, *models.example_shape(config)))


def test_variables_hold_params_only(tiny_models):
    for _, _, variables, _ in tiny_models.values():
        assert set(variables) == {"params"}
        leaves = jax.tree.leaves(variables)
        assert all(leaf.dtype == jnp.float32 for leaf in leaves)


def test_ncsnv2_sigma_scaling_is_exact(tiny_models):
    config, model, variables, apply = tiny_models["ncsnv2"]
    x = _images(jax.random.PRNGKey(4), 4, config)
    sigmas = jnp.array([0.01, 0.3, 1.0, 50.0])  # one level per example, broadcast per example
    scaled = apply(variables, x, sigmas) * sigmas[:, None, None, None]
    unscaled = apply(variables, x, jnp.ones(4))
    np.testing.assert_allclose(scaled, unscaled, rtol=1e-6, atol=1e-7)
    assert float(jnp.std(unscaled)) > 1e-3  # not a trivially zero output


@pytest.mark.parametrize("mode", ["scale", "embedding"])
def test_mlp_sigma_conditioning_modes(mode):
    model = models.create(make_config("mlp", hidden_dims=(16, 16), sigma_conditioning=mode))
    variables = models.init_variables(model, jax.random.PRNGKey(0), (1, 3))
    # A non-zero output layer (it is zero-initialised), so that the score depends on x.
    is_output_kernel = lambda path: path[-2].key == "output" and path[-1].key == "kernel"
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: 0.3 * jnp.ones_like(v) if is_output_kernel(path) else v, variables
    )
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    sigma_a, sigma_b = jnp.array([0.1, 0.5, 1.0, 20.0]), jnp.array([3.0, 0.2, 7.0, 0.05])
    out_a = model.apply(variables, x, sigma_a) * sigma_a[:, None]
    out_b = model.apply(variables, x, sigma_b) * sigma_b[:, None]
    if mode == "scale":
        np.testing.assert_allclose(out_a, out_b, rtol=1e-6, atol=1e-7)
    else:
        assert float(jnp.min(jnp.max(jnp.abs(out_a - out_b), axis=1))) > 1e-4


def _perturbed(variables, seed: int = 11, scale: float = 0.1):
    """Every parameter moved by ``scale · N(0, 1)``: a network whose zero-initialised output layer is not zero."""
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten([v + scale * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])


def test_unet_starts_at_the_zero_score_and_divides_by_sigma(tiny_models):
    """The output convolution is zero-initialised (s = 0 for every x and σ at step 0), and the score is that
    convolution's output f(x, σ) divided by σ."""
    config, model, variables, apply = tiny_models["unet"]
    x = _images(jax.random.PRNGKey(4), 4, config)
    sigmas = jnp.array([0.01, 0.3, 1.0, 50.0])
    assert float(jnp.max(jnp.abs(apply(variables, x, sigmas)))) == 0.0
    variables = _perturbed(variables)
    score, state = model.apply(variables, x, sigmas, capture_intermediates=True)
    output_conv = max((k for k in state["intermediates"] if k.startswith("Conv_")), key=lambda k: int(k[5:]))
    (f,) = state["intermediates"][output_conv]["__call__"]
    assert f.shape == x.shape and float(jnp.std(f)) > 1e-3
    np.testing.assert_allclose(score, f / sigmas[:, None, None, None], rtol=1e-6)


@pytest.mark.parametrize("name", ["ncsn", "ncsnv2", "mlp", "unet"])
def test_networks_are_per_example(tiny_models, name):
    config, model, variables, apply = tiny_models[name]
    if name == "mlp":
        x = jax.random.normal(jax.random.PRNGKey(5), (4, 2))
        variables = jax.tree.map(lambda v: v + 0.1, variables)  # non-zero output layer
    else:
        x = _images(jax.random.PRNGKey(5), 4, config)
        if name == "unet":
            variables = _perturbed(variables)  # non-zero output layer
    sigmas = jnp.asarray(config_lib.sigmas(config))[jnp.array([0, 2, 4, 1])]
    out = apply(variables, x, sigmas)
    other = x.at[1:].set(jax.random.uniform(jax.random.PRNGKey(6), x[1:].shape) * 3.0 - 1.0)
    other_sigmas = sigmas.at[1:].set(sigmas[0])
    out_other = apply(variables, other, other_sigmas)
    np.testing.assert_allclose(out_other[0], out[0], rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(out_other[1:] - out[1:]))) > 1e-4


def test_ncsn_sigma_outside_table_is_an_error_and_nearest_level_under_jit(tiny_models):
    config, model, variables, apply = tiny_models["ncsn"]
    sigmas = np.asarray(config_lib.sigmas(config))
    score_fn = models.get_score_fn(model, variables)
    x = _images(jax.random.PRNGKey(7), 4, config)
    level = jnp.full((4,), sigmas[2])
    reference = score_fn(x, level)  # concrete table levels are accepted
    with pytest.raises(ValueError, match="not one of the 5 noise levels"):
        score_fn(x, level * 1.05)
    # Inside jit the sigma cannot be checked: it is mapped to the nearest level in log sigma.
    np.testing.assert_allclose(jax.jit(score_fn)(x, level * 1.05), reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        model.level_index(jnp.asarray([2.0, 1.0, 0.4, 0.3, 0.0501, 1e-4], jnp.float32)), [0, 0, 1, 2, 4, 4]
    )
    # Different levels give different scores (the network is noise conditional).
    assert float(jnp.max(jnp.abs(score_fn(x, jnp.full((4,), sigmas[0])) - reference))) > 1e-4


def _equations(jaxpr) -> list:
    """Every equation of ``jaxpr``, those of nested jaxprs (jit, custom_jvp, …) included."""
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    out.extend(_equations(sub.jaxpr))
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    out.extend(_equations(sub))
    return out


def _conv_input_dtypes(model, variables, x, sigma) -> list[set]:
    """The dtypes of the operands of every convolution the model's forward pass runs."""
    jaxpr = jax.make_jaxpr(lambda v, x, s: model.apply(v, x, s))(variables, x, sigma)
    return [
        {var.aval.dtype for var in eqn.invars}
        for eqn in _equations(jaxpr.jaxpr)
        if eqn.primitive.name == "conv_general_dilated"
    ]


@pytest.mark.parametrize("name, num_convs", [("ncsn", 20), ("ncsnv2", 20), ("unet", 12)])
def test_bfloat16_convolutions_run_in_bfloat16_and_stay_close_to_float32(tiny_models, name, num_convs):
    """``config.model.dtype=bfloat16``: every convolution takes bfloat16 operands (from the float32
    parameters), the output is float32, and the score is within the stated tolerance of float32: relative L2
    error below 3% (bfloat16 has an 8-bit mantissa, ~0.4% per rounding, accumulated over ~40 layers)."""
    config, model, variables, apply = tiny_models[name]
    model_bf16 = models.create(make_config(name, **TINY, dtype="bfloat16"))
    if name == "unet":
        variables = _perturbed(variables)  # a non-zero output layer, so that the error is measurable
    x = _images(jax.random.PRNGKey(8), 4, config)
    sigma = jnp.full((4,), config_lib.sigmas(config)[1])

    dtypes32, dtypes16 = (_conv_input_dtypes(m, variables, x, sigma) for m in (model, model_bf16))
    assert len(dtypes16) == len(dtypes32) >= num_convs  # the same convolutions, all of them traced
    assert all(d == {jnp.dtype(jnp.float32)} for d in dtypes32)
    assert all(d == {jnp.dtype(jnp.bfloat16)} for d in dtypes16), dtypes16

    out32 = apply(variables, x, sigma)
    out16 = models.get_score_fn(model_bf16, variables)(x, sigma)
    assert out16.dtype == jnp.float32  # outputs are float32 whatever the compute dtype
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 1e-4 < rel < 3e-2, (name, rel)  # really rounded, and not by more than stated


@pytest.mark.slow  # compiling the gradient of the 40-layer network takes ~20 s on two busy CPU cores
def test_tiny_ncsnv2_trains_dsm_on_a_fixed_batch(tiny_models):
    config, model, variables, _ = tiny_models["ncsnv2"]
    # A fixed batch of smooth images and a fixed noise draw: the objective is deterministic, so a working
    # network + gradient must drive it down.
    grid = jnp.linspace(0.0, 1.0, 8)
    phase = jnp.arange(8.0)[:, None, None, None]
    x = 0.5 + 0.4 * jnp.sin(3.0 * grid[None, :, None, None] + 2.0 * grid[None, None, :, None] + phase)
    x = jnp.concatenate([x, 1.0 - x], axis=-1)
    sigmas = jnp.asarray(config_lib.sigmas(config))
    key = jax.random.PRNGKey(9)
    optimizer = optax.adam(2e-3)

    def loss_fn(params):
        score_fn = models.get_score_fn(model, {"params": params})
        return denoising_score_matching(score_fn, x, sigmas, key)[0]

    @jax.jit
    def train(params):
        def step(carry, _):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None, length=60)
        return losses, loss_fn(params)

    losses, final = train(variables["params"])
    assert np.all(np.isfinite(losses))
    assert float(final) < 0.5 * float(losses[0]), (float(losses[0]), float(final))


# ----------------------------------------------------------------------------------------------------------
# The toy MLP learns the score of a 2-D Gaussian mixture (closed form).
# ----------------------------------------------------------------------------------------------------------

MIX_MEANS = np.array([[5.0, 5.0], [-5.0, -5.0]])
MIX_WEIGHTS = np.array([0.8, 0.2])


def mixture_sample(key, n):
    k1, k2 = jax.random.split(key)
    component = jax.random.bernoulli(k1, MIX_WEIGHTS[1], (n,)).astype(jnp.int32)
    return jnp.asarray(MIX_MEANS)[component] + jax.random.normal(k2, (n, 2))


def noisy_mixture_score(x, sigma):
    """grad log sum_k w_k N(x; mu_k, (1 + sigma^2) I), in float64 numpy."""
    x, var = np.asarray(x, np.float64), 1.0 + float(sigma) ** 2
    logits = np.log(MIX_WEIGHTS)[None] - 0.5 * ((x[:, None] - MIX_MEANS[None]) ** 2).sum(-1) / var
    resp = np.exp(logits - logits.max(-1, keepdims=True))
    resp /= resp.sum(-1, keepdims=True)
    return np.einsum("bk,bkd->bd", resp, (MIX_MEANS[None] - x[:, None]) / var)


def test_mlp_learns_noisy_mixture_scores():
    config = make_config(
        "mlp", hidden_dims=(128, 128), sigma_conditioning="embedding", nonlinearity="softplus", data_std=5.0
    )
    model = models.create(config)
    params = models.init_variables(model, jax.random.PRNGKey(0), (1, 2))["params"]
    sigmas = jnp.geomspace(20.0, 1.0, 10)
    optimizer = optax.adam(1e-3)

    def step(carry, key):
        params, opt_state = carry
        data_key, loss_key = jax.random.split(key)
        x = mixture_sample(data_key, 256)
        loss_fn = lambda p: denoising_score_matching(
            models.get_score_fn(model, {"params": p}), x, sigmas, loss_key
        )[0]
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(jax.random.PRNGKey(1), 2000)
    (params, _), _ = jax.jit(lambda c, k: jax.lax.scan(step, c, k))((params, optimizer.init(params)), keys)

    for sigma in (20.0, 5.0, 1.0):
        noise = sigma * jax.random.normal(jax.random.PRNGKey(3), (2000, 2))
        x = mixture_sample(jax.random.PRNGKey(2), 2000) + noise
        estimate = np.asarray(model.apply({"params": params}, x, jnp.full((2000,), sigma)), np.float64)
        truth = noisy_mixture_score(x, sigma)
        relative_error = np.sqrt(((estimate - truth) ** 2).sum(-1).mean() / (truth**2).sum(-1).mean())
        assert relative_error < 0.35, (sigma, relative_error)
