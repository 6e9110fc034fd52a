"""Checkpoint conversion: the reference state dicts map one-to-one onto the Flax models, and a second
implementation (the reference architectures re-typed in PyTorch) computes the same outputs after conversion.

The reference state-dict listings (``*_state_dict.tsv``: key, shape, kind) are read from
``$NCSN_JAX_REFERENCE_DIR``, ``tests/data/reference`` or the shared ``../shared/reference`` folder. The torch
tests are skipped when PyTorch is not installed (``pip install "ncsn-jax[torch]"``).
"""

from __future__ import annotations

import ast
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ncsn_jax import errors, models, noise
from ncsn_jax.models import convert, layers, normalization
from tests.helpers import REPO as REPO_DIR
from tests.torch_reference import build_torch_reference, nchw, nhwc, randomize_norm_parameters

REFERENCE_DIRS = [
    os.environ.get("NCSN_JAX_REFERENCE_DIR", ""),
    pathlib.Path(REPO_DIR) / "tests" / "data" / "reference",
    pathlib.Path(REPO_DIR).parent / "shared" / "reference",
]


def make_config(name, *, ngf, image_size, num_channels, num_scales, sigma_max, sigma_min=0.01):
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(
        dict(dataset="cifar10", image_size=image_size, num_channels=num_channels, centered=False)
    )
    config.model = ml_collections.ConfigDict(
        dict(
            name=name,
            ngf=ngf,
            sigma_max=sigma_max,
            sigma_min=sigma_min,
            num_scales=num_scales,
            dtype="float32",
            normalization="InstanceNorm++",
            nonlinearity="elu",
        )
    )
    return config


# The reference repositories' configs (ncsn anneal.yml; ncsnv2 cifar10/celeba/bedroom/ffhq.yml).
REFERENCE_CONFIGS = {
    "ncsn_mnist": dict(name="ncsn", ngf=64, image_size=28, num_channels=1, num_scales=10, sigma_max=1.0),
    "ncsn_cifar10": dict(name="ncsn", ngf=128, image_size=32, num_channels=3, num_scales=10, sigma_max=1.0),
    "ncsnv2_cifar10": dict(
        name="ncsnv2", ngf=128, image_size=32, num_channels=3, num_scales=232, sigma_max=50.0
    ),
    "ncsnv2_celeba": dict(
        name="ncsnv2", ngf=128, image_size=64, num_channels=3, num_scales=500, sigma_max=90.0
    ),
    "ncsnv2deeper_lsun128": dict(
        name="ncsnv2_deeper", ngf=128, image_size=128, num_channels=3, num_scales=1086, sigma_max=190.0
    ),
    "ncsnv2deepest_ffhq": dict(
        name="ncsnv2_deepest", ngf=128, image_size=256, num_channels=3, num_scales=2311, sigma_max=348.0
    ),
}


