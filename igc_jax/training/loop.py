"""The training loop: config → data → model → step → checkpoint, resumable and preemptible.

`train_and_evaluate` validates the config, builds the mesh, the data iterators, the model and the
steps (`igc_jax.training.steps`), restores the latest good checkpoint and runs the loop, writing
metrics, status and checkpoints to the workdir.
"""
from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from igc_jax import data
from igc_jax.errors import EnvironmentFailure, UserError, environment_failure, one_line
from igc_jax.igc import select
from igc_jax.training import checkpoint as ckpt_lib
from igc_jax.training import sharding, steps
from igc_jax.training.metrics_log import MetricsLog, read_status
from igc_jax.training.status import Heartbeat, StatusFile
from igc_jax.training.validate import preflight, validate
from igc_jax.training.workdir_lock import me, on_process_0, workdir_lock

log = logging.getLogger(__name__)

# Changing these on resume would silently train another network or on other data.
_FROZEN_PREFIXES = ("model.", "dataset.")
_MUTABLE_KEYS = ("dataset.data_dir", "dataset.num_workers")


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was written at the step boundary."""


class AlreadyFinished(Exception):
    """The workdir's run finished all its steps before: nothing was opened, read or written."""


class Diverged(RuntimeError):
    """The training loss became non-finite."""


class ConfigMismatch(UserError):
    """The workdir holds a run of another model or dataset."""


# ---------------------------------------------------------------- workdir and config

def flatten_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, (dict, ml_collections.ConfigDict)):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(json.loads(config.to_json_best_effort()), "")
    return out


