"""Load the authors' PyTorch checkpoints (ermongroup/ncsn, ermongroup/ncsnv2) into these Flax models.

The Flax modules are named after the torch modules, with list indices joined by ``_``; the mapping from a
Flax parameter path to its torch state-dict key is therefore mechanical (:func:`torch_key`)::

    ("res2_0", "conv2", "conv", "kernel")            <- "res2.0.conv2.conv.weight"   OIHW -> HWIO
    ("refine1", "adapt_convs_0", "1_1_conv", "kernel") <- "refine1.adapt_convs.0.1_1_conv.weight"
    ("normalizer", "embed", "embedding")             <- "normalizer.embed.weight"    (L, 3C) unchanged
    ("res1_0", "normalize1", "alpha")                <- "res1.0.normalize1.alpha"
    Dense ("...", "kernel") (in, out)                <- "....weight" (out, in)

:func:`from_torch_state_dict` checks that every parameter of ``models.create(config)`` receives exactly one
state-dict entry of the right shape and that no entry is left over (buffers excepted: NCSNv2's ``sigmas``
is compared with the config's geometric table; BatchNorm running statistics are ignored because
:class:`~ncsn_jax.models.normalization.BatchNorm` uses batch statistics). Every problem is reported at
once, naming the keys.

:func:`load_torch_checkpoint` reads the ``.pth`` files of the reference runners: the ``torch.save``d list
``[model_state, optimizer_state, epoch, step, ema_state]`` of NCSNv2 (``ema_state`` only when EMA was on)
or ``[model_state, optimizer_state]`` of NCSN. It needs PyTorch, imported only there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import config_lib, errors, models, noise

# Torch buffers that are not parameters of the Flax models.
SIGMAS_BUFFER = "sigmas"
IGNORED_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
TORCH_INSTALL_HINT = (
    'Reading PyTorch checkpoints needs PyTorch: pip install "ncsn-jax[torch]" '
    "(or pip install torch==2.13.0 for the pinned CPU build)."
)


def torch_key(flax_path: tuple[str, ...]) -> str:
    """The torch state-dict key (without ``module.``) of the Flax parameter at ``flax_path``."""
    *modules, leaf = flax_path
    names = [re.sub(r"_(\d+)$", r".\1", name) for name in modules]
    leaf_names = {"kernel": "weight", "embedding": "weight", "scale": "weight"}
    return ".".join([*names, leaf_names.get(leaf, leaf)])


def torch_to_flax_array(value: np.ndarray, flax_path: tuple[str, ...]) -> np.ndarray:
    """Re-lays a torch tensor out for Flax: conv OIHW -> HWIO, linear (out, in) -> (in, out), else as is."""
    if flax_path[-1] == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if flax_path[-1] == "kernel" and value.ndim == 2:
        return value.T
    return value


def flax_to_torch_shape(shape: tuple[int, ...], flax_path: tuple[str, ...]) -> tuple[int, ...]:
    """Inverse of :func:`torch_to_flax_array` on shapes (the torch shape a Flax parameter expects)."""
    if flax_path[-1] == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if flax_path[-1] == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy array, jax array or torch tensor (bfloat16 / float16 tensors -> float32)."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Removes the ``module.`` prefixes ``torch.nn.DataParallel`` adds; values become numpy arrays."""
    stripped: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = key
        while name.startswith("module."):
            name = name[len("module.") :]
        if name in stripped:
            raise errors.UserError(f"State dict has {name!r} twice (with and without a 'module.' prefix).")
        stripped[name] = to_numpy(value)
    return stripped


