"""The experiment configs: every file builds and validates, the published ones hold the papers' numbers and
agree with NCSNv2's techniques, and the CIFAR-10 / MNIST / CelebA ones take one train step and one short
sampling pass through ``train.train`` and ``generate.sample`` on mock TFDS data with the published networks.

Published values: NCSN (Song & Ermon 2019, ``ermongroup/ncsn`` ``anneal.yml``) and NCSNv2 (Song & Ermon
2020, ``ermongroup/ncsnv2`` ``cifar10.yml`` / ``celeba.yml``); our ``step_lr`` is twice the reference code's
(see the README). Parameter counts are those of the reference PyTorch models given in the models issue.
"""

from __future__ import annotations

import glob
import importlib
import os
import struct

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest

from ncsn_jax import checkpointing, config_lib, errors, generate, models, noise, train, train_state
from tests.helpers import REPO, sample_dir

CONFIG_NAMES = sorted(
    os.path.splitext(os.path.basename(path))[0]
    for path in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if not path.endswith("__init__.py")
)

# Trainable parameters of the reference PyTorch models (NCSN's embeddings counted for its 10 levels).
PUBLISHED_PARAMS = {
    "cifar10": 29_694_083,  # NCSNv2, ngf 128, 32 px
    "celeba": 29_694_083,  # NCSNv2, ngf 128, 64 px (same layers as 32 px)
    "cifar10_ncsn": 30_117_635,  # CondRefineNetDilated, ngf 128, 10 levels
    "mnist": 7_638_657,  # CondRefineNetDilated, ngf 64, 28x28x1, 10 levels
}

_NCSN = dict(
    model=dict(name="ncsn", sigma_max=1.0, sigma_min=0.01, num_scales=10, ema_rate=0.0),
    training=dict(batch_size=128, n_iters=200_001),
    optim=dict(lr=1e-3),
    sampling=dict(n_steps_each=100, step_lr=2 * 2e-5, denoise=False),
)
PUBLISHED = {
    "cifar10": dict(
        data=dict(dataset="cifar10", image_size=32, num_channels=3),
        model=dict(name="ncsnv2", ngf=128, sigma_max=50.0, sigma_min=0.01, num_scales=232, ema_rate=0.999),
        training=dict(batch_size=128, n_iters=300_001),
        optim=dict(lr=1e-4),
        sampling=dict(n_steps_each=5, step_lr=2 * 6.2e-6, denoise=True),
    ),
    "celeba": dict(
        data=dict(dataset="celeba", image_size=64, num_channels=3),
        model=dict(name="ncsnv2", ngf=128, sigma_max=90.0, sigma_min=0.01, num_scales=500, ema_rate=0.999),
        training=dict(batch_size=128, n_iters=210_001),
        optim=dict(lr=1e-4),
        sampling=dict(n_steps_each=5, step_lr=2 * 3.3e-6, denoise=True),
    ),
    "cifar10_ncsn": dict(
        _NCSN,
        data=dict(dataset="cifar10", image_size=32, num_channels=3),
        model=dict(_NCSN["model"], ngf=128),
    ),
    "mnist": dict(
        _NCSN,
        data=dict(dataset="mnist", image_size=28, num_channels=1, random_flip=False),
        model=dict(_NCSN["model"], ngf=64),
    ),
}


def load_config(name: str) -> ml_collections.ConfigDict:
    return importlib.import_module(f"configs.{name}").get_config()


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
    names = set()
    for key, value in config.items():
        names |= (
            field_names(value, f"{prefix}{key}.")
            if isinstance(value, ml_collections.ConfigDict)
            else {prefix + key}
        )
    return names


# ----------------------------------------------------------------------------------------------------------
# Cheap checks on every config file.
# ----------------------------------------------------------------------------------------------------------


def test_the_issue_configs_are_all_there():
    assert set(PUBLISHED) | {"default", "digits", "toy"} <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_loads_validates_and_builds(name):
    config = load_config(name)
    config_lib.validate(config)
    # Experiment files only override configs/default.py: no field is added (a typo) or lost.
    assert field_names(config) == field_names(load_config("default"))
    assert isinstance(models.create(config), nn.Module)


