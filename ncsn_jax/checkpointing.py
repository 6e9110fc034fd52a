"""Checkpoints with orbax: periodic ones kept N deep, plus one frequent preemption checkpoint.

Layout under a workdir::

    checkpoints/<step>/{state,meta}              every snapshot_freq steps, the newest keep_checkpoints kept
    checkpoints-preemption/<step>/{state,meta}   every preemption_freq steps, only the newest kept
    checkpoints-unreadable/                      corrupted checkpoints a training run moved aside

``state`` is the whole :class:`ncsn_jax.train_state.TrainState` (params, EMA, optimizer state, step, key);
``meta`` is JSON: the step, the values of ``"auto"`` config fields, the noise levels, the example shape and the
config fields that fix parameter shapes. Sampling restores only the weights it uses (:meth:`CheckpointStore.
restore` with a partial template), not the optimizer state.

Crash safety:

* orbax writes a checkpoint into ``<step>.orbax-checkpoint-tmp*`` and renames it to ``<step>`` only when
  every file is complete, so a save interrupted at any point (``kill -9``, preemption, full disk) never
  becomes a checkpoint: the next start ignores the temporary directory and removes it.
* A restart resumes from the newest *readable* checkpoint of either kind. One that cannot be read (truncated
  or missing files) is skipped with a warning in favour of the next older one; a training run then moves it
  to ``checkpoints-unreadable/`` (nothing is deleted) so that the step is written anew when training gets
  there again. ``--mode=sample`` only reads. Reading a corrupted checkpoint makes orbax report its other
  pending reads late; :mod:`ncsn_jax.orbax_read_errors` drops those reports (only those).
"""

from __future__ import annotations

import logging as python_logging
import os
import shutil
import socket
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from ncsn_jax import errors, orbax_read_errors, parallel
from ncsn_jax.errors import CheckpointMismatchError, CheckpointNotFoundError

PERIODIC_DIR = "checkpoints"
PREEMPTION_DIR = "checkpoints-preemption"
UNREADABLE_DIR = "checkpoints-unreadable"
KIND_DIRS = {"periodic": PERIODIC_DIR, "preemption": PREEMPTION_DIR}
MIN_FREE_BYTES = 256 * 2**20
WEIGHTS = ("params", "ema_params")  # the fields of the train state sampling may restore on their own


def ensure_writable(workdir: str, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Create ``workdir`` and fail early, with a clear message, if it cannot hold checkpoints."""
    try:
        os.makedirs(workdir, exist_ok=True)
        # One probe per process: the processes of a multi-host run share the workdir.
        probe = os.path.join(workdir, f".write_probe.{socket.gethostname()}.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise errors.UserError(
            f"--workdir={workdir} is not writable ({e.strerror}); choose a directory you can write to."
        ) from None
    free = shutil.disk_usage(workdir).free
    if free < min_free_bytes:
        raise errors.UserError(
            f"--workdir={workdir} has only {free / 2**20:.0f} MiB free; checkpoints need at least "
            f"{min_free_bytes / 2**20:.0f} MiB. Free some space or choose another workdir."
        )


class _DropReadOnlyNotice(python_logging.Filter):
    """orbax warns "Given directory is read only" for every read-only manager, i.e. on every --mode=sample."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


_READ_ONLY_NOTICE_FILTER = _DropReadOnlyNotice()


def _manager(directory: str, keep: int | None, *, read_only: bool) -> ocp.CheckpointManager:
    """A manager of ``state`` (the train state) and ``meta`` (JSON) items.

    Writable managers save ``state`` with orbax's standard handler; read-only ones read it with the PyTree
    handler underneath it (the same files), which can also restore a subtree (only the weights).
    """
    if read_only:  # the values orbax would otherwise force, with a warning each
        python_logging.getLogger("absl").addFilter(_READ_ONLY_NOTICE_FILTER)  # idempotent
        options = ocp.CheckpointManagerOptions(
            read_only=True,
            create=False,
            save_interval_steps=0,
            max_to_keep=None,
            enable_async_checkpointing=False,
        )
    else:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=False,
            # Not orbax's cleanup of interrupted saves: it runs in a background thread that a run ending
            # early (a one-line error, Ctrl-C) abandons mid-way, printing a traceback at exit. See
            # _remove_interrupted_saves.
            cleanup_tmp_directories=False,
        )
    state_handler = ocp.PyTreeCheckpointHandler() if read_only else ocp.StandardCheckpointHandler()
    return ocp.CheckpointManager(
        directory,
        options=options,
        item_handlers={"state": state_handler, "meta": ocp.JsonCheckpointHandler()},
    )