def check_resumable(workdir: epath.Path, config: ml_collections.ConfigDict,
                    allow_change: bool) -> None:
    """Refuse to resume a workdir whose saved run trains another model or dataset."""
    saved_path = workdir / "config.json"
    if allow_change or not saved_path.exists():
        return
    try:
        saved = flatten_config(ml_collections.ConfigDict(json.loads(saved_path.read_text())))
    except (ValueError, TypeError, AttributeError, OSError) as e:
        raise UserError(f"{saved_path} is unreadable ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); restore it or use a new "
                        "workdir") from None
    new = flatten_config(config)
    diff = [k for k in sorted(set(saved) | set(new))
            if k.startswith(_FROZEN_PREFIXES) and k not in _MUTABLE_KEYS
            and saved.get(k) != new.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ConfigMismatch(f"workdir {workdir} holds a run with another config ({shown}); "
                             f"use a new workdir or pass --allow_config_change")


def finished_already(workdir: epath.Path, num_steps: int) -> str | None:
    """The one line for a run that already finished its `num_steps` (status.json says so and its
    final checkpoint is there), else None. Decided from two small files, before any writer,
    checkpoint manager or compile, so that a rerun changes nothing in the workdir."""
    status = read_status(workdir)
    if not status or status.get("status") != "finished" or (status.get("step") or 0) < num_steps:
        return None
    if not (workdir / "checkpoints" / str(status["step"])).exists():
        return None
    best = status.get("best_top1")
    best_text = f" (best {100 * best:.2f}%)" if best is not None else ""
    return f"already finished at step {status['step']}{best_text}; nothing to do"


# ---------------------------------------------------------------- preemption

class SigtermFlag:
    """Set by SIGTERM; the loop asks it at every step boundary (and between eval batches).

    With several processes every one must stop at the same step, so they share their flags (and
    ask JAX's preemption service, Cloud TPU maintenance events), a host round trip that the
    accelerators would wait on: only at steps that are multiples of `every` (the same steps on
    every process), so the checkpoint is written at an agreed step.
    """

    def __init__(self, every: int = 1):
        self.set = False
        self.every = every
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handler(self, signum, frame):
        self.set = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def __call__(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.set
        if step % self.every:
            return False
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.asarray(self.set))
        return bool(np.any(flags)) or multihost_utils.reached_preemption_sync_point(step)


# ---------------------------------------------------------------- visible choices and profiling

def record_conv_modes(planned: steps.PlannedModes, context: select.ModeContext) -> dict:
    """Every IGC layer's and depthwise conv's computation mode (`steps.plan_modes`, decided
    once, before any compile): logged once per distinct (layer shape, mode) and returned for
    status.json, with the autotuner's timings when it measured."""
    by_layer = planned.layers
    if by_layer:
        counts: dict[tuple[str, str], int] = {}
        for shape, mode in by_layer.values():
            counts[shape, mode] = counts.get((shape, mode), 0) + 1
        log.warning("IGC computation modes (%s, native kernels %s, %s): %s", context.backend,
                    "available" if context.native else "unavailable",
                    "measured" if planned.measured else "not measured",
                    "; ".join(f"{m} for {n}× {s}" for (s, m), n in counts.items()))
    return {"context": {"backend": context.backend, "native": context.native},
            "layers": {path: mode for path, (_, mode) in by_layer.items()},
            **({"autotune": list(planned.tuned)} if planned.measured else {})}


class Profiler:
    """A `jax.profiler` trace of steps [START, STOP) (`config.profile_steps="START:STOP"`), written
    under the workdir's tensorboard/ where TensorBoard's profile plugin finds it."""

    def __init__(self, steps_spec: str, log_dir):
        start, _, stop = (steps_spec or "").partition(":")
        self.window = (int(start), int(stop)) if steps_spec else None
        self.log_dir = str(log_dir)
        self.running = False

    def at(self, step: int) -> None:
        if self.window is None or jax.process_index() != 0:
            return
        if step == self.window[0] and not self.running:
            jax.profiler.start_trace(self.log_dir)
            self.running = True
        elif step == self.window[1]:
            self.stop()

    def stop(self) -> None:
        if self.running:
            jax.effects_barrier()
            jax.profiler.stop_trace()
            self.running = False
            log.warning("profile of steps %d:%d written under %s", *self.window, self.log_dir)


# ---------------------------------------------------------------- the loop

def evaluate(eval_fn, state, config, mesh, stop: Callable[[int], bool],
             info: data.DatasetInfo | None = None) -> dict | None:
    """Top-1/top-5 and loss over the whole test split, exactly once; None if stopped midway
    (`stop(i)` is asked before eval batch i: every process sees the same batch count)."""
    totals = None
    for i, local in enumerate(data.eval_batches(config, info, process_index=jax.process_index(),
                                                process_count=jax.process_count())):
        if stop(i):
            return None
        m = eval_fn(state, sharding.global_batch(local, mesh))
        totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"loss": float(totals["loss"]) / count, "top1": float(totals["top1"]) / count,
            "top5": float(totals["top5"]) / count, "count": int(totals["count"])}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False, transfer_guard: str = "disallow") -> dict:
    """Train and evaluate `config` in `workdir`, resuming from its latest good checkpoint.

    Returns the final status dict (also written to `<workdir>/status.json`). Raises Preempted after
    saving a checkpoint on SIGTERM, Diverged on a non-finite loss (nothing non-finite is saved),
    AlreadyFinished (touching nothing) when the workdir's run finished its steps before,
    WorkdirBusy (a UserError, touching nothing) when a live run holds the workdir, and
    EnvironmentFailure when the disk or the object store fails a write.

    The lock is checked before the finished check, so a rerun of a finished workdir that another
    run is continuing (say with more steps) is refused rather than told "nothing to do"; it is
    taken (the first write) only once the run is known to start.
    """
    # Every check first (igc_jax.training.validate): nothing is written to the workdir, nothing
    # built or compiled, until the run is known to start.
    validate(config)
    mesh = sharding.make_mesh()
    plan = preflight(config, workdir, mesh)
    num_steps = plan.num_steps
    wd = epath.Path(workdir)  # local or gs://
    check_resumable(wd, config, allow_config_change)
    lock = workdir_lock(wd)
    on_process_0(lock.refuse_if_held, wd)
    done = finished_already(wd, num_steps)
    if done:
        raise AlreadyFinished(done)

    wd.mkdir(parents=True, exist_ok=True)
    on_process_0(lock.acquire, wd)
    status = StatusFile(wd, {**(read_status(wd) or {}), "status": "running", "message": "",
                             "num_steps": num_steps, **me()})
    try:
        status.write()
        beating = Heartbeat(lambda: (lock.renew(), status.write()))
        with beating if jax.process_index() == 0 else contextlib.nullcontext():
            return _train(config, wd, mesh, plan, status, lock.check, transfer_guard)
    except Preempted as e:
        status.fields.update(status="preempted", message=str(e))
        raise
    except Exception as e:
        failure = (None if isinstance(e, EnvironmentFailure) else
                   environment_failure(e, None, status.fields.get("last_checkpoint")))
        status.fields.update(status="failed", message=one_line(str(failure or e) or repr(e)))
        if failure is not None:
            raise failure from e
        raise
    finally:
        try:
            status.write()
        except Exception as e:  # e.g. the disk is still full: the failure above says why
            log.info("status.json not written: %s", e)
        if jax.process_index() == 0:
            lock.release()


