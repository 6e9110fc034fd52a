"""Checkpoints with orbax: periodic ones kept N deep, plus one frequent preemption checkpoint.

Layout under a workdir::

        checkpoints/<step>/{state,meta}              every snapshot_freq steps, the newest keep_checkpoints kept
        checkpoints-preemption/<step>/{state,meta}   every preemption_freq steps, only the newest kept

``state`` is the whole :class:`ncsn_jax.train.TrainState` (params, EMA, optimizer state, step, key);
``meta`` is JSON: the step, the values of ``"auto"`` config fields, the noise levels and the config fields that
fix parameter shapes. orbax writes into a temporary directory and renames it when complete, so a save that is
interrupted never becomes a checkpoint. A restart resumes from the newest checkpoint of either kind; a
checkpoint that cannot be read is skipped with a warning in favour of the next older one.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

PERIODIC_DIR = "checkpoints"
PREEMPTION_DIR = "checkpoints-preemption"
MIN_FREE_BYTES = 256 * 2**20


class CheckpointNotFoundError(FileNotFoundError):
    """No readable checkpoint in the workdir."""


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for a different model config (parameter shapes differ)."""


def ensure_writable(workdir: str, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Create ``workdir`` and fail early, with a clear message, if it cannot hold checkpoints."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_probe")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f"--workdir={workdir} is not writable ({e.strerror}); choose a directory you can write to."
        ) from None
    free = shutil.disk_usage(workdir).free
    if free < min_free_bytes:
        raise OSError(
            f"--workdir={workdir} has only {free / 2**20:.0f} MiB free; checkpoints need at least "
            f"{min_free_bytes / 2**20:.0f} MiB. Free some space or choose another workdir."
        )


def _manager(directory: str, keep: int | None, *, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(
        directory,
        options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


class CheckpointStore:
    """The checkpoints of one workdir (see the module docstring for the layout)."""

    def __init__(self, workdir: str, *, keep: int = 5, read_only: bool = False):
        self.workdir = os.path.abspath(workdir)
        self._read_only = read_only
        paths = {
            "periodic": os.path.join(self.workdir, PERIODIC_DIR),
            "preemption": os.path.join(self.workdir, PREEMPTION_DIR),
        }
        self._managers: dict[str, ocp.CheckpointManager] = {}
        for kind, path in paths.items():
            if read_only and not os.path.isdir(path):
                continue
            self._managers[kind] = _manager(path, keep if kind == "periodic" else 1, read_only=read_only)

    # -- discovery ---------------------------------------------------------------------------------------
    def _candidates(self) -> list[tuple[int, str]]:
        """(step, kind) of every checkpoint, newest first (periodic before preemption at equal steps)."""
        found = [(step, kind) for kind, m in self._managers.items() for step in m.all_steps()]
        return sorted(found, key=lambda c: (c[0], c[1] == "periodic"), reverse=True)

    def _read_meta(self, step: int, kind: str) -> dict[str, Any]:
        restored = self._managers[kind].restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def _readable(self) -> list[tuple[int, str, dict[str, Any]]]:
        readable = []
        for step, kind in self._candidates():
            try:
                readable.append((step, kind, self._read_meta(step, kind)))
            except Exception as e:  # pylint: disable=broad-except
                logging.warning(
                    "Checkpoint %s/%d cannot be read (%s: %s); falling back to an older one.",
                    kind,
                    step,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
        return readable

    def latest_meta(self) -> dict[str, Any] | None:
        """Metadata of the newest readable checkpoint, or ``None`` when the workdir has none."""
        readable = self._readable()
        return readable[0][2] if readable else None

    def describe_latest(self) -> str:
        candidates = self._candidates()
        if not candidates:
            return "none (no checkpoint was written yet)"
        step, kind = candidates[0]
        return f"step {step} in {os.path.join(self.workdir, PERIODIC_DIR if kind == 'periodic' else PREEMPTION_DIR)}"

    # -- save / restore ----------------------------------------------------------------------------------
    def save(self, state: Any, meta: dict[str, Any], *, periodic: bool) -> None:
        """Save ``state`` with ``meta`` as a periodic (kept) or a preemption (newest only) checkpoint."""
        step = int(meta["step"])
        manager = self._managers["periodic" if periodic else "preemption"]
        if step in manager.all_steps():
            return
        manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )

    def wait(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()

    def restore(
        self, template: Any, config: ml_collections.ConfigDict | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Restore the newest readable checkpoint into the structure of ``template``.

        Raises:
            CheckpointNotFoundError: no readable checkpoint.
            CheckpointMismatchError: the checkpoint's parameter shapes differ from ``template``'s.
        """
        readable = self._readable()
        if not readable:
            raise CheckpointNotFoundError(
                f"No checkpoint in {self.workdir}. Train first (--mode=train with this --workdir) or convert the "
                "authors' weights (python -m ncsn_jax.convert_torch)."
            )
        last_error: Exception | None = None
        for step, kind, meta in readable:
            manager = self._managers[kind]
            self._check_shapes(manager, step, template, meta, config)
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
            try:
                restored = manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # pylint: disable=broad-except
                logging.warning(
                    "Checkpoint %s/%d could not be restored (%s); trying an older one.",
                    kind,
                    step,
                    str(e).splitlines()[0][:200],
                )
                last_error = e
                continue
            return restored.state, dict(restored.meta)
        raise CheckpointNotFoundError(f"No checkpoint in {self.workdir} could be restored: {last_error}")

    def _check_shapes(
        self,
        manager: ocp.CheckpointManager,
        step: int,
        template: Any,
        meta: dict[str, Any],
        config: ml_collections.ConfigDict | None,
    ) -> None:
        try:
            stored = manager.item_metadata(step)["state"].tree
        except Exception:  # pylint: disable=broad-except  (unreadable metadata: let restore report it)
            return
        want, have = _shapes(template.params), _shapes(stored["params"])
        if want == have:
            return
        differing = [k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
        lines = [
            f"  {k}: checkpoint {have.get(k, 'absent')}, config {want.get(k, 'absent')}"
            for k in differing[:8]
        ]
        more = f"\n  … and {len(differing) - 8} more" if len(differing) > 8 else ""
        from ncsn_jax import config_lib  # pylint: disable=g-import-not-at-top

        stored_model = meta.get("model", {})
        current = config_lib.model_signature(config) if config is not None else {}
        fields = [
            f"{k}: checkpoint {stored_model.get(k)!r}, config {current.get(k)!r}"
            for k in sorted(set(stored_model) | set(current))
            if stored_model.get(k) != current.get(k)
        ]
        hint = ("Differing config fields: " + "; ".join(fields) + ".\n") if fields else ""
        raise CheckpointMismatchError(
            f"The checkpoint at step {step} in {self.workdir} was written for a different model "
            f"({len(differing)} parameter shapes differ):\n"
            + "\n".join(lines)
            + more
            + "\n"
            + hint
            + "Use the config it was trained with, or another --workdir."
        )