def reference_listing(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    for directory in REFERENCE_DIRS:
        path = pathlib.Path(directory) / f"{name}_state_dict.tsv" if directory else None
        if path is not None and path.is_file():
            rows = []
            for line in path.read_text().splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                key, shape, kind = line.split("\t")
                rows.append((key, tuple(ast.literal_eval(shape)), kind))
            return rows
    pytest.skip(f"reference listing {name}_state_dict.tsv not found in {REFERENCE_DIRS}")


def listing_state_dict(rows, config):
    """A state dict with the listing's keys and shapes: parameter i is the constant i (zero-copy broadcast),
    the ``sigmas`` buffer holds the config's noise levels."""
    state = {}
    for i, (key, shape, _) in enumerate(r for r in rows if r[2] == "parameter"):
        state[key] = np.broadcast_to(np.float32(i), shape)
    for key, shape, kind in rows:
        if kind == "buffer":
            assert key.endswith("sigmas"), key
            sigmas = noise.geometric_sigmas(
                config.model.sigma_max, config.model.sigma_min, config.model.num_scales
            )
            assert sigmas.shape == shape, (key, shape)  # the listing's table length matches the config
            state[key] = sigmas
    return state


# ----------------------------------------------------------------------------------------------------------
# Every published state dict maps one-to-one onto the Flax parameters.
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_reference_state_dict_maps_one_to_one(name):
    rows = reference_listing(name)
    config = make_config(**REFERENCE_CONFIGS[name])
    state = listing_state_dict(rows, config)
    params = convert.from_torch_state_dict(state, config)["params"]

    parameters = [(key, shape) for key, shape, kind in rows if kind == "parameter"]
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    assert len(leaves) == len(parameters)
    assert models.count_params(params) == sum(int(np.prod(shape)) for _, shape in parameters)
    # Each Flax parameter is constant and equal to the index of exactly one torch parameter of the right size.
    received = []
    for path, leaf in leaves:
        value = float(leaf.reshape(-1)[0])
        assert float(jnp.min(leaf)) == float(jnp.max(leaf)) == value, path
        key, shape = parameters[int(value)]
        assert int(np.prod(shape)) == leaf.size, (path, key)
        received.append(int(value))
    assert sorted(received) == list(range(len(parameters)))
    # The abstract model agrees (shapes only, nothing allocated).
    abstract = models.abstract_variables(models.create(config), (1, *models.example_shape(config)))["params"]
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, params)


def test_named_keys_land_where_expected():
    rows = reference_listing("ncsn_cifar10")
    config = make_config(**REFERENCE_CONFIGS["ncsn_cifar10"])
    rng = np.random.default_rng(0)
    state = {key: rng.standard_normal(shape).astype(np.float32) for key, shape, _ in rows}
    params = convert.from_torch_state_dict(state, config)["params"]
    # OIHW -> HWIO, element by element.
    w = state["module.res2.0.conv2.conv.weight"]  # ConvMeanPool's conv: (256, 128, 3, 3)
    k = np.asarray(params["res2_0"]["conv2"]["conv"]["kernel"])
    assert k.shape == (3, 3, 128, 256)
    np.testing.assert_array_equal(k[1, 2, 5, 7], w[7, 5, 1, 2])
    np.testing.assert_array_equal(k, w.transpose(2, 3, 1, 0))
    # The (levels, 3C) embedding table is copied unchanged.
    np.testing.assert_array_equal(
        params["refine1"]["adapt_convs_0"]["1_1_norm"]["embed"]["embedding"],
        state["module.refine1.adapt_convs.0.1_1_norm.embed.weight"],
    )
    np.testing.assert_array_equal(
        params["refine2"]["msf"]["convs_1"]["bias"], state["module.refine2.msf.convs.1.bias"]
    )
    assert convert.torch_key(("res2_0", "shortcut", "conv_1", "kernel")) == "res2.0.shortcut.conv.1.weight"


# ----------------------------------------------------------------------------------------------------------
# Errors name the offending keys.
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ncsnv2_state():
    rows = reference_listing("ncsnv2_cifar10")
    config = make_config(**REFERENCE_CONFIGS["ncsnv2_cifar10"])
    return listing_state_dict(rows, config), config


def test_missing_key_is_named(ncsnv2_state):
    state, config = ncsnv2_state
    broken = {k: v for k, v in state.items() if k != "module.refine3.msf.convs.0.bias"}
    with pytest.raises(
        errors.UserError,
        match=r"missing from the checkpoint: refine3\.msf\.convs\.0\.bias "
        r"\(expected shape \(128,\)\)",
    ):
        convert.from_torch_state_dict(broken, config)


def test_wrong_shape_is_named(ncsnv2_state):
    state, config = ncsnv2_state
    broken = dict(state, **{"module.res1.0.conv1.weight": np.zeros((128, 128, 1, 1), np.float32)})
    with pytest.raises(
        errors.UserError,
        match=r"res1\.0\.conv1\.weight: checkpoint \(128, 128, 1, 1\) != model "
        r"\(128, 128, 3, 3\)",
    ):
        convert.from_torch_state_dict(broken, config)


