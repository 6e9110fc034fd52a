"""Convert the authors' PyTorch checkpoints (ermongroup/ncsn, ermongroup/ncsnv2) into an ncsn-jax workdir.

    python -m ncsn_jax.convert_torch --checkpoint=checkpoint.pth --config=configs/cifar10.py --workdir=runs/c10_ref
    python main.py --config=configs/cifar10.py --workdir=runs/c10_ref --mode=sample

The ``.pth`` file is the list the reference runners ``torch.save``: ``[model_state, optimizer_state, epoch,
step, ema_state]`` (NCSNv2; the EMA shadow last) or ``[model_state, optimizer_state]`` (NCSN). The weights are
mapped onto ``models.create(config)`` by :func:`ncsn_jax.models.convert.from_torch_state_dict` (every key and
shape used exactly once) and written as an orbax checkpoint whose EMA slot holds the EMA weights when the file
has them (the model weights otherwise). Needs PyTorch: ``pip install "ncsn-jax[torch]"``.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ncsn_jax import cli_errors

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config of the model the checkpoint holds.", lock_config=True
)
flags.DEFINE_string("checkpoint", None, "Path to the reference repository's checkpoint .pth file.")
flags.DEFINE_string("workdir", None, "Workdir to write the converted checkpoint into.")
flags.DEFINE_bool("debug", False, "Show Python tracebacks instead of one-line error messages.")
flags.mark_flags_as_required(["config", "checkpoint", "workdir"])


def convert(checkpoint_path: str, config, workdir: str) -> int:
    """Write the weights of ``checkpoint_path`` as an ncsn-jax checkpoint in ``workdir``; returns its step."""
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from ncsn_jax import checkpointing, config_lib, models, train  # pylint: disable=g-import-not-at-top
    from ncsn_jax.models import convert as convert_lib  # pylint: disable=g-import-not-at-top

    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"--checkpoint={checkpoint_path} does not exist.")
    config_lib.validate(config)
    checkpointing.ensure_writable(workdir)
    loaded = convert_lib.load_torch_checkpoint(checkpoint_path)
    params = convert_lib.from_torch_state_dict(loaded["model"], config)["params"]
    ema_params = params
    if loaded.get("ema") is not None:
        ema_params = convert_lib.from_torch_state_dict(loaded["ema"], config)["params"]
    step = int(loaded.get("step") or 0)

    model = models.create(config)
    example_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    optimizer = train.create_optimizer(config.optim)
    state = train.init_train_state(model, config, example_shape, optimizer)
    state = state.replace(
        step=jax.numpy.asarray(step, jax.numpy.int32),
        params=params,
        ema_params=ema_params,
        opt_state=optimizer.init(params),
    )
    sigmas = config_lib.sigmas(config)
    meta = {
        "step": step,
        "resolved": {},
        "model": config_lib.model_signature(config),
        "sigmas": np.asarray(sigmas).tolist(),
        "example_shape": list(example_shape),
        "converted_from": os.path.abspath(checkpoint_path),
    }
    store = checkpointing.CheckpointStore(workdir, keep=config.training.keep_checkpoints)
    store.save(state, meta, periodic=True)
    store.wait()
    logging.info(
        "Converted %s (step %d, EMA %s) into %s",
        checkpoint_path,
        step,
        "yes" if loaded.get("ema") is not None else "no",
        workdir,
    )
    return step


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    with cli_errors.user_errors(debug=FLAGS.debug):
        step = convert(FLAGS.checkpoint, _CONFIG.value, FLAGS.workdir)
    print(
        f"Wrote the checkpoint of step {step} to {FLAGS.workdir}; sample with: python main.py "
        f"--config=<the same config> --workdir={FLAGS.workdir} --mode=sample"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli_errors.flags_parser(FLAGS))