def _train(config: ml_collections.ConfigDict, wd: epath.Path, mesh, plan, status: StatusFile,
           check_lock: Callable[[], None], transfer_guard: str) -> dict:
    """The run itself, in a workdir this run holds; `status.fields` is updated as it goes."""
    info, steps_per_epoch, num_steps = plan.info, plan.steps_per_epoch, plan.num_steps
    eval_every = plan.eval_every
    context = select.detect_context()
    planned = steps.plan_modes(config, info.image_shape, context)
    conv_modes = record_conv_modes(planned, context)
    model = steps.make_model(config, planned.plan)
    schedule = steps.learning_rate_schedule(config, steps_per_epoch, num_steps)
    tx = steps.make_optimizer(config, schedule)
    state, state_shardings = steps.init_state(model, tx, info.image_shape, config.seed, mesh)
    train_fn, eval_fn, finite_fn = steps.compile_steps(
        model, tx, schedule, state_shardings, mesh,
        average_batch_stats=config.batch_norm == "per_device")
    profile = Profiler(config.profile_steps, wd / "tensorboard")

    checkpointer = ckpt_lib.Checkpointer(str(wd), keep=config.keep_checkpoints)
    train_iter = data.train_iterator(config, info, process_index=jax.process_index(),
                                     process_count=jax.process_count())
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            state, state_shardings)
    restored = checkpointer.restore_latest(abstract)
    if restored is not None:
        start, state, data_state = restored
        train_iter.set_state(data_state)
        log.info("resumed from the checkpoint at step %d", start)
    else:
        start = 0
    last_saved = start if restored is not None else None
    if jax.process_index() == 0:  # only once the saved state (if any) fits this run's
        (wd / "config.json").write_text(config.to_json_best_effort(indent=1))

    metrics_log = MetricsLog(wd, enabled=jax.process_index() == 0)
    metrics_log.rewind(start)
    status.write(step=start, epoch=round(start / steps_per_epoch, 4), last_checkpoint=last_saved,
                 images_per_sec=None, loss=None, conv_modes=conv_modes,
                 **metrics_log.best_and_final())

    def save(step):
        nonlocal last_saved
        if not bool(jax.device_get(finite_fn(state.params))):
            raise Diverged(f"parameters became non-finite by step {step}; not saved "
                           f"(last good checkpoint: step {last_saved})")
        checkpointer.save(step, state, train_iter.get_state())
        last_saved = step
        status.write(step=step, epoch=round(step / steps_per_epoch, 4), last_checkpoint=step)

    progress = metrics_log.progress(num_steps, start)
    t_start = time.time()
    t_window, n_window = time.perf_counter(), 0
    prev = None  # (step, loss) of the previous step, checked one step late to keep the device busy
    step = start
    try:
        with SigtermFlag(config.sigterm_check_every_steps) as sigterm:
            while step < num_steps:
                profile.at(step)
                if sigterm(step):
                    save(step)
                    raise Preempted(f"preempted: checkpoint saved at step {step}")
                with jax.transfer_guard(transfer_guard):
                    batch = sharding.global_batch(next(train_iter), mesh)
                    state, metrics = train_fn(state, batch)
                    if prev is not None:
                        _check_finite(prev, last_saved)
                    prev = (step + 1, metrics["loss"])
                    step += 1
                    n_window += 1
                    if step % config.log_every_steps == 0 or step == num_steps:
                        m = jax.device_get(metrics)
                        ips = n_window * config.batch_size / (time.perf_counter() - t_window)
                        t_window, n_window = time.perf_counter(), 0
                        metrics_log.train(step, step / steps_per_epoch, m, ips)
                        check_lock()
                        status.write(step=step, epoch=round(step / steps_per_epoch, 4),
                                     loss=float(m["loss"]), images_per_sec=ips)
                progress.update(step)
                out_of_time = (config.max_train_seconds > 0
                               and time.time() - t_start > config.max_train_seconds)
                if step % eval_every == 0 or step == num_steps or out_of_time:
                    _check_finite(prev, last_saved)
                    result = evaluate(eval_fn, state, config, mesh, sigterm, info)
                    if result is None:
                        save(step)
                        raise Preempted(f"preempted during evaluation: checkpoint saved at "
                                        f"step {step}")
                    metrics_log.eval(step, step / steps_per_epoch, result)
                    status.fields.update(metrics_log.best_and_final())
                if step % config.checkpoint_every_steps == 0 or step == num_steps or out_of_time:
                    _check_finite(prev, last_saved)
                    save(step)
                status.fields["step"] = step
                if out_of_time:
                    status.fields["message"] = (f"time budget of {config.max_train_seconds:.0f}s "
                                                f"reached at step {step}")
                    break
        status.fields["status"] = "finished"
        return status.fields
    finally:
        status.fields.update(step=step, epoch=round(step / steps_per_epoch, 4))
        profile.stop()
        progress.close()
        checkpointer.close()
        metrics_log.close()


def _check_finite(prev: tuple[int, jax.Array] | None, last_saved: int | None) -> None:
    if prev is None:
        return
    step, loss = prev
    value = float(jax.device_get(loss))
    if not np.isfinite(value):
        raise Diverged(f"training loss is {value} at step {step}; stopped without saving "
                       f"(last good checkpoint: step {last_saved})")