def test_unused_key_is_named(ncsnv2_state):
    state, config = ncsnv2_state
    broken = dict(state, **{"module.res5.0.conv1.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(
        errors.UserError, match=r"1 checkpoint entry not used by model 'ncsnv2': res5\.0\.conv1\.weight"
    ):
        convert.from_torch_state_dict(broken, config)


def test_sigma_table_mismatch_is_an_error(ncsnv2_state):
    state, config = ncsnv2_state
    with pytest.raises(errors.UserError, match="noise levels"):
        convert.from_torch_state_dict(dict(state, **{"module.sigmas": state["module.sigmas"][:-1]}), config)
    other = make_config(**dict(REFERENCE_CONFIGS["ncsnv2_cifar10"], sigma_max=90.0))
    with pytest.raises(errors.UserError, match="sigma_max=90.0"):
        convert.from_torch_state_dict(state, other)
    # Without a sigma table to compare with ("auto" fields), the buffer is accepted.
    auto = make_config(**dict(REFERENCE_CONFIGS["ncsnv2_cifar10"], num_scales="auto"))
    assert "params" in convert.from_torch_state_dict(state, auto)


def test_duplicate_prefixed_keys_are_an_error(ncsnv2_state):
    state, config = ncsnv2_state
    with pytest.raises(errors.UserError, match="twice"):
        convert.from_torch_state_dict(dict(state, **{"end_conv.bias": state["module.end_conv.bias"]}), config)


def test_missing_torch_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "ncsn-jax\[torch\]".*torch==2\.13\.0'):
        convert.load_torch_checkpoint(str(tmp_path / "checkpoint.pth"))


# ----------------------------------------------------------------------------------------------------------
# A second implementation: the reference architectures re-typed in PyTorch (tests/torch_reference.py).
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_ref():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch, build_torch_reference(torch)


def run_flax_block(block, torch_module, *args):
    """Initialises ``block`` abstractly, loads ``torch_module``'s weights and applies it to ``args``."""
    abstract = jax.eval_shape(lambda: block.init(jax.random.PRNGKey(0), *args))["params"]
    params, leftover = convert.map_state_dict(torch_module.state_dict(), abstract)
    assert not leftover, leftover
    return np.asarray(block.apply({"params": params}, *args))


def assert_close(flax_out, torch_out):
    scale = float(np.max(np.abs(torch_out)))
    np.testing.assert_allclose(flax_out, torch_out, rtol=1e-4, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def feature_batch():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8, 8, 6)) * np.linspace(0.5, 2.0, 6) + np.linspace(-1.0, 2.0, 6)
    return x.astype(np.float32), np.array([0, 3, 1])


def test_instance_norms_match_torch(torch_ref, feature_batch):
    torch, ref = torch_ref
    x, y = feature_batch
    t_norm = ref.InstanceNorm2dPlus(6)
    randomize_norm_parameters(torch, t_norm)
    out = run_flax_block(normalization.InstanceNormPlus(), t_norm, x)
    assert_close(out, nhwc(t_norm(torch.from_numpy(nchw(x)))))

    t_cond = ref.ConditionalInstanceNorm2dPlus(6, 4)
    randomize_norm_parameters(torch, t_cond)
    out = run_flax_block(normalization.ConditionalInstanceNormPlus(num_classes=4), t_cond, x, y)
    assert_close(out, nhwc(t_cond(torch.from_numpy(nchw(x)), torch.from_numpy(y))))


