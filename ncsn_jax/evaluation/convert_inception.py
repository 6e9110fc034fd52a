"""Convert pytorch-fid's Inception checkpoint into the weights file of the FID / IS / KID evaluation.

  wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  python -m ncsn_jax.evaluation.convert_inception --pth=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.npz

and point ``config.eval.inception_weights`` at the ``.npz``. Reading the ``.pth`` needs PyTorch
(``pip install "ncsn-jax[torch]"``), once; computing the metrics does not. The state dict is checked against
the network (every parameter present with its shape, nothing left over) before anything is written. The file
records the checkpoint's SHA-256 and whether it is pytorch-fid's published one (SHA-256 starting with
``6726825d``): only features of those weights give FID / IS numbers comparable with published ones.
"""

from __future__ import annotations

import os

from absl import app, flags

from ncsn_jax import cli_errors, errors
from ncsn_jax.evaluation import inception

FLAGS = flags.FLAGS
flags.DEFINE_string("pth", None, f"pytorch-fid's checkpoint ({inception.FID_WEIGHTS_FILENAME}).")
flags.DEFINE_string("out", None, "The .npz weights file to write (config.eval.inception_weights).")
flags.DEFINE_bool("debug", False, "Show Python tracebacks instead of one-line error messages.")
flags.mark_flags_as_required(["pth", "out"])


def convert(pth: str, out: str) -> dict:
    """Checks ``pth`` (a pytorch-fid Inception state dict) and writes it to ``out``; returns the metadata.

    Raises:
        FileNotFoundError: ``pth`` is not a file.
        UserError: ``pth`` is not a readable state dict of the FID Inception network.
        ImportError: PyTorch cannot be imported (the message says how to install it).
    """
    from ncsn_jax.models import convert as convert_lib  # pylint: disable=g-import-not-at-top

    if not os.path.isfile(pth):
        raise errors.UserError(
            f"--pth={pth} does not exist. Download pytorch-fid's weights from {inception.FID_WEIGHTS_URL}"
        )
    try:
        loaded = convert_lib.load_torch_checkpoint(pth)
    except ImportError:
        raise
    except (ValueError, errors.UserError) as e:
        raise errors.UserError(f"--pth={pth} is not pytorch-fid's Inception state dict: {e}") from None
    except Exception as e:  # pylint: disable=broad-except  (torch.load: pickle / zip / format errors)
        raise errors.UserError(
            f"--pth={pth} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})."
        ) from e
    if loaded["optimizer"] is not None or loaded["step"] is not None:
        raise errors.UserError(
            f"--pth={pth} is a training checkpoint, not pytorch-fid's Inception state dict."
        )
    try:
        return inception.save_weights(loaded["model"], out, source=pth)
    except errors.UserError as e:
        raise errors.UserError(f"--pth={pth} does not fit the FID Inception network: {e}") from None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    with cli_errors.user_errors(debug=FLAGS.debug):
        try:
            metadata = convert(FLAGS.pth, FLAGS.out)
        except ImportError as e:  # PyTorch missing: the message is the install command
            if FLAGS.debug:
                raise
            cli_errors.fail(str(e))
    verdict = (
        "pytorch-fid's published weights: FID / IS comparable with published numbers"
        if metadata["official"]
        else "NOT pytorch-fid's published weights (whose SHA-256 starts with "
        f"{inception.FID_WEIGHTS_SHA256_PREFIX}): numbers are not comparable with published ones"
    )
    print(f"Wrote {FLAGS.out} (SHA-256 of {FLAGS.pth}: {metadata['source_sha256']}; {verdict}).")


if __name__ == "__main__":
    app.run(main, flags_parser=cli_errors.flags_parser(FLAGS))