def map_state_dict(
    state_dict: Mapping[str, Any],
    target: Any,
    key_fn: Callable[[tuple[str, ...]], str] = torch_key,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Maps ``state_dict`` onto the parameter tree ``target`` (arrays or ``ShapeDtypeStruct``s).

    ``key_fn`` names the state-dict key of each Flax parameter path (default :func:`torch_key`, the naming
    of the score networks). Returns ``(params, leftover)``: the filled tree (float32 jax arrays in
    ``target``'s dtypes) and the entries no parameter used (the caller decides which of those are
    acceptable buffers). Raises :class:`~ncsn_jax.errors.UserError` listing every missing key and every
    shape mismatch.
    """
    source = strip_module_prefix(state_dict)
    flat_target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
    by_key: dict[str, tuple[str, ...]] = {}
    for path in flat_target:
        key = key_fn(path)
        if key in by_key:  # two Flax parameters claiming one torch key: a naming bug, never the user's
            raise AssertionError(f"Flax parameters {by_key[key]} and {path} both map to torch key {key!r}.")
        by_key[key] = path

    missing, mismatched = [], []
    flat_params: dict[tuple[str, ...], jax.Array] = {}
    for key, path in by_key.items():
        expected = flat_target[path]
        if key not in source:
            missing.append(f"{key} (expected shape {flax_to_torch_shape(expected.shape, path)})")
            continue
        value = source[key]
        expected_torch_shape = flax_to_torch_shape(tuple(expected.shape), path)
        if tuple(value.shape) != expected_torch_shape:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} != model {expected_torch_shape}")
            continue
        flat_params[path] = jnp.asarray(torch_to_flax_array(value, path), dtype=expected.dtype)
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} parameter(s) missing from the checkpoint: " + "; ".join(missing))
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched))
        raise errors.UserError("The checkpoint does not fit this model. " + " | ".join(problems))
    leftover = {key: value for key, value in source.items() if key not in by_key}
    return flax.traverse_util.unflatten_dict(flat_params), leftover


def _check_sigmas(sigmas: np.ndarray, config: Any) -> None:
    """Compares a checkpoint's ``sigmas`` buffer with the config's table (skipped for ``"auto"`` fields)."""
    model = config.model
    if config_lib.is_auto(model.sigma_max) or config_lib.is_auto(model.num_scales):
        return  # nothing to compare with
    expected = noise.config_sigmas(config)
    sigmas = np.asarray(sigmas, np.float64).reshape(-1)
    if sigmas.shape != expected.shape or not np.allclose(sigmas, expected, rtol=1e-5, atol=0.0):
        raise errors.UserError(
            f"The checkpoint's noise levels (buffer 'sigmas': {sigmas.size} levels, {sigmas[0]:.6g} -> "
            f"{sigmas[-1]:.6g}) differ from the config's (config.model.sigma_max={model.sigma_max}, "
            f"sigma_min={model.sigma_min}, num_scales={model.num_scales}: {expected.size} levels, "
            f"{expected[0]:.6g} -> {expected[-1]:.6g}); use the config the checkpoint was trained with."
        )


def from_torch_state_dict(state_dict: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """``{"params": ...}`` for ``models.create(config)`` from a reference PyTorch ``state_dict``.

    ``state_dict`` maps names to numpy arrays or torch tensors, with or without ``module.`` prefixes. Every
    parameter must be present exactly once with its torch shape; a ``sigmas`` buffer must match the config's
    noise levels; any other leftover key is an error. Raises :class:`~ncsn_jax.errors.UserError` naming
    every offending key.
    """
    model = models.create(config)
    target = models.abstract_variables(model, (1, *models.example_shape(config)))["params"]
    params, leftover = map_state_dict(state_dict, target)
    unexpected = []
    for key, value in leftover.items():
        if key == SIGMAS_BUFFER:
            _check_sigmas(value, config)
        elif not key.endswith(IGNORED_BUFFER_SUFFIXES):
            unexpected.append(f"{key} {tuple(value.shape)}")
    if unexpected:
        raise errors.UserError(
            f"{len(unexpected)} checkpoint entr{'y' if len(unexpected) == 1 else 'ies'} not used by "
            f"model {config.model.name!r}: " + "; ".join(unexpected)
        )
    return {"params": params}


def _import_torch():
    try:
        import torch  # pylint: disable=g-import-not-at-top
    except ImportError as error:
        raise ImportError(TORCH_INSTALL_HINT) from error
    return torch


def load_torch_checkpoint(path: str, *, trusted: bool = False) -> dict[str, Any]:
    """Reads a reference ``.pth`` file into ``{"model", "ema", "optimizer", "epoch", "step"}``.

    ``model`` and ``ema`` are ``dict[str, np.ndarray]`` (``ema`` is None when the file has none; ``epoch``
    and ``step`` likewise). Accepts NCSNv2's ``[model, optimizer, epoch, step(, ema)]``, NCSN's
    ``[model, optimizer]`` and a bare state dict. Loads with ``torch.load(weights_only=True)``, which reads
    tensors and plain containers only; ``trusted=True`` allows arbitrary pickled objects (only for files
    whose origin you trust).
    """
    torch = _import_torch()
    obj = torch.load(path, map_location="cpu", weights_only=not trusted)

    def as_numpy_dict(state: Any, what: str) -> dict[str, np.ndarray]:
        if not isinstance(state, Mapping):
            raise errors.UserError(
                f"{path}: expected the {what} state dict (a mapping), found {type(state).__name__}."
            )
        return {str(k): to_numpy(v) for k, v in state.items()}

    if isinstance(obj, Mapping):
        return {
            "model": as_numpy_dict(obj, "model"),
            "ema": None,
            "optimizer": None,
            "epoch": None,
            "step": None,
        }
    if not isinstance(obj, (list, tuple)) or not 1 <= len(obj) <= 5:
        length = len(obj) if hasattr(obj, "__len__") else "?"
        raise errors.UserError(
            f"{path}: expected the reference format [model_state, optimizer_state(, epoch, step"
            f"(, ema_state))], found {type(obj).__name__} of length {length}."
        )
    item = lambda i: obj[i] if len(obj) > i else None
    return {
        "model": as_numpy_dict(obj[0], "model"),
        "optimizer": item(1),
        "epoch": None if item(2) is None else int(item(2)),
        "step": None if item(3) is None else int(item(3)),
        "ema": None if item(4) is None else as_numpy_dict(item(4), "EMA"),
    }