@pytest.mark.parametrize("conditional", [False, True])
def test_refinenet_blocks_match_torch(torch_ref, feature_batch, conditional):
    torch, ref = torch_ref
    x, y = feature_batch
    tx, ty = torch.from_numpy(nchw(x)), torch.from_numpy(y)
    num_classes = 4 if conditional else None
    cond = dict(num_classes=num_classes, normalizer=ref.ConditionalInstanceNorm2dPlus)
    norm = (
        normalization.get_normalization("InstanceNorm++", conditional=True, num_classes=4)
        if conditional
        else None
    )
    flax_y = y if conditional else None

    t_crp = ref.CRPBlock(6, 2, **cond)
    randomize_norm_parameters(torch, t_crp)
    crp = layers.CRPBlock(2, pool="avg" if conditional else "max", normalization=norm)
    assert_close(run_flax_block(crp, t_crp, x, flax_y), nhwc(t_crp(tx, ty)))

    t_rcu = ref.RCUBlock(6, 2, 2, **cond)
    randomize_norm_parameters(torch, t_rcu)
    rcu = layers.RCUBlock(2, 2, normalization=norm)
    assert_close(run_flax_block(rcu, t_rcu, x, flax_y), nhwc(t_rcu(tx, ty)))

    # Multi-resolution fusion of an 8x8 and a 5x5 input onto 8x8 (bilinear, align_corners=True).
    small = np.random.default_rng(2).normal(size=(3, 5, 5, 4)).astype(np.float32)
    t_msf = ref.MSFBlock([6, 4], 7, **cond)
    randomize_norm_parameters(torch, t_msf)
    msf = layers.MSFBlock(7, normalization=norm)
    out = run_flax_block(msf, t_msf, [x, small], flax_y, (8, 8))
    assert_close(out, nhwc(t_msf([tx, torch.from_numpy(nchw(small))], ty, (8, 8))))


@pytest.mark.parametrize(
    "resample, dilation, adjust_padding, size",
    [
        ("down", None, False, 8),  # ConvMeanPool conv + 1x1 ConvMeanPool shortcut
        ("down", 2, False, 8),  # dilated: 3x3 dilated shortcut, no downsampling
        ("down", None, True, 7),  # ZeroPad2d((1, 0, 1, 0)) before the conv: 7 -> 8 -> 4
        (None, None, False, 8),  # width change: 1x1 shortcut
        (None, 4, False, 8),  # dilated, width change: dilated 3x3 shortcut
    ],
)
@pytest.mark.parametrize("conditional", [False, True])
def test_residual_blocks_match_torch(torch_ref, resample, dilation, adjust_padding, size, conditional):
    torch, ref = torch_ref
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, size, size, 4)).astype(np.float32)
    y = np.array([2, 0])
    if conditional:
        t_block = ref.ResidualBlock(
            4,
            6,
            resample=resample,
            normalization=ref.ConditionalInstanceNorm2dPlus,
            adjust_padding=adjust_padding,
            dilation=dilation,
            num_classes=3,
        )
        norm = normalization.get_normalization("InstanceNorm++", conditional=True, num_classes=3)
    else:
        t_block = ref.ResidualBlock(
            4,
            6,
            resample=resample,
            normalization=ref.InstanceNorm2dPlus,
            adjust_padding=adjust_padding,
            dilation=dilation,
        )
        norm = normalization.get_normalization("InstanceNorm++", conditional=False)
    randomize_norm_parameters(torch, t_block)
    block = layers.ResidualBlock(
        6, normalization=norm, resample=resample, dilation=dilation, adjust_padding=adjust_padding
    )
    out = run_flax_block(block, t_block, x, y if conditional else None)
    expected = nhwc(t_block(torch.from_numpy(nchw(x)), torch.from_numpy(y)))
    assert out.shape == expected.shape
    assert_close(out, expected)


