"""Training feedback: tqdm progress bars (steps/s, ETA) and metrics to absl logs and TensorBoard.

TensorBoard event files are written with ``tensorboardX`` (no TensorFlow needed) under
``workdir/tensorboard``; view them with ``tensorboard --logdir=<workdir>/tensorboard`` (``pip install -e
".[tensorboard]"`` installs the viewer). While a progress bar is shown, log lines are printed above it
(``tqdm.write``), never onto its line.
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
    """Drops INFO records of libraries that log every step of their own work (orbax logs through absl)."""

    CHATTY = (f"{os.sep}orbax{os.sep}",)

    def filter(self, record: python_logging.LogRecord) -> bool:
        return record.levelno > python_logging.INFO or not any(p in record.pathname for p in self.CHATTY)


_CHATTER_FILTER = _LibraryChatterFilter()


def quiet_library_logs() -> None:
    """Keep absl's INFO log to this project's own messages (library warnings and errors still show).

    Call before JAX initialises its backends: on a machine without a TPU, jax's backend probe logs "Unable
    to initialize backend 'tpu'" at INFO (``jax._src.xla_bridge``), which only warnings now pass. Which
    backend JAX picks is unchanged (GPU and TPU runs are not affected).
    """
    python_logging.getLogger("absl").addFilter(_CHATTER_FILTER)  # idempotent
    python_logging.getLogger("jax._src.xla_bridge").setLevel(python_logging.WARNING)


def log_devices() -> None:
    """Log the JAX version, backend and devices of this run (once its checks have passed)."""
    import jax  # pylint: disable=g-import-not-at-top

    logging.info(
        "JAX %s, backend %s: %d device(s) in all, %d local; process %d of %d.",
        jax.__version__,
        jax.default_backend(),
        jax.device_count(),
        jax.local_device_count(),
        jax.process_index(),
        jax.process_count(),
    )


class _AboveTheBar:
    """A stream for absl's log handler that prints each line with ``tqdm.write`` (above the bars)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> None:
        from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

        tqdm.write(text.rstrip("\n"), file=self._stream)

    def flush(self) -> None:
        self._stream.flush()


@contextlib.contextmanager
def _logs_above_bar() -> Iterator[None]:
    """Route absl's log lines through ``tqdm.write`` while a bar is shown."""
    handler = logging.get_absl_handler().python_handler
    stream = handler.stream
    handler.stream = _AboveTheBar(stream)
    try:
        yield
    finally:
        handler.stream = stream


@contextlib.contextmanager
def progress(
    total: int, initial: int = 0, desc: str = "", enabled: bool = True, unit: str = "step"
) -> Iterator[Any]:
    """A tqdm bar showing rate and ETA; a silent stand-in where disabled (non-zero processes)."""
    if not enabled:
        yield _NullBar()
        return
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    with (
        tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=1.0,
        ) as bar,
        _logs_above_bar(),
    ):
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

    def write_eval(
        self,
        step: int,
        scalars: dict[str, float],
        per_level: dict[str, np.ndarray] | None = None,
        sigmas: np.ndarray | None = None,
    ) -> None:
        """Evaluation numbers under ``eval/`` (and each per-level series under ``eval_<name>_per_level/``)."""
        if self._writer is None:
            return
        logging.info("eval at step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in scalars.items()))
        for name, value in scalars.items():
            self._writer.add_scalar(f"eval/{name}", float(value), step)
        for name, values in (per_level or {}).items():
            for i, value in enumerate(np.asarray(values)):
                label = f"level_{i:03d}" + (f"_sigma_{sigmas[i]:.3g}" if sigmas is not None else "")
                self._writer.add_scalar(f"eval_{name}_per_level/{label}", float(value), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
