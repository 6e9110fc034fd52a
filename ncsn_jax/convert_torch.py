"""Convert the authors' PyTorch checkpoints (ermongroup/ncsn, ermongroup/ncsnv2) into an ncsn-jax workdir.

  python -m ncsn_jax.convert_torch --checkpoint=checkpoint.pth --config=configs/cifar10.py --workdir=runs/c10
  python main.py --config=configs/cifar10.py --workdir=runs/c10 --mode=sample

The ``.pth`` file is the list the reference runners ``torch.save``: ``[model_state, optimizer_state, epoch,
step, ema_state]`` (NCSNv2; the EMA shadow last) or ``[model_state, optimizer_state]`` (NCSN). The weights are
mapped onto ``models.create(config)`` by :func:`ncsn_jax.models.convert.from_torch_state_dict` (every key and
shape used exactly once) and written as an orbax checkpoint of the file's step (0 when it has none) whose EMA
slot holds the EMA weights when the file has them (the model weights otherwise). The optimizer state is a
fresh Adam state: the reference optimizer state is not carried over.

``"auto"`` config fields are resolved without training data: ``model.sigma_max`` and ``model.num_scales``
from the checkpoint's ``sigmas`` buffer (NCSNv2 models carry their noise table; σ₁ = ``sigmas[0]``,
L = ``len(sigmas)``), ``sampling.step_lr`` with NCSNv2's step-size criterion (technique 4) on those levels.
They are stored in the checkpoint's metadata, so ``--mode=sample`` with the same config uses them. A config
whose noise levels cannot be read from the file (NCSN has no ``sigmas`` buffer) must set them explicitly.

Needs PyTorch: ``pip install "ncsn-jax[torch]"``. ``torch.load`` runs with ``weights_only=True`` (tensors and
plain containers only); ``--trust_checkpoint`` lifts that for files whose origin you trust.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from ncsn_jax import cli_errors, errors

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config of the model the checkpoint holds.", lock_config=True
)
flags.DEFINE_string("checkpoint", None, "Path to the reference repository's checkpoint .pth file.")
flags.DEFINE_string("workdir", None, "Empty workdir to write the converted checkpoint into.")
flags.DEFINE_bool(
    "trust_checkpoint",
    False,
    "Unpickle arbitrary Python objects from --checkpoint (torch.load(weights_only=False)); only for files "
    "whose origin you trust.",
)
flags.DEFINE_bool("debug", False, "Show Python tracebacks instead of one-line error messages.")
flags.mark_flags_as_required(["config", "checkpoint", "workdir"])

AUTO_FIELDS = ("model.sigma_max", "model.num_scales", "sampling.step_lr")


class TorchUnavailableError(errors.UserError):
    """PyTorch, needed to read ``.pth`` files, cannot be imported."""


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    section, name = dotted.split(".")
    return config[section][name]


def _sigmas_buffer(state_dict: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The ``sigmas`` buffer of a reference state dict (``module.`` prefixes allowed), or ``None``."""
    for key, value in state_dict.items():
        if key.split("module.")[-1] == "sigmas":
            return np.asarray(value, np.float64).reshape(-1)
    return None