@pytest.mark.parametrize(
    "kind, ngf, image_size",
    [("ncsn", 8, 16), ("ncsnv2", 8, 16), ("ncsnv2_deeper", 4, 16), ("ncsnv2_deepest", 4, 16)],
)
def test_whole_networks_match_torch_after_conversion(torch_ref, kind, ngf, image_size):
    torch, ref = torch_ref
    config = make_config(kind, ngf=ngf, image_size=image_size, num_channels=3, num_scales=5, sigma_max=2.0)
    sigmas = noise.geometric_sigmas(2.0, 0.01, 5)
    t_model = ref.RefineNet(kind, ngf, 3, image_size, sigmas)
    randomize_norm_parameters(torch, t_model)
    state = {f"module.{k}": v for k, v in t_model.state_dict().items()}  # as saved under DataParallel
    if kind == "ncsn":
        del state["module.sigmas"]  # NCSN's model has no sigma buffer
    variables = convert.from_torch_state_dict(state, config)

    rng = np.random.default_rng(4)
    x = rng.uniform(size=(3, image_size, image_size, 3)).astype(np.float32)
    y = np.array([0, 2, 4])
    expected = nhwc(t_model(torch.from_numpy(nchw(x)), torch.from_numpy(y)))
    model = models.create(config)
    out = np.asarray(models.get_score_fn(model, variables)(jnp.asarray(x), jnp.asarray(sigmas[y])))
    assert_close(out, expected)


# ----------------------------------------------------------------------------------------------------------
# Reading the reference runners' .pth files.
# ----------------------------------------------------------------------------------------------------------


def test_load_torch_checkpoint_formats(torch_ref, tmp_path):
    torch, ref = torch_ref
    sigmas = noise.geometric_sigmas(2.0, 0.01, 5)
    t_model = ref.RefineNet("ncsnv2", 4, 1, 8, sigmas)
    optimizer = torch.optim.Adam(t_model.parameters(), lr=1e-3)
    t_model(torch.rand(2, 1, 8, 8), torch.tensor([0, 1])).square().mean().backward()
    optimizer.step()
    model_state = {f"module.{k}": v for k, v in t_model.state_dict().items()}
    # EMAHelper's shadow: parameters only, keys without "module.", values slightly different.
    ema_state = {k: v.detach().clone() * 0.5 for k, v in t_model.named_parameters()}

    ncsnv2_path = tmp_path / "checkpoint_v2.pth"
    torch.save([model_state, optimizer.state_dict(), 7, 1234, ema_state], ncsnv2_path)
    loaded = convert.load_torch_checkpoint(str(ncsnv2_path))
    assert loaded["step"] == 1234 and loaded["epoch"] == 7
    assert set(loaded["model"]) == set(model_state) and set(loaded["ema"]) == set(ema_state)
    assert all(isinstance(v, np.ndarray) for v in loaded["model"].values())
    np.testing.assert_array_equal(
        loaded["model"]["module.begin_conv.weight"], model_state["module.begin_conv.weight"].numpy()
    )

    config = make_config("ncsnv2", ngf=4, image_size=8, num_channels=1, num_scales=5, sigma_max=2.0)
    params = convert.from_torch_state_dict(loaded["model"], config)["params"]
    ema = convert.from_torch_state_dict(loaded["ema"], config)["params"]
    np.testing.assert_allclose(
        ema["end_conv"]["bias"], 0.5 * np.asarray(params["end_conv"]["bias"]), rtol=1e-6
    )

    ncsn_path = tmp_path / "checkpoint_v1.pth"  # NCSN saves [model_state, optimizer_state]
    torch.save([model_state, optimizer.state_dict()], ncsn_path)
    loaded = convert.load_torch_checkpoint(str(ncsn_path))
    assert loaded["ema"] is None and loaded["step"] is None and set(loaded["model"]) == set(model_state)

    bare_path = tmp_path / "state_dict.pth"
    torch.save(t_model.state_dict(), bare_path)
    assert set(convert.load_torch_checkpoint(str(bare_path))["model"]) == set(t_model.state_dict())

    bad_path = tmp_path / "bad.pth"
    torch.save([1, 2, 3], bad_path)
    with pytest.raises(errors.UserError, match="model state dict"):
        convert.load_torch_checkpoint(str(bad_path))
