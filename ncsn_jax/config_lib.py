"""Config checks and derived quantities: validation, ``"auto"`` fields, the noise schedule, saved copies.

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

from ncsn_jax import losses, noise

AUTO = "auto"


def is_auto(value: Any) -> bool:
    """Whether a config value is the placeholder ``"auto"`` (computed from data)."""
    return isinstance(value, str) and value.lower() == AUTO


def _check_number_or_auto(name: str, value: Any) -> None:
    if is_auto(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"config.{name}={value!r} must be a number or 'auto'.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` with an actionable message for inconsistent or unknown settings."""
    from ncsn_jax import datasets, models  # pylint: disable=g-import-not-at-top

    if config.training.loss not in losses.LOSSES:
        raise ValueError(
            f"config.training.loss={config.training.loss!r} is not a known objective; "
            f"valid: {', '.join(losses.LOSSES)}."
        )
    if config.model.name not in models.MODEL_NAMES:
        raise ValueError(
            f"config.model.name={config.model.name!r} is not a known model; "
            f"valid: {', '.join(models.MODEL_NAMES)}."
        )
    if config.data.dataset not in datasets.DATASET_NAMES:
        raise ValueError(
            f"config.data.dataset={config.data.dataset!r} is not a known dataset; "
            f"valid: {', '.join(datasets.DATASET_NAMES)}."
        )
    _check_number_or_auto("model.sigma_max", config.model.sigma_max)
    _check_number_or_auto("model.num_scales", config.model.num_scales)
    _check_number_or_auto("sampling.step_lr", config.sampling.step_lr)
    if not is_auto(config.model.sigma_max) and not config.model.sigma_max > config.model.sigma_min > 0:
        raise ValueError(
            f"Need config.model.sigma_max > config.model.sigma_min > 0, got "
            f"{config.model.sigma_max} and {config.model.sigma_min}."
        )
    if not is_auto(config.model.num_scales) and (
        int(config.model.num_scales) != config.model.num_scales or config.model.num_scales < 1
    ):
        raise ValueError(f"config.model.num_scales={config.model.num_scales!r} must be a positive integer.")
    for name in ("n_iters", "batch_size", "log_freq", "snapshot_freq", "preemption_freq"):
        if config.training[name] < 1:
            raise ValueError(f"config.training.{name}={config.training[name]} must be >= 1.")
    if not 0.0 <= config.model.ema_rate < 1.0:
        raise ValueError(f"config.model.ema_rate={config.model.ema_rate} must lie in [0, 1).")


def loss_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword options of ``losses.get_loss_fn`` that the config sets for its objective."""
    options: dict[str, Any] = {"anneal_power": config.training.anneal_power}
    if config.training.loss in ("ssm", "ssm_vr"):
        options.update(n_projections=config.training.n_projections, projection=config.training.projection)
    return options


def sigmas(config: ml_collections.ConfigDict) -> np.ndarray:
    """The descending geometric noise levels σ₁ > … > σ_L of a config whose ``"auto"`` fields are resolved."""
    for name in ("sigma_max", "num_scales"):
        if is_auto(config.model[name]):
            raise ValueError(f"config.model.{name} is 'auto': resolve it first (resolve_auto_fields).")
    return np.asarray(
        noise.geometric_sigmas(
            float(config.model.sigma_max), float(config.model.sigma_min), int(config.model.num_scales)
        ),
        np.float32,
    )


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


def save(config: ml_collections.ConfigDict, resolved: dict[str, Any], workdir: str) -> None:
    """Write the effective config (``"auto"`` resolved) to ``workdir/config.json`` for the record."""
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"config": json.loads(config.to_json_best_effort()), "resolved": resolved}, f, indent=2)