def test_single_noise_level_needs_equal_sigmas_a_number_for_step_lr_and_unconditional_needs_one_level():
    config = load_config("toy_single_sigma")
    config_lib.validate(config)  # num_scales=1, sigma_max == sigma_min, unconditional MLP
    assert config_lib.sigmas(config).tolist() == [0.5]
    with config.unlocked():
        config.model.sigma_max = 1.0
    with pytest.raises(errors.UserError, match="sigma_max equal to"):
        config_lib.validate(config)
    config = load_config("toy_single_sigma")
    config.sampling.step_lr = "auto"
    with pytest.raises(errors.UserError, match="needs a geometric schedule"):
        config_lib.validate(config)
    config = load_config("toy")
    config.model.sigma_conditioning = "none"  # ten levels, but a network that cannot tell them apart
    with pytest.raises(errors.UserError, match="unconditional network"):
        config_lib.validate(config)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_hyperparameters(name):
    config = load_config(name)
    for section, fields in PUBLISHED[name].items():
        for field, value in fields.items():
            expected = value if isinstance(value, str) else pytest.approx(value, rel=1e-12)
            assert config[section][field] == expected, f"config.{section}.{field}"
    sigmas = config_lib.sigmas(config)
    published = PUBLISHED[name]["model"]
    assert len(sigmas) == published["num_scales"]
    np.testing.assert_allclose(
        [sigmas[0], sigmas[-1]], [published["sigma_max"], published["sigma_min"]], rtol=1e-6
    )
    np.testing.assert_allclose(sigmas[1:] / sigmas[:-1], sigmas[1] / sigmas[0], rtol=1e-5)  # geometric


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_architectures_have_the_published_parameter_counts(name):
    config = load_config(name)
    model = models.create(config)
    abstract = models.abstract_variables(model, (1, *models.example_shape(config)))["params"]
    assert models.count_params(abstract) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name, overlap_levels", [("cifar10", 219), ("celeba", None)])
def test_ncsnv2_configs_agree_with_the_techniques(name, overlap_levels):
    """Technique 2 (overlap criterion) and 4 (step size) on the configs' sigma range and data dimension."""
    config = load_config(name)
    dim = int(np.prod(models.example_shape(config)))
    sigma_max, sigma_min, levels = config.model.sigma_max, config.model.sigma_min, config.model.num_scales
    criterion_levels = noise.num_scales_for_overlap(sigma_max, sigma_min, dim)
    if overlap_levels is not None:
        assert criterion_levels == overlap_levels
    assert abs(levels - criterion_levels) <= 0.1 * levels  # the published L lies in its neighbourhood ...
    gamma = (sigma_max / sigma_min) ** (1.0 / (levels - 1))
    assert float(noise.overlap(gamma, dim)) >= 0.5  # ... on the side of more overlap than the criterion asks
    # Technique 4 for the published L and T reproduces the published step size (ours = 2 x reference).
    step_lr = noise.langevin_step_lr(config_lib.sigmas(config), dim, config.sampling.n_steps_each)
    assert step_lr == pytest.approx(config.sampling.step_lr, rel=0.02)
    reference = noise.langevin_step_lr(
        config_lib.sigmas(config), dim, config.sampling.n_steps_each, convention="reference"
    )
    assert reference == pytest.approx(config.sampling.step_lr / 2, rel=0.02)


def test_cifar10_step_size_of_technique_4():
    sigmas = noise.geometric_sigmas(50.0, 0.01, 232)
    assert noise.langevin_step_lr(sigmas, 32 * 32 * 3, 5) == pytest.approx(1.24e-5, rel=0.01)


# ----------------------------------------------------------------------------------------------------------
# One train step and one sampling pass with the published networks on mock TFDS data.
# ----------------------------------------------------------------------------------------------------------

BATCH = 2
SAMPLES = 2


def smoke_config(name: str) -> ml_collections.ConfigDict:
    """The published config with the architecture untouched and everything else made cheap.

    NCSNv2 gets 3 noise levels (σ₁ and σ_L as published), so that the sampling pass is short; its parameters
    do not depend on L. NCSN keeps its 10 levels: its conditional norms hold one embedding row per level.
    """
    config = load_config(name)
    config.training.n_iters = 1
    config.training.batch_size = BATCH
    config.training.log_freq = 1
    config.training.snapshot_freq = 1
    config.training.snapshot_sampling = False
    if config.model.name != "ncsn":
        config.model.num_scales = 3
    config.sampling.n_steps_each = 1
    config.sampling.batch_size = SAMPLES
    return config


def read_scalars(event_dir: str) -> dict[str, dict[int, float]]:
    """``tag -> {step: value}`` from the TensorBoard event files in ``event_dir`` (TFRecord framing)."""
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

    scalars: dict[str, dict[int, float]] = {}
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            record = data[offset + 12 : offset + 12 + length]  # skip length + its CRC
            offset += 12 + length + 4  # skip the record's CRC
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


