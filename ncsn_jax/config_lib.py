"""Config checks and derived quantities: validation, ``"auto"`` fields, the noise schedule, saved copies.

* :func:`validate` — every setting checked up front, as :class:`~ncsn_jax.errors.UserError`.
* :func:`sigmas` — THE noise table of a config, σᵢ = σ₁ (σ_L/σ₁)^((i−1)/(L−1)); training, sampling, the
  index-conditioned NCSN and checkpoint conversion all take it from here.
* :func:`save` / :func:`check_workdir` — ``workdir/config.json``, and the check that a workdir holds a run
  of the same model, dataset and example shape before anything is read or written there.

``"auto"`` fields are NCSNv2's techniques computed from the training data (Song & Ermon 2020, §3):

* ``model.sigma_max``  — technique 1: σ₁ ≈ the maximum pairwise Euclidean distance between training points.
* ``model.num_scales`` — technique 2: the fewest geometric levels whose neighbours overlap enough
    (:func:`ncsn_jax.noise.num_scales_for_overlap`).
* ``sampling.step_lr`` — technique 4: ε from the step-size criterion (:func:`ncsn_jax.noise.langevin_step_lr`).

Their values are logged, stored in every checkpoint's metadata and in ``workdir/config.json``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from ncsn_jax import errors, losses, noise

AUTO = "auto"
CONFIG_FILE = "config.json"
SAMPLING_METHODS = ("annealed_langevin", "pc", "ode", "inpainting", "interpolation")
GENERATIVE_METHODS = ("annealed_langevin", "pc", "ode")  # the methods that draw samples from scratch
SAMPLING_INITS = ("uniform", "gaussian")


def is_auto(value: Any) -> bool:
    """Whether a config value is the placeholder ``"auto"`` (computed from data)."""
    return isinstance(value, str) and value.lower() == AUTO


def _check_number_or_auto(name: str, value: Any) -> None:
    if is_auto(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.UserError(f"config.{name}={value!r} must be a number or 'auto'.")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise errors.UserError(message)


def _check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    _require(value in valid, f"config.{name}={value!r} is not valid; valid: {', '.join(valid)}.")


def _check_model_fields(model: ml_collections.ConfigDict) -> None:
    """The names the networks look up only when they are first called."""
    from ncsn_jax.models import layers, mlp, normalization, registry  # pylint: disable=g-import-not-at-top

    _check_choice("model.nonlinearity", str(model.nonlinearity).lower(), tuple(layers.ACTIVATIONS))
    _check_choice("model.dtype", model.dtype, tuple(registry.DTYPES))
    _check_choice(
        "model.normalization",
        str(model.normalization).removeprefix("Conditional"),
        normalization.normalization_names(),
    )
    _check_choice("model.sigma_conditioning", model.sigma_conditioning, mlp.SIGMA_CONDITIONINGS)


def _check_sde_sampling(sampling: ml_collections.ConfigDict) -> None:
    """The fields of ``method="pc"`` / ``"ode"`` (:mod:`ncsn_jax.sde_sampling`)."""
    from ncsn_jax import sde_sampling  # pylint: disable=g-import-not-at-top  (imports diffrax)

    _check_choice("sampling.predictor", sampling.predictor, sde_sampling.PREDICTORS)
    _check_choice("sampling.corrector", sampling.corrector, sde_sampling.CORRECTORS)
    _check_choice("sampling.ode_solver", sampling.ode_solver, tuple(sde_sampling.ODE_SOLVERS))
    _require(
        sampling.num_steps == 0 or sampling.num_steps >= 2,
        f"config.sampling.num_steps={sampling.num_steps}: 0 (the model's own noise table) or >= 2 levels.",
    )
    _require(sampling.n_steps_corrector >= 1, "config.sampling.n_steps_corrector must be >= 1.")
    _require(sampling.snr > 0, f"config.sampling.snr={sampling.snr} must be positive.")
    for name in ("ode_rtol", "ode_atol"):
        _require(sampling[name] > 0, f"config.sampling.{name}={sampling[name]} must be positive.")
    _require(0 < sampling.ode_eps < 1, f"config.sampling.ode_eps={sampling.ode_eps} must lie in (0, 1).")


def _check_evaluation(config: ml_collections.ConfigDict) -> None:
    evaluation = config.eval
    for name in ("num_samples", "batch_size", "inception_batch_size", "loss_examples", "n_projections"):
        _require(evaluation[name] >= 1, f"config.eval.{name}={evaluation[name]} must be >= 1.")
    for name in ("likelihood_examples", "likelihood_batch_size"):
        _require(evaluation[name] >= 1, f"config.eval.{name}={evaluation[name]} must be >= 1.")
    _require(evaluation.kid_subset >= 2, f"config.eval.kid_subset={evaluation.kid_subset} must be >= 2.")
    _require(config.training.eval_freq >= 0, "config.training.eval_freq must be >= 0 (0: no held-out loss).")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise :class:`~ncsn_jax.errors.UserError` with an actionable message for inconsistent or unknown
    settings (before anything is built, read or written)."""
    from ncsn_jax import datasets, models  # pylint: disable=g-import-not-at-top

    if config.training.loss not in losses.LOSSES:
        raise errors.UserError(
            f"config.training.loss={config.training.loss!r} is not a known objective; "
            f"valid: {', '.join(losses.LOSSES)}."
        )
    if config.model.name not in models.MODEL_NAMES:
        raise errors.UserError(
            f"config.model.name={config.model.name!r} is not a known model; "
            f"valid: {', '.join(models.MODEL_NAMES)}."
        )
    if config.data.dataset not in datasets.DATASET_NAMES:
        raise errors.UserError(
            f"config.data.dataset={config.data.dataset!r} is not a known dataset; "
            f"valid: {', '.join(datasets.DATASET_NAMES)}."
        )
    _check_model_fields(config.model)
    models.registry.check_example_shape(config.model.name, models.example_shape(config), config.data.dataset)
    _check_number_or_auto("model.sigma_max", config.model.sigma_max)
    _check_number_or_auto("model.num_scales", config.model.num_scales)
    _check_number_or_auto("sampling.step_lr", config.sampling.step_lr)
    single_level = not is_auto(config.model.num_scales) and config.model.num_scales == 1
    if single_level:
        if is_auto(config.model.sigma_max) or not config.model.sigma_max == config.model.sigma_min > 0:
            raise errors.UserError(
                "config.model.num_scales=1 trains at a single noise level: set config.model.sigma_max equal to "
                f"config.model.sigma_min (> 0); got {config.model.sigma_max} and {config.model.sigma_min}."
            )
        if is_auto(config.sampling.step_lr):
            raise errors.UserError(
                "config.sampling.step_lr='auto' (technique 4) needs a geometric schedule of >= 2 levels; "
                "set a number for config.model.num_scales=1."
            )
    elif not is_auto(config.model.sigma_max) and not config.model.sigma_max > config.model.sigma_min > 0:
        raise errors.UserError(
            f"Need config.model.sigma_max > config.model.sigma_min > 0, got "
            f"{config.model.sigma_max} and {config.model.sigma_min} (or config.model.num_scales=1 with "
            "sigma_max == sigma_min for a single noise level)."
        )
    if config.model.name == "mlp" and config.model.get("sigma_conditioning") == "none" and not single_level:
        raise errors.UserError(
            "config.model.sigma_conditioning='none' is an unconditional network: it cannot tell noise levels "
            "apart, so it needs config.model.num_scales=1 (one level, sigma_max == sigma_min); use 'embedding' "
            "or 'scale' for several levels."
        )
    if not is_auto(config.model.num_scales) and (
        int(config.model.num_scales) != config.model.num_scales or config.model.num_scales < 1
    ):
        raise errors.UserError(
            f"config.model.num_scales={config.model.num_scales!r} must be a positive integer."
        )
    for name in ("n_iters", "batch_size", "log_freq", "snapshot_freq", "preemption_freq", "n_projections"):
        _require(config.training[name] >= 1, f"config.training.{name}={config.training[name]} must be >= 1.")
    _require(
        0.0 <= config.model.ema_rate < 1.0,
        f"config.model.ema_rate={config.model.ema_rate} must lie in [0, 1).",
    )
    _check_choice("training.projection", config.training.projection, losses.PROJECTIONS)
    _check_choice("optim.optimizer", config.optim.optimizer.lower(), ("adam",))
    _check_choice("sampling.method", config.sampling.method, SAMPLING_METHODS)
    _check_choice("sampling.init", config.sampling.init, SAMPLING_INITS)
    for name in ("batch_size", "n_steps_each"):
        _require(config.sampling[name] >= 1, f"config.sampling.{name}={config.sampling[name]} must be >= 1.")
    _require(
        config.sampling.n_interpolations >= 2,
        f"config.sampling.n_interpolations={config.sampling.n_interpolations} must be >= 2.",
    )
    if config.sampling.method in ("pc", "ode"):  # (imports diffrax only for them)
        _check_sde_sampling(config.sampling)
    _check_evaluation(config)
    for name in ("trajectory_every", "snapshot_batch_size", "seed", "num_samples"):
        _require(config.sampling[name] >= 0, f"config.sampling.{name}={config.sampling[name]} must be >= 0.")
    _require(
        not isinstance(config.seed, bool) and int(config.seed) == config.seed and config.seed >= 0,
        f"config.seed={config.seed!r} must be a non-negative integer.",
    )