def _remove_interrupted_saves(directory: str) -> None:
    """Delete the temporary directories (``<step>.orbax-checkpoint-tmp*``) of saves that never finished.

    Synchronous, unlike orbax's ``cleanup_tmp_directories``; process 0 deletes, every process waits.
    """
    if jax.process_index() == 0:
        for temporary in ocp.path.step.all_temporary_paths(directory):
            shutil.rmtree(temporary.get())
    _sync_processes(f"ncsn_jax.checkpointing.interrupted_saves_removed:{directory}")


def _short(error: BaseException) -> str:
    """The first line of an error message, without tensorstore's appended object dumps."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = text.split(" See full TensorStore details")[0]
    return f"{type(error).__name__}: {text[:240]}"


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

        multihost_utils.sync_global_devices(name)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


class CheckpointStore:
    """The checkpoints of one workdir (see the module docstring for the layout)."""

    def __init__(self, workdir: str, *, keep: int = 5, read_only: bool = False):
        self.workdir = os.path.abspath(workdir)
        self._read_only = read_only
        self._managers: dict[str, ocp.CheckpointManager] = {}
        self._unreadable: dict[tuple[int, str], str] = {}  # (step, kind) -> why, warned about once
        self.restored_from: str | None = None  # path of the checkpoint restore() returned
        orbax_read_errors.install()
        for kind, subdir in KIND_DIRS.items():
            path = os.path.join(self.workdir, subdir)
            if read_only and not os.path.isdir(path):
                continue
            self._managers[kind] = _manager(path, keep if kind == "periodic" else 1, read_only=read_only)
            if not read_only:
                _remove_interrupted_saves(path)

    def path(self, step: int, kind: str) -> str:
        return os.path.join(self.workdir, KIND_DIRS[kind], str(step))

    # -- discovery ---------------------------------------------------------------------------------------
    def _candidates(self) -> list[tuple[int, str]]:
        """(step, kind) of every finalised checkpoint, newest first (periodic first at equal steps)."""
        found = [(step, kind) for kind, m in self._managers.items() for step in m.all_steps()]
        return sorted(found, key=lambda c: (c[0], c[1] == "periodic"), reverse=True)

    def _mark_unreadable(self, step: int, kind: str, error: BaseException) -> None:
        if (step, kind) in self._unreadable:
            return
        self._unreadable[(step, kind)] = _short(error)
        logging.warning(
            "The checkpoint %s cannot be read (%s); skipping it.",
            self.path(step, kind),
            _short(error),
        )

    def _read_meta(self, step: int, kind: str) -> dict[str, Any]:
        restored = self._managers[kind].restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def _readable(self, only_step: int | None = None) -> list[tuple[int, str, dict[str, Any]]]:
        readable = []
        for step, kind in self._candidates():
            if (step, kind) in self._unreadable or only_step not in (None, step):
                continue
            try:
                readable.append((step, kind, self._read_meta(step, kind)))
            except Exception as e:  # pylint: disable=broad-except
                self._mark_unreadable(step, kind, e)
        return readable

    def latest_meta(self, step: int | None = None) -> dict[str, Any] | None:
        """Metadata of the newest readable checkpoint (of ``step``, if given), or ``None`` when the workdir has
        no such checkpoint.

        Raises:
            CheckpointNotFoundError: there are checkpoints but none can be read (training must not silently
                start over next to them).
        """
        readable = self._readable(step)
        if readable:
            return readable[0][2]
        if self._unreadable:
            raise CheckpointNotFoundError(self._none_readable_message())
        return None

    def steps(self) -> list[int]:
        """Steps of every finalised checkpoint of either kind, ascending (readability is checked on restore)."""
        return sorted({step for step, _ in self._candidates()})

    def _none_readable_message(self) -> str:
        reasons = "\n".join(f"  {self.path(s, k)}: {why}" for (s, k), why in self._unreadable.items())
        return (
            f"None of the checkpoints in {self.workdir} can be read:\n{reasons}\n"
            "Move them out of the way (or choose another --workdir) to start afresh; they are left as they "
            "are."
        )

    def describe_latest(self) -> str:
        """Where the newest readable checkpoint is, for messages."""
        candidates = [c for c in self._candidates() if c not in self._unreadable]
        if not candidates:
            return "none (no checkpoint was written yet)"
        step, kind = candidates[0]
        return f"step {step} in {os.path.join(self.workdir, KIND_DIRS[kind])}"

    # -- save / restore ----------------------------------------------------------------------------------
    def save(self, state: Any, meta: dict[str, Any], *, periodic: bool) -> None:
        """Save ``state`` with ``meta`` as a periodic (kept) or a preemption (newest only) checkpoint."""
        step = int(meta["step"])
        kind = "periodic" if periodic else "preemption"
        manager = self._managers[kind]
        if step in manager.all_steps():
            return
        manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )

    def wait(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()

    def restore(
        self, template: Any, config: ml_collections.ConfigDict | None = None, *, step: int | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Restore the newest readable checkpoint into the structure of ``template``.

        ``template`` (arrays or ``jax.ShapeDtypeStruct``) is the whole train state, or, in a read-only store,
        a dict of some of its fields, e.g. ``{"ema_params": ...}``: only those are read (sampling needs no
        optimizer state). Checkpoints that cannot be read are skipped with a warning; a writable store
        (training) moves those it found to ``checkpoints-unreadable/``, so that their steps are saved anew.
        With ``step``, only checkpoints of that step are considered.

        Raises:
            CheckpointNotFoundError: no readable checkpoint.
            CheckpointMismatchError: the checkpoint's parameter shapes differ from ``template``'s.
        """
        readable = self._readable(step)
        if not readable and not self._unreadable:
            raise CheckpointNotFoundError(
                f"No checkpoint in {self.workdir}. Train first (--mode=train with this --workdir) or convert "
                "the authors' weights (python -m ncsn_jax.convert_torch)."
            )
        # Restore replicated over this run's devices, whatever device or process count wrote the checkpoint
        # (orbax would otherwise try to reproduce the writer's shardings and fail on another topology).
        replicated = parallel.replicated(parallel.create_mesh())
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), template
        )
        partial = isinstance(template, dict)
        if partial and not self._read_only:
            raise ValueError("A partial restore needs a read-only CheckpointStore.")
        if self._read_only:
            state_args = ocp.args.PyTreeRestore(
                abstract,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=partial,
            )
        else:
            state_args = ocp.args.StandardRestore(abstract)
        for step, kind, meta in readable:
            manager = self._managers[kind]
            self._check_shapes(manager, step, template, meta, config)
            try:
                restored = manager.restore(
                    step, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore())
                )
            except Exception as e:  # pylint: disable=broad-except
                self._mark_unreadable(step, kind, e)
                continue
            self.restored_from = self.path(step, kind)
            order = self._candidates()
            newer = [c for c in self._unreadable if order.index(c) < order.index((step, kind))]
            if newer:
                logging.warning(
                    "Fell back to %s: the newer checkpoint(s) %s cannot be read.",
                    self.restored_from,
                    ", ".join(self.path(*c) for c in newer),
                )
            if self._unreadable and not self._read_only:
                self._quarantine_unreadable()
            return restored.state, dict(restored.meta)
        raise CheckpointNotFoundError(self._none_readable_message())

    def _quarantine_unreadable(self) -> None:
        """Move unreadable checkpoints to ``checkpoints-unreadable/<kind dir>-<step>`` (process 0 moves)."""
        _sync_processes("ncsn_jax.checkpointing.before_quarantine")  # every process is done reading them
        if jax.process_index() == 0:
            target_root = os.path.join(self.workdir, UNREADABLE_DIR)
            os.makedirs(target_root, exist_ok=True)
            for step, kind in self._unreadable:
                source = self.path(step, kind)
                if not os.path.exists(source):
                    continue
                target = os.path.join(target_root, f"{KIND_DIRS[kind]}-{step}")
                suffix = 1
                while os.path.exists(target):
                    target = os.path.join(target_root, f"{KIND_DIRS[kind]}-{step}.{suffix}")
                    suffix += 1
                os.rename(source, target)
                logging.warning(
                    "Moved the unreadable checkpoint %s to %s; step %d will be saved again when training "
                    "reaches it.",
                    source,
                    target,
                    step,
                )
        _sync_processes("ncsn_jax.checkpointing.after_quarantine")
        for manager in self._managers.values():
            manager.reload()
        self._unreadable.clear()

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
        weights = template if isinstance(template, dict) else {"params": template.params}
        name = next(k for k in WEIGHTS if k in weights)  # params and EMA params have the same shapes
        want, have = _shapes(weights[name]), _shapes(stored[name])
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
