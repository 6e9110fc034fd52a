"""Dropping orbax's late, already-handled read errors after a corrupted checkpoint (orbax-checkpoint 0.12).

When orbax-checkpoint 0.12 (0.12.8 checked) restores a checkpoint whose array files are truncated, it raises
the first read error to the caller, which falls back to an older checkpoint (:mod:`ncsn_jax.checkpointing`).
Its other pending array reads fail later, after the caller has moved on; Python then prints one traceback
per array: tensorstore's callbacks into orbax's finished event loop (``RuntimeError: Event loop is closed``,
reported as "Exception ignored in ..."), and the reads themselves, reported by the unraisable hook or by
asyncio's "Task exception was never retrieved" log record. :func:`install` drops those, recognised by the
files their traceback runs through (orbax's array reader), or, for a tensorstore read awaited directly by an
asyncio task (the partial restore of sampling), by a traceback that ends in asyncio's task wrapper with
tensorstore's status message about the checkpoint's OCDBT / zarr files. Every other unraisable error and
asyncio error still shows. Should a later
orbax stop leaving reads behind, this module can go.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

_ORBAX_READER = f"orbax{os.sep}checkpoint{os.sep}_src{os.sep}serialization"
_ASYNCIO_LOOP = f"asyncio{os.sep}base_events.py"
_ASYNCIO_TASKS = f"asyncio{os.sep}tasks.py"
# tensorstore's status text for a failed read of a checkpoint's arrays, e.g. 'OUT_OF_RANGE: Error opening
# "zarr" driver: Error reading "params.x/.zarray" in OCDBT database at local file "…"'.
_TENSORSTORE_READ = re.compile(r'^[A-Z_]+: .*(in OCDBT database|Error opening "zarr3?" driver)')


def _frames(tb: Any) -> list[str]:
    files = []
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return files


def is_late_read_error(exc: BaseException | None, tb: Any) -> bool:
    """Whether ``exc`` (raised along ``tb``) is one of the late read errors of the module docstring."""
    frames = _frames(tb)
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return bool(frames) and _ASYNCIO_LOOP in frames[-1]
    if frames and _ASYNCIO_TASKS in frames[-1] and _TENSORSTORE_READ.search(str(exc)):
        return True
    return any(_ORBAX_READER in f for f in frames)


class _DropLateReadErrors(logging.Filter):
    """asyncio logs a read error of an abandoned orbax task ("Task exception was never retrieved")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        _, exc, tb = record.exc_info
        return not is_late_read_error(exc, tb)


_FILTER = _DropLateReadErrors()


def install() -> None:
    """Filter the asyncio logger and wrap ``sys.unraisablehook`` (both idempotent)."""
    logging.getLogger("asyncio").addFilter(_FILTER)
    previous = sys.unraisablehook
    if getattr(previous, "_ncsn_filter", False):
        return

    def hook(unraisable: Any) -> None:
        if not is_late_read_error(unraisable.exc_value, unraisable.exc_traceback):
            previous(unraisable)

    hook._ncsn_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