def loss_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword options of ``losses.get_loss_fn`` that the config sets for its objective."""
    options: dict[str, Any] = {"anneal_power": config.training.anneal_power}
    if config.training.loss in ("ssm", "ssm_vr"):
        options.update(n_projections=config.training.n_projections, projection=config.training.projection)
    return options


sigmas = noise.config_sigmas
"""The descending geometric noise levels σ₁ > … > σ_L (float32) of ``config.model.{sigma_max, sigma_min,
num_scales}``, whose ``"auto"`` fields must be resolved: σᵢ = σ₁ (σ_L/σ₁)^((i−1)/(L−1)).

The one table of a config (the function :func:`ncsn_jax.noise.config_sigmas` itself, which the models use
without importing this module): the train step, the samplers, NCSN's level lookup and the check of a
converted checkpoint's ``sigmas`` buffer all use it.
"""


def resolve_auto_fields(
    config: ml_collections.ConfigDict, dataset, *, max_points: int = 10_000
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """Replace every ``"auto"`` field by its value computed from ``dataset`` (NCSNv2's techniques).

    Returns:
        ``(config, resolved)``: a copy of ``config`` with numbers in place of ``"auto"`` and a dict of the
        values that were computed (empty when nothing was ``"auto"``), to be stored with checkpoints.
    """
    resolved: dict[str, Any] = {}
    dim = int(np.prod(dataset.example_shape))
    if is_auto(config.model.sigma_max):
        examples = dataset.sample_examples(max_points, seed=config.seed)
        resolved["model.sigma_max"] = float(noise.max_pairwise_distance(examples, max_points=max_points))
        logging.info(
            "sigma_max = %.4g: max pairwise distance of %d training examples (technique 1).",
            resolved["model.sigma_max"],
            len(examples),
        )
    sigma_max = resolved.get("model.sigma_max", config.model.sigma_max)
    if is_auto(config.model.num_scales):
        resolved["model.num_scales"] = int(
            noise.num_scales_for_overlap(float(sigma_max), float(config.model.sigma_min), dim)
        )
        logging.info(
            "num_scales = %d: overlap criterion for D=%d between sigma %.4g and %.4g (technique 2).",
            resolved["model.num_scales"],
            dim,
            sigma_max,
            config.model.sigma_min,
        )
    config, step_lr = resolve_auto_step_lr(apply_resolved(config, resolved), dim)
    return config, {**resolved, **step_lr}


def resolve_auto_step_lr(
    config: ml_collections.ConfigDict, dim: int
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """If ``config.sampling.step_lr`` is ``"auto"``, set it by technique 4 on the config's noise levels (which
    must be numbers by then) for data of dimension ``dim``; returns ``(config, resolved)`` as
    :func:`resolve_auto_fields` does."""
    if not is_auto(config.sampling.step_lr):
        return config, {}
    resolved = {
        "sampling.step_lr": float(noise.langevin_step_lr(sigmas(config), dim, config.sampling.n_steps_each))
    }
    logging.info(
        "step_lr = %.4g (our convention): step-size criterion with T=%d (technique 4).",
        resolved["sampling.step_lr"],
        config.sampling.n_steps_each,
    )
    return apply_resolved(config, resolved), resolved


def apply_resolved(config: ml_collections.ConfigDict, resolved: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted fields (``"model.sigma_max"`` …) set to the values in ``resolved``."""
    fields = config.to_dict()  # a deep copy; plain dicts, so "auto" (a str) may become a number
    for dotted, value in resolved.items():
        section, field = dotted.split(".")
        fields[section][field] = value
    return ml_collections.ConfigDict(fields)


