"""Training feedback: tqdm progress bars (steps/s, ETA) and metrics to absl logs and TensorBoard.

TensorBoard event files are written with ``tensorboardX`` (no TensorFlow needed) under
``workdir/tensorboard``; view them with ``tensorboard --logdir=<workdir>/tensorboard``.
"""

from __future__ import annotations

import contextlib
import logging as python_logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import logging


class _LibraryChatterFilter(python_logging.Filter):
    """Drops INFO records of libraries that log every step of their own work (orbax, jax's backend probe)."""

    CHATTY = (f"{os.sep}orbax{os.sep}", f"{os.sep}jax{os.sep}_src{os.sep}xla_bridge")

    def filter(self, record: python_logging.LogRecord) -> bool:
        return record.levelno > python_logging.INFO or not any(p in record.pathname for p in self.CHATTY)


def quiet_library_logs() -> None:
    """Keep absl's INFO log to this project's own messages (library warnings and errors still show)."""
    python_logging.getLogger("absl").addFilter(_LibraryChatterFilter())


@contextlib.contextmanager
def progress(total: int, initial: int = 0, desc: str = "", enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar showing rate and ETA; a silent stand-in where disabled (non-zero processes)."""
    if not enabled:
        yield _NullBar()
        return
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    with tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=1.0,
    ) as bar:
        yield bar


class _NullBar:
    def update(self, n: int = 1) -> None:
        del n

    def set_postfix(self, **kwargs) -> None:
        del kwargs


class MetricWriter:
    """Writes scalar metrics (and per-noise-level losses) to the log and to TensorBoard.

    Disabled (every process but 0 of a multi-process run), it neither logs nor writes: the metrics are the
    same on every process.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

            self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any], sigmas: np.ndarray | None = None) -> None:
        if self._writer is None:
            return
        scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        logging.info("step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in scalars.items()))
        for name, value in scalars.items():
            self._writer.add_scalar(f"train/{name}", value, step)
        level_loss = metrics.get("level_loss")
        if level_loss is not None:
            for i, value in enumerate(np.asarray(level_loss)):
                if np.isfinite(value):
                    label = f"level_{i:03d}" + (f"_sigma_{sigmas[i]:.3g}" if sigmas is not None else "")
                    self._writer.add_scalar(f"train_loss_per_level/{label}", float(value), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
