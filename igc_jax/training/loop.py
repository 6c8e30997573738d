"""The training loop: config → data → model → step → checkpoint, resumable and preemptible.

`train_and_evaluate` validates the config, builds the mesh, the data iterators, the model and the
steps (`igc_jax.training.steps`), restores the latest good checkpoint and runs the loop, writing
metrics, status and checkpoints to the workdir.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from igc_jax import data
from igc_jax.training import checkpoint as ckpt_lib
from igc_jax.training import sharding, steps
from igc_jax.training.metrics_log import MetricsLog
from igc_jax.training.validate import validate

log = logging.getLogger(__name__)

# Changing these on resume would silently train another network or on other data.
_FROZEN_PREFIXES = ("model.", "dataset.")
_MUTABLE_KEYS = ("dataset.data_dir", "dataset.num_workers")


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was written at the step boundary."""


class Diverged(RuntimeError):
    """The training loss became non-finite."""


class ConfigMismatch(ValueError):
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


def check_resumable(workdir: epath.Path, config: ml_collections.ConfigDict, allow_change: bool) -> None:
    """Refuse to resume a workdir whose saved run trains another model or dataset."""
    saved_path = workdir / "config.json"
    if allow_change or not saved_path.exists():
        return
    saved = flatten_config(ml_collections.ConfigDict(json.loads(saved_path.read_text())))
    new = flatten_config(config)
    diff = [k for k in sorted(set(saved) | set(new))
            if k.startswith(_FROZEN_PREFIXES) and k not in _MUTABLE_KEYS and saved.get(k) != new.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ConfigMismatch(f"workdir {workdir} holds a run with another config ({shown}); "
                             f"use a new workdir or pass --allow_config_change")


def write_json(path: epath.Path, obj: dict) -> None:
    if jax.process_index() == 0:
        text = json.dumps(obj, indent=1, sort_keys=True)
        if "://" in str(path):  # an object store writes whole objects atomically (no rename)
            path.write_text(text)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


# ---------------------------------------------------------------- preemption

class SigtermFlag:
    """Set by SIGTERM; the loop checks it at every step boundary (and between eval batches)."""

    def __init__(self):
        self.set = False
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
        # Every process must stop at the same step: share the local flags, and ask JAX's
        # preemption service (Cloud TPU maintenance events) too.
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.asarray(self.set))
        return bool(np.any(flags)) or multihost_utils.reached_preemption_sync_point(step)


# ---------------------------------------------------------------- the loop

def evaluate(eval_fn, state, config, mesh, stop: Callable[[], bool],
             info: data.DatasetInfo | None = None) -> dict | None:
    """Top-1/top-5 and loss over the whole test split, exactly once; None if stopped midway."""
    totals = None
    for local in data.eval_batches(config, info, process_index=jax.process_index(),
                                   process_count=jax.process_count()):
        if stop():
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
    saving a checkpoint on SIGTERM, Diverged on a non-finite loss (nothing non-finite is saved).
    """
    validate(config)
    mesh = sharding.make_mesh()
    sharding.check_batch_size(config.batch_size, mesh, "batch_size")
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    info = data.dataset_info(config.dataset)
    steps_per_epoch = max(info.num_train // config.batch_size, 1)
    num_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(math.ceil(config.num_epochs * steps_per_epoch)))
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch

    wd = epath.Path(workdir)  # local or gs://
    wd.mkdir(parents=True, exist_ok=True)
    check_resumable(wd, config, allow_config_change)
    if jax.process_index() == 0:
        (wd / "config.json").write_text(config.to_json_best_effort(indent=1))

    model = steps.make_model(config)
    schedule = steps.learning_rate_schedule(config, steps_per_epoch, num_steps)
    tx = steps.make_optimizer(config, schedule)
    state, state_shardings = steps.init_state(model, tx, info.image_shape, config.seed, mesh)
    train_fn, eval_fn, finite_fn = steps.compile_steps(model, tx, schedule, state_shardings, mesh)

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

    metrics_log = MetricsLog(wd, enabled=jax.process_index() == 0)
    metrics_log.rewind(start)
    status = {"status": "running", "step": start, "num_steps": num_steps, "best_top1": None,
              "final_top1": None, "images_per_sec": None, "message": ""}
    status.update(metrics_log.best_and_final())
    write_json(wd / "status.json", status)

    def save(step):
        nonlocal last_saved
        if not bool(jax.device_get(finite_fn(state.params))):
            raise Diverged(f"parameters became non-finite by step {step}; not saved "
                           f"(last good checkpoint: step {last_saved})")
        checkpointer.save(step, state, train_iter.get_state())
        last_saved = step

    progress = metrics_log.progress(num_steps, start)
    t_start = time.time()
    t_window, n_window = time.perf_counter(), 0
    prev = None  # (step, loss) of the previous step, checked one step late to keep the device busy
    step = start
    try:
        with SigtermFlag() as sigterm:
            while step < num_steps:
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
                        status["images_per_sec"] = ips
                progress.update(step)
                out_of_time = config.max_train_seconds > 0 and time.time() - t_start > config.max_train_seconds
                if step % eval_every == 0 or step == num_steps or out_of_time:
                    _check_finite(prev, last_saved)
                    result = evaluate(eval_fn, state, config, mesh, lambda: sigterm(step),
                                      info)
                    if result is None:
                        save(step)
                        raise Preempted(f"preempted during evaluation: checkpoint saved at step {step}")
                    metrics_log.eval(step, step / steps_per_epoch, result)
                    status.update(metrics_log.best_and_final())
                if step % config.checkpoint_every_steps == 0 or step == num_steps or out_of_time:
                    _check_finite(prev, last_saved)
                    save(step)
                status["step"] = step
                if out_of_time:
                    status["message"] = f"time budget of {config.max_train_seconds:.0f}s reached at step {step}"
                    break
        status["status"] = "finished"
        return status
    except Preempted as e:
        status.update(status="preempted", step=step, message=str(e))
        raise
    except Exception as e:
        status.update(status="failed", step=step, message=str(e).splitlines()[0] if str(e) else repr(e))
        raise
    finally:
        progress.close()
        checkpointer.close()
        metrics_log.close()
        write_json(wd / "status.json", status)


def _check_finite(prev: tuple[int, jax.Array] | None, last_saved: int | None) -> None:
    if prev is None:
        return
    step, loss = prev
    value = float(jax.device_get(loss))
    if not np.isfinite(value):
        raise Diverged(f"training loss is {value} at step {step}; stopped without saving "
                       f"(last good checkpoint: step {last_saved})")