def resolve_auto_fields(
    config: ml_collections.ConfigDict, state_dict: Mapping[str, np.ndarray], example_shape: tuple[int, ...]
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """Replace ``"auto"`` fields by values read from the checkpoint (see the module docstring).

    σ₁ = ``sigmas[0]`` and L = ``len(sigmas)`` of the state dict's ``sigmas`` buffer; ε from
    :func:`ncsn_jax.noise.langevin_step_lr` on the resulting geometric levels, ``D = prod(example_shape)``.
    Whether the whole buffer equals the config's geometric table (σ_min included) is checked afterwards by
    :func:`ncsn_jax.models.convert.from_torch_state_dict`.

    Returns:
        ``(config, resolved)``: the config with numbers in place of ``"auto"``, and the dotted fields set.

    Raises:
        UserError: ``sigma_max`` / ``num_scales`` are ``"auto"`` but the checkpoint has no ``sigmas`` buffer.
    """
    from ncsn_jax import config_lib  # pylint: disable=g-import-not-at-top

    resolved: dict[str, Any] = {}
    from_table = [f for f in ("model.sigma_max", "model.num_scales") if config_lib.is_auto(_field(config, f))]
    if from_table:
        table = _sigmas_buffer(state_dict)
        if table is None:
            raise errors.UserError(
                f"config.{from_table[0]} is 'auto', which is computed from the training data, and the "
                f"checkpoint has no 'sigmas' buffer to read the noise levels from (model "
                f"{config.model.name!r}). Set --config.model.sigma_max and --config.model.num_scales to the "
                "values the model was trained with."
            )
        if "model.sigma_max" in from_table:
            resolved["model.sigma_max"] = float(table[0])
        if "model.num_scales" in from_table:
            resolved["model.num_scales"] = int(table.size)
        config = config_lib.apply_resolved(config, resolved)
    for dotted, value in resolved.items():
        logging.info("config.%s = %.6g (was 'auto'; from the checkpoint's noise levels)", dotted, value)
    config, step_lr = config_lib.resolve_auto_step_lr(config, int(np.prod(example_shape)))
    return config, {**resolved, **step_lr}


def _load(checkpoint_path: str, trusted: bool) -> dict[str, Any]:
    """:func:`ncsn_jax.models.convert.load_torch_checkpoint` with its failures as one-line errors."""
    from ncsn_jax.models import convert as convert_lib  # pylint: disable=g-import-not-at-top

    try:
        return convert_lib.load_torch_checkpoint(checkpoint_path, trusted=trusted)
    except ImportError as e:
        raise TorchUnavailableError(convert_lib.TORCH_INSTALL_HINT) from e
    except errors.UserError:
        raise  # the file was read but is not in the reference format; the message says so
    except Exception as e:  # pylint: disable=broad-except  (torch.load: pickle / zip / format errors)
        message = str(e)
        if "Unsupported global" in message:  # a pickled class or function: refused by weights_only=True
            raise errors.UserError(
                f"--checkpoint={checkpoint_path} holds Python objects besides tensors and plain containers, "
                "which torch.load(weights_only=True) refuses to unpickle. If you trust the file's origin, "
                "rerun with --trust_checkpoint."
            ) from e
        # torch wraps any unpickling failure in a long "Weights only load failed ..." text; keep its cause.
        _, _, cause = message.partition("WeightsUnpickler error:")
        text = (cause or message).strip()
        detail = text.splitlines()[0] if text else "no message"
        raise errors.UserError(
            f"--checkpoint={checkpoint_path} is not a readable PyTorch checkpoint "
            f"({type(e).__name__}: {detail[:200]})."
        ) from e


def convert(
    checkpoint_path: str, config: ml_collections.ConfigDict, workdir: str, *, trusted: bool = False
) -> int:
    """Write the weights of ``checkpoint_path`` as an ncsn-jax checkpoint in ``workdir``; returns its step.

    Raises:
        UserError: ``checkpoint_path`` is not a file, or is unreadable or not in the reference format, its
            state dicts do not fit ``models.create(config)``, ``"auto"`` fields cannot be resolved, or
            ``workdir`` already holds checkpoints.
        TorchUnavailableError: (a UserError) PyTorch cannot be imported.
    """
    if not os.path.isfile(checkpoint_path):
        raise errors.UserError(f"--checkpoint={checkpoint_path} does not exist or is not a file.")
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from ncsn_jax import checkpointing, config_lib, models, train_state  # pylint: disable=g-import-not-at-top
    from ncsn_jax.models import convert as convert_lib  # pylint: disable=g-import-not-at-top

    config_lib.validate(config)
    checkpointing.ensure_writable(workdir)
    existing = checkpointing.CheckpointStore(workdir, read_only=True).latest_meta()
    if existing is not None:
        raise errors.UserError(
            f"--workdir={workdir} already holds checkpoints (newest: step {existing['step']}); convert into "
            "an empty workdir so that --mode=sample finds the converted weights."
        )

    loaded = _load(checkpoint_path, trusted)
    example_shape = models.example_shape(config)
    config, resolved = resolve_auto_fields(config, loaded["model"], example_shape)

    def to_params(state_dict: Mapping[str, np.ndarray], what: str) -> Any:
        try:
            return convert_lib.from_torch_state_dict(state_dict, config)["params"]
        except errors.UserError as e:
            raise errors.UserError(
                f"The {what} weights of --checkpoint={checkpoint_path} do not fit --config (model "
                f"{config.model.name!r}, ngf {config.model.get('ngf')}, "
                f"{'x'.join(str(d) for d in example_shape)}): {e}"
            ) from None

    params = to_params(loaded["model"], "model")
    has_ema = loaded.get("ema") is not None
    ema_params = to_params(loaded["ema"], "EMA") if has_ema else params
    step = int(loaded.get("step") or 0)

    model = models.create(config)
    optimizer = train_state.create_optimizer(config.optim)

    # Every other field of the train state (the training key from config.seed, counters) as a fresh run
    # has it; compiled without the weights, so XLA drops the random initialisation they would need.
    def fresh_state_without_weights():
        state = train_state.init_train_state(model, config, example_shape, optimizer)
        return state.replace(params=None, ema_params=None, opt_state=None)

    state = jax.jit(fresh_state_without_weights)().replace(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        ema_params=ema_params,
        opt_state=jax.jit(optimizer.init)(params),
    )
    sigmas = config_lib.sigmas(config)
    meta = {
        "step": step,
        "resolved": resolved,
        "model": config_lib.model_signature(config),
        "sigmas": np.asarray(sigmas).tolist(),
        "example_shape": list(example_shape),
        "converted_from": os.path.abspath(checkpoint_path),
        "converted_ema": has_ema,
    }
    store = checkpointing.CheckpointStore(workdir, keep=config.training.keep_checkpoints)
    store.save(state, meta, periodic=True)
    store.wait()
    logging.info(
        "Converted %s (step %d, %d parameters, EMA %s) into %s",
        checkpoint_path,
        step,
        models.count_params(params),
        "yes" if has_ema else "no (the EMA slot holds the model weights)",
        workdir,
    )
    return step


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    with cli_errors.user_errors(debug=FLAGS.debug):
        step = convert(FLAGS.checkpoint, _CONFIG.value, FLAGS.workdir, trusted=FLAGS.trust_checkpoint)
    print(
        f"Wrote the checkpoint of step {step} to {FLAGS.workdir}; sample with:\n  "
        f"{cli_errors.sample_command(sys.argv, FLAGS.workdir)}"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli_errors.flags_parser(FLAGS))
