"""Orbax checkpoints of the training state and the data iterator, under `<workdir>/checkpoints`.

Saves are atomic (orbax writes to a temporary directory, then renames; on gs:// it marks a
finished checkpoint with commit_success.txt) and synchronous, so a kill during a write leaves the
previous checkpoints intact and never costs more than one interval. A checkpoint that cannot be
read back is moved aside to `<workdir>/checkpoints_corrupt/` (never deleted) and the next older
one is used. A save the environment fails (disk full, permission lost, object store down) removes
its incomplete temporary directory (`<step>.orbax-checkpoint-tmp*`; one left by a kill is removed
at the next start) and raises a one-line `EnvironmentFailure`; finished checkpoints are never
touched. Every path goes through etils epath, so the workdir may be local or gs://.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp
from etils import epath

from igc_jax.errors import EnvironmentFailure, UserError, environment_failure

log = logging.getLogger(__name__)

TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's suffix of a checkpoint being written


class CheckpointError(UserError):
    """No checkpoint in a directory could be restored."""


def _param_shapes(params: Any) -> dict[str, tuple[int, ...]]:
    """{'stage1_layer1_igc/primary': shape, ...} of a parameter tree (arrays or metadata)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): tuple(leaf.shape)
            for path, leaf in flat}


def move_tree(src: epath.Path, dst: epath.Path) -> None:
    """Move a directory tree, locally by one rename; on an object store (gs://), which has no
    directories to rename, by copying every object, then deleting the source."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if "://" not in str(src):
        os.replace(src, dst)
        return
    for f in files_under(src):
        target = dst / str(f)[len(str(src)) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
    src.rmtree()


def files_under(directory: epath.Path) -> list[epath.Path]:
    """Every file below `directory`, listed level by level (epath has no recursive glob on
    gs://)."""
    out = []
    for p in directory.iterdir():
        out.extend(files_under(p) if p.is_dir() else [p])
    return out


class _Held(logging.Filter):
    """Holds back error records (orbax logs each failed writer thread's traceback)."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.records.append(record)
        return False


@contextlib.contextmanager
def errors_held_unless_environment() -> Iterator[None]:
    """While saving, hold back error logs and unraisable-exception reports. A save that fails
    for the environment drops them for good (its one line says it all; the tracebacks of orbax's
    abandoned writer threads and callbacks would bury it); otherwise they are replayed."""
    held, unraisable = _Held(), []
    handlers = logging.getLogger().handlers
    hook = sys.unraisablehook
    for h in handlers:
        h.addFilter(held)
    sys.unraisablehook = unraisable.append
    failed_for_environment = False
    try:
        yield
    except EnvironmentFailure:
        failed_for_environment = True
        raise
    finally:
        for h in handlers:
            h.removeFilter(held)
        if not failed_for_environment:
            sys.unraisablehook = hook
            for record in held.records:
                logging.getLogger(record.name).handle(record)
            for report in unraisable:
                hook(report)
        else:  # the process only winds down now; late callbacks stay quiet too
            logging.getLogger().addFilter(held)
            for h in handlers:
                h.addFilter(held)


class Checkpointer:
    """The last `keep` checkpoints of {state, data iterator state}, one directory per step."""

    def __init__(self, workdir: str, keep: int = 3):
        self.directory = epath.Path(workdir) / "checkpoints"
        self.corrupt_dir = epath.Path(workdir) / "checkpoints_corrupt"
        self._keep = keep
        self._failed = False
        self.remove_incomplete()
        self.manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True)
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Save and wait until it is committed, so a kill never loses more than one interval.

        (An asynchronous save still being written when the process dies would lose the steps
        run during the write as well.) A step saved already (a SIGTERM right after a periodic
        save) is not written again: orbax refuses a second save of one step.
        """
        if step in self.manager.all_steps():
            return
        with errors_held_unless_environment():
            self._save(step, state, data_state)

    def _save(self, step: int, state: Any, data_state: dict) -> None:
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
                force=True)
            self.manager.wait_until_finished()
        except Exception as e:
            self._failed = True
            self.remove_incomplete()
            intact = max((s for s in self.finished_steps() if s != step), default=None)
            failure = environment_failure(e, f"checkpoint {step} under {self.directory}", intact)
            if failure is None:
                raise
            raise failure from e

    def finished_steps(self) -> list[int]:
        """The steps of the checkpoint directories on disk (temporary ones excluded)."""
        if not self.directory.exists():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def remove_incomplete(self) -> None:
        """Delete the temporary directories of saves that never finished (process 0)."""
        if jax.process_index() != 0 or not self.directory.exists():
            return
        for p in self.directory.iterdir():
            if TMP_MARK in p.name:
                log.info("removing the incomplete checkpoint %s", p)
                p.rmtree()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore one step into the shardings of `abstract_state` (any device count)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"]

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """The newest readable checkpoint, or None when there is none.

        Unreadable ones (truncated or missing files) are moved to `checkpoints_corrupt/` with a
        warning, so that a later save at the same step cannot collide with them.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                saved = self._saved_param_shapes(step)
            except Exception:
                saved = None  # unreadable metadata: the restore below fails and says why
            wanted = _param_shapes(abstract_state.params)
            if saved is not None and saved != wanted:
                differ = sorted(set(saved.items()) ^ set(wanted.items()))[0][0]
                raise CheckpointError(
                    f"the checkpoint at step {step} in {self.directory} holds another network "
                    f"(parameter {differ} differs); use a new workdir")
            try:
                state, data = self.restore(step, abstract_state)
                jax.block_until_ready(state)
                return step, state, data
            except Exception as e:  # orbax/tensorstore raise many types for a damaged directory
                reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                self._quarantine(step)
                log.warning("checkpoint at step %d is unreadable (%s); moved to %s, trying an "
                            "older one", step, reason, self.corrupt_dir)
        return None

    def _saved_param_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        meta = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state")
        tree = getattr(meta, "item_metadata", meta)
        return _param_shapes(tree["params"])

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:  # one process moves it; the others wait below
            dst = self.corrupt_dir / str(step)
            if dst.exists():
                dst.rmtree()  # an older quarantined copy of the same step
            move_tree(self.directory / str(step), dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        self.manager.close()
        self.manager = self._new_manager()

    def close(self) -> None:
        """Wait for the last save (unless one failed: its error was raised already) and close."""
        if not self._failed:
            self.manager.wait_until_finished()
        try:
            self.manager.close()
        except Exception as e:  # after a failed save, orbax may re-raise it here
            if not self._failed:
                raise
            log.info("checkpoint manager closed after a failed save: %s", e)