def model_signature(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config fields that fix parameter shapes; checkpoints store them to explain a mismatch."""
    keys = ("name", "ngf", "num_scales", "hidden_dims", "sigma_conditioning", "normalization")
    signature = {k: config.model.get(k) for k in keys if k in config.model}
    signature.update(
        image_size=config.data.image_size, num_channels=config.data.num_channels, dataset=config.data.dataset
    )
    return json.loads(json.dumps(signature, default=list))


def run_identity(config: ml_collections.ConfigDict, example_shape: tuple[int, ...]) -> dict[str, Any]:
    """What a workdir must keep across runs: the model, the dataset and the shape of one example."""
    return {
        "model": str(config.model.name),
        "dataset": str(config.data.dataset),
        "example_shape": [int(d) for d in example_shape],
    }


def save(
    config: ml_collections.ConfigDict, resolved: dict[str, Any], workdir: str, example_shape: tuple[int, ...]
) -> None:
    """Write the effective config (``"auto"`` resolved) to ``workdir/config.json``, with the run's identity
    (:func:`run_identity`) that :func:`check_workdir` compares later runs with."""
    record = {
        "config": json.loads(config.to_json_best_effort()),
        "resolved": resolved,
        "example_shape": [int(d) for d in example_shape],
    }
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        json.dump(record, f, indent=2)


def _describe(identity: dict[str, Any]) -> str:
    shape = tuple(identity["example_shape"])
    return f"model {identity['model']!r} on {identity['dataset']!r} data (examples of shape {shape})"


def check_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    example_shape: tuple[int, ...],
    stored: dict[str, Any] | None = None,
) -> None:
    """Raise :class:`~ncsn_jax.errors.WorkdirMismatchError` if ``workdir`` holds a run of another model,
    dataset or example shape than ``config`` asks for; reads only (``workdir/config.json``).

    Args:
        config: the config of this run.
        workdir: the run's workdir (need not exist).
        example_shape: the shape of one example of this run's data.
        stored: the identity to compare with instead of the one in ``config.json`` (a checkpoint's metadata:
            ``{"model": {"name", "dataset"}, "example_shape"}``), where the workdir has no ``config.json``.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if stored is None and os.path.isfile(path):
        try:
            with open(path) as f:
                record = json.load(f)
            fields = record["config"]
            theirs = {
                "model": fields["model"]["name"],
                "dataset": fields["data"]["dataset"],
                "example_shape": list(record.get("example_shape") or ()),
            }
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise errors.WorkdirMismatchError(
                f"--workdir={workdir} has an unreadable {CONFIG_FILE} ({type(e).__name__}: {e}); choose "
                "another --workdir or move the file away."
            ) from None
    elif stored is not None and "model" in stored:
        theirs = {
            "model": stored["model"].get("name"),
            "dataset": stored["model"].get("dataset"),
            "example_shape": list(stored.get("example_shape") or ()),
        }
    else:
        return
    ours = run_identity(config, example_shape)
    if not theirs["example_shape"]:  # written before config.json recorded it: compare what there is
        theirs["example_shape"] = ours["example_shape"]
    if theirs != ours:
        raise errors.WorkdirMismatchError(
            f"--workdir={workdir} holds a run of {_describe(theirs)}, but --config asks for {_describe(ours)}; "
            "use the config that run was trained with, or another --workdir."
        )
