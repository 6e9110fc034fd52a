"""ncsn-jax command line: train or sample a score-based model from an ml_collections config.

    python main.py --config=configs/toy.py --workdir=runs/toy --mode=train
    python main.py --config=configs/toy.py --workdir=runs/toy --mode=sample
    python main.py --config=configs/toy.py --workdir=runs/toy --mode=eval
    python main.py --config=configs/cifar10.py --mode=fid_stats     # once per dataset, before eval

Any config field can be overridden, e.g. ``--config.training.batch_size=8``. Errors in what was asked
(an unknown config field, a missing dataset or checkpoint, a workdir of another config, …) print one
``error:`` message and exit with status 2, before anything is written; ``--debug`` shows the Python
traceback instead. Ctrl-C during training says at which step it stopped (exit status 130); the same
command resumes.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from ncsn_jax import cli_errors

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum(
    "mode",
    None,
    ["train", "sample", "eval", "fid_stats"],
    "What to do: train (resumes if workdir has a checkpoint), sample (from the newest checkpoint, or "
    "config.sampling.checkpoint), eval (sample quality and held-out loss of config.eval.checkpoints) or "
    "fid_stats (Inception statistics of the dataset's training split, for eval; needs no --workdir).",
)
flags.DEFINE_bool("debug", False, "Show Python tracebacks instead of one-line error messages.")
flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process runs: host:port of process 0 "
    "(jax.distributed.initialize). On TPU pods use --multihost instead.",
)
flags.DEFINE_integer("num_processes", None, "Multi-process runs: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: index of this process.")
flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)."
)
flags.mark_flags_as_required(["config", "mode"])


def _initialize_distributed() -> None:
    import jax  # pylint: disable=g-import-not-at-top

    if FLAGS.coordinator_address:
        jax.distributed.initialize(
            FLAGS.coordinator_address, num_processes=FLAGS.num_processes, process_id=FLAGS.process_id
        )
    elif FLAGS.multihost:
        jax.distributed.initialize()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from ncsn_jax import logging_utils  # pylint: disable=g-import-not-at-top

    logging_utils.quiet_library_logs()  # before JAX probes its backends
    _initialize_distributed()
    from ncsn_jax import errors, evaluate, generate, train  # pylint: disable=g-import-not-at-top

    config = _CONFIG.value
    with cli_errors.user_errors(debug=FLAGS.debug):
        if FLAGS.mode == "fid_stats":
            print(f"Inception statistics written to {evaluate.compute_fid_stats(config)}")
            return
        if not FLAGS.workdir:
            raise errors.UserError(f"--mode={FLAGS.mode} needs --workdir (the run's directory).")
        if FLAGS.mode == "eval":
            for path in evaluate.evaluate(config, FLAGS.workdir):
                print(f"Evaluation report written to {path}")
        elif FLAGS.mode == "train":
            train.train(config, FLAGS.workdir)
            print(f"Trained. Draw samples with:\n  {cli_errors.sample_command(sys.argv, FLAGS.workdir)}")
        else:
            out_dir = generate.sample(config, FLAGS.workdir)
            print(f"Samples written to {out_dir}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app.run(main, flags_parser=cli_errors.flags_parser(FLAGS))