@pytest.fixture(scope="module")
def mock_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8):
        yield


# About 30-40 s each on 2 CPU cores, nearly all of it XLA compiling the full-size train step.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10", "cifar10_ncsn", "mnist", "celeba"])
def test_one_train_step_and_a_sampling_pass(name, mock_tfds, tmp_path):
    config = smoke_config(name)
    workdir = str(tmp_path / name)
    train.train(config, workdir)
    out_dir = generate.sample(config, workdir)

    # The checkpoint holds one update of the published network.
    model = models.create(config)
    example_shape = models.example_shape(config)
    optimizer = train_state.create_optimizer(config.optim)
    template = train_state.abstract_train_state(model, config, example_shape, optimizer)
    state, meta = checkpointing.CheckpointStore(workdir, read_only=True).restore(template, config)
    assert meta["step"] == 1 and int(state.step) == 1 and int(state.nonfinite_count) == 0
    assert models.count_params(state.params) == PUBLISHED_PARAMS[name]
    np.testing.assert_allclose(meta["sigmas"], config_lib.sigmas(config), rtol=1e-6)

    # That update is Adam's first step from the seed's initialisation, p₁ = p₀ − lr·m̂/(√v̂ + ε) with the
    # stored moments (≈ lr·sign(g) per weight), and the EMA moved to m·p₀ + (1 − m)·p₁.
    initial = train_state.init_train_state(model, config, example_shape, optimizer).params
    lr, m = config.optim.lr, config.model.ema_rate
    adam = config.optim
    leaves = [
        jax.tree.leaves(tree)
        for tree in (
            initial,
            state.params,
            state.ema_params,
            optax.tree_utils.tree_get(state.opt_state, "mu"),
            optax.tree_utils.tree_get(state.opt_state, "nu"),
        )
    ]
    moved = 0
    for p0, p1, ema, mu, nu in zip(*leaves, strict=True):
        p0, p1, ema, mu, nu = (np.asarray(a, np.float64) for a in (p0, p1, ema, mu, nu))
        update = -lr * (mu / (1 - adam.beta1)) / (np.sqrt(nu / (1 - adam.beta2)) + adam.eps)
        tolerance = 1e-3 * lr + 2.0**-23 * (np.abs(p0) + np.abs(p1))  # float32 rounding of the weights
        assert np.all(np.abs(p1 - p0 - update) <= tolerance)
        assert np.all(np.abs(ema - (m * p0 + (1 - m) * p1)) <= tolerance)
        moved += int(np.sum(np.abs(p1 - p0) > 0.5 * lr))
    assert moved > 0.9 * PUBLISHED_PARAMS[name]  # nearly every weight took a step of about lr

    # The logged loss is the mean of the per-level losses of the levels the batch drew.
    scalars = read_scalars(os.path.join(workdir, "tensorboard"))
    loss = scalars["train/loss"][1]
    per_level = {tag: values[1] for tag, values in scalars.items() if tag.startswith("train_loss_per_level/")}
    assert np.isfinite(loss) and 1 <= len(per_level) <= BATCH
    sigma_labels = {f"{s:.3g}" for s in meta["sigmas"]}
    assert all(tag.rsplit("_sigma_", 1)[1] in sigma_labels for tag in per_level)
    if len(per_level) == BATCH:  # each example drew its own level
        assert loss == pytest.approx(np.mean(list(per_level.values())), rel=1e-5)
    else:
        assert loss == pytest.approx(next(iter(per_level.values())), rel=1e-5)

    samples = np.load(os.path.join(out_dir, "samples.npz"))["samples"]
    assert out_dir == sample_dir(workdir, 1)
    assert samples.shape == (SAMPLES, *example_shape) and samples.dtype == np.float32
    assert np.all(np.isfinite(samples))
    assert os.path.isfile(os.path.join(out_dir, "samples.png"))


def test_sde_sampling_fields_are_checked_for_pc_and_ode():
    config = load_config("toy")
    config.sampling.method = "pc"
    config.sampling.predictor = "reverse"
    with pytest.raises(errors.UserError, match="config.sampling.predictor='reverse' is not valid"):
        config_lib.validate(config)
    config.sampling.predictor = "ancestral"
    config.sampling.num_steps = 1
    with pytest.raises(errors.UserError, match="num_steps=1"):
        config_lib.validate(config)
    config.sampling.num_steps = 0
    config_lib.validate(config)
