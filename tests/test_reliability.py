"""Preemption, crashes, corrupt checkpoints, divergence and config changes.

Runs use the shrunk quick-start net on the digits; the training loop runs under the transfer guard.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from igc_jax import data
from igc_jax.training import loop as train
from run_utils import (ROOT, TINY, env_with_devices, final_params, final_state, main_cmd,
                       run_main, status, tiny_config, train_losses)

sys.path.insert(0, str(ROOT))
from benchmarks import fault_injection  # noqa: E402


def _checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _sigterm_self():
    os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_training_saves_and_exits_0_then_resumes(tmp_path):
    wd = tmp_path / "run"
    proc = subprocess.Popen(main_cmd(wd, *TINY, "--config.num_train_steps=400",
                                     "--config.checkpoint_every_steps=1000"),
                            env=env_with_devices(1), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (
            (wd / "metrics.jsonl").exists() and len(train_losses(wd)) >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    lines = out.strip().splitlines()
    assert lines[-1].startswith("preempted: checkpoint saved at step "), out
    step = int(lines[-1].rsplit(" ", 1)[1])
    assert step >= 3 and _checkpoint_steps(wd) == [step]
    assert status(wd)["status"] == "preempted"
    r = run_main(wd, *TINY, f"--config.num_train_steps={step + 2}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert status(wd) ["status"] == "finished" and len(train_losses(wd)) == step + 2


def test_sigterm_during_evaluation_saves_at_that_step(tmp_path, monkeypatch):
    real = data.eval_batches

    def eval_batches_then_sigterm(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 1:
                _sigterm_self()  # the real signal, delivered between two eval batches
            yield batch

    monkeypatch.setattr(data, "eval_batches", eval_batches_then_sigterm)
    c = tiny_config(num_train_steps=50, eval_every_steps=4, checkpoint_every_steps=1000,
                    eval_batch_size=32)
    with pytest.raises(train.Preempted, match="during evaluation: checkpoint saved at step 4"):
        train.train_and_evaluate(c, str(tmp_path))
    assert _checkpoint_steps(tmp_path) == [4]
    assert status(tmp_path)["status"] == "preempted"


def test_sigkill_at_three_moments_ends_bit_identical(tmp_path):
    """One of the kills lands while a checkpoint is being written; the final saved state
    (parameters, BatchNorm statistics, optimizer state, step and data position) is bit-identical
    to an uninterrupted run's."""
    res = fault_injection.cycle(tmp_path, kills=3, rng=random.Random(1))
    assert all(k["killed"] for k in res["kills"]), res
    assert any(k["during_write"] for k in res["kills"]), res
    assert res["identical"], res["differences"]
    a = final_state(tmp_path / "killed")
    assert {"params", "batch_stats", "opt_state"} <= set(a["state"]), sorted(a["state"])
    assert jax.tree.leaves(a["state"]["batch_stats"]) and jax.tree.leaves(a["state"]["opt_state"])
    assert a["data"] == {"step": a["step"]} == {"step": res["final_step"]}


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, damage, caplog):
    cfg = dict(num_train_steps=8, checkpoint_every_steps=4)
    train.train_and_evaluate(tiny_config(**cfg), str(tmp_path / "ref"))
    wd = tmp_path / "run"
    train.train_and_evaluate(tiny_config(**cfg), str(wd))
    assert _checkpoint_steps(wd) == [4, 8]
    files = sorted((f for f in (wd / "checkpoints" / "8" / "state").rglob("*") if f.is_file()),
                   key=lambda f: f.stat().st_size)
    biggest = files[-1]
    if damage == "truncate":
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    else:
        biggest.unlink()
    # As if the run had stopped before its end (a finished run's rerun is "nothing to do").
    (wd / "status.json").write_text(json.dumps({**status(wd), "status": "preempted"}))
    st = train.train_and_evaluate(tiny_config(**cfg), str(wd))
    assert "step 8 is unreadable" in caplog.text
    assert st["status"] == "finished" and st["step"] == 8
    assert (wd / "checkpoints_corrupt" / "8").is_dir()  # moved aside, not deleted
    assert _checkpoint_steps(wd) == [4, 8]
    a, b = final_params(wd), final_params(tmp_path / "ref")
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])


def test_divergence_stops_naming_the_step_and_saves_nothing_non_finite(tmp_path):
    train.train_and_evaluate(tiny_config(num_train_steps=3, checkpoint_every_steps=2),
                             str(tmp_path))
    c = tiny_config(num_train_steps=30, checkpoint_every_steps=2, learning_rate=1e30,
                    lr_schedule="constant")
    with pytest.raises(train.Diverged, match=r"non-finite .*step \d+|is nan at step \d+") as e:
        train.train_and_evaluate(c, str(tmp_path))
    assert re.search(r"last good checkpoint: step [34]\b", str(e.value)), str(e.value)
    assert status(tmp_path)["status"] == "failed"
    p = final_params(tmp_path)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(p["params"]))


def test_changed_config_is_refused_unless_overridden(tmp_path):
    wd = tmp_path / "run"
    train.train_and_evaluate(tiny_config(num_train_steps=2), str(wd))
    r = run_main(wd, *TINY, "--config.num_train_steps=4", "--config.model.depth=8")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "model.depth: 5 -> 8" in err[0] and "Traceback" not in r.stderr
    with pytest.raises(train.ConfigMismatch):
        train.train_and_evaluate(tiny_config(num_train_steps=4, dataset__augment="cifar"), str(wd))
    # An explicit override resumes (here the augmentation changed, the network did not).
    st = train.train_and_evaluate(tiny_config(num_train_steps=4, dataset__augment="cifar"), str(wd),
                                  allow_config_change=True)
    assert st["status"] == "finished" and st["step"] == 4


# The rest of the bad inputs are in tests/test_user_errors.py's table (on the quick start).
def test_bad_input_of_another_experiment_file_is_one_line_exit_2(tmp_path):
    r = run_main(tmp_path / "wd", "--config.model.L=(5,5,5,5)", devices=4,
                 config=ROOT / "experiments" / "imagenet_l16m16.py")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.splitlines() == [r.stderr.strip()] and "L=5" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "wd").exists()


# ---------------------------------------------------------------- the environment fails a write

@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs (needs root and CAP_SYS_ADMIN; skipped, not passed, without them)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill: {r.stderr.strip() or r.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(f.relative_to(directory)): f.read_bytes()
            for f in sorted(directory.rglob("*")) if f.is_file()}


def test_a_full_disk_during_a_checkpoint_is_one_line_exit_3_and_the_run_resumes(small_disk):
    """The disk fills between two checkpoints: one line naming the path and the cause, exit 3,
    status.json 'failed' with that line, the half-written checkpoint removed and the earlier one
    untouched; once space is freed the same command finishes."""
    wd = small_disk / "run"
    flags = (*TINY[:-1], "--config.log_every_steps=100", "--config.eval_every_steps=100",
             "--config.checkpoint_every_steps=4")
    assert run_main(wd, *flags, "--config.num_train_steps=4").returncode == 0
    intact = _files(wd / "checkpoints" / "4")
    filler = fault_injection.fill_disk(small_disk, leave_kib=48)  # less than a checkpoint
    r = run_main(wd, *flags, "--config.num_train_steps=12")
    assert r.returncode == 3, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"error: no space left on device writing checkpoint 8 under "
                         f"{wd}/checkpoints; the checkpoint at step 4 is intact; free space and "
                         "rerun the same command to resume"), r.stderr[-3000:]
    assert "Traceback" not in r.stderr and sum(x.startswith("error:") for x in lines) == 1
    st = status(wd)
    assert st["status"] == "failed" and st["message"] == lines[-1][len("error: "):]
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["4"]
    assert _files(wd / "checkpoints" / "4") == intact
    filler.unlink()
    r = run_main(wd, *flags, "--config.num_train_steps=12")
    assert r.returncode == 0, r.stderr[-3000:]
    assert status(wd)["status"] == "finished" and _checkpoint_steps(wd)[-1] == 12


def test_a_bug_in_a_save_keeps_its_traceback_type(tmp_path, monkeypatch):
    from igc_jax.training import checkpoint

    def broken(self, *args, **kwargs):
        raise KeyError("a bug, not the disk")

    monkeypatch.setattr(checkpoint.Checkpointer, "_save", broken)
    with pytest.raises(KeyError, match="a bug, not the disk"):
        train.train_and_evaluate(tiny_config(num_train_steps=2, checkpoint_every_steps=1),
                                 str(tmp_path))
    assert status(tmp_path)["status"] == "failed"


@pytest.mark.parametrize("exc, cause", [
    (OSError(28, "No space left on device", "/x/metrics.jsonl"), "no space left on device"),
    (PermissionError(13, "Permission denied", "/x"), "permission denied"),
    (ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']"),
     "no space left on device"),
    (RuntimeError("shape mismatch"), None),
])
def test_environment_causes_are_told_from_bugs(exc, cause):
    from igc_jax.errors import environment_cause, environment_failure
    assert environment_cause(exc) == cause
    wrapped = RuntimeError("orbax failed")
    wrapped.__cause__ = exc
    assert environment_cause(wrapped) == cause
    failure = environment_failure(exc, None, 100)
    assert (failure is None) == (cause is None)
    if failure is not None:
        where = exc.filename if isinstance(exc, OSError) else "the workdir"
        assert str(failure).startswith(f"{cause} writing {where}; ")
        assert "the checkpoint at step 100 is intact" in str(failure)


# ---------------------------------------------------------------- one live run per workdir

def test_a_live_workdir_is_refused_naming_its_holder_and_a_killed_one_is_not(tmp_path):
    """While a run is stopped mid-training (SIGSTOP, so nothing it holds changes), a second
    launch is one line naming it, exit 2, and writes nothing; status.json meanwhile shows its
    progress. Once it is SIGKILLed its heartbeat goes stale (the report says "dead") and the
    same command runs."""
    from igc_jax import report
    from igc_jax.training.status import run_state

    wd = tmp_path / "run"
    proc = subprocess.Popen(main_cmd(wd, *TINY, "--config.num_train_steps=400",
                                     "--config.checkpoint_every_steps=2"),
                            env=env_with_devices(1, IGC_JAX_HEARTBEAT_S="1"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (
                (wd / "metrics.jsonl").exists() and len(train_losses(wd)) >= 3):
            time.sleep(0.1)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.5)  # a write in flight lands
        st = status(wd)
        assert st["status"] == "running" and st["step"] >= 2 and st["pid"] == proc.pid, st
        assert {"epoch", "loss", "images_per_sec", "heartbeat", "last_checkpoint"} <= set(st)
        before = _files(wd)
        r = run_main(wd, *TINY, "--config.num_train_steps=400")
        assert r.returncode == 2, r.stderr[-3000:]
        assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr[-3000:]
        assert f"pid {proc.pid}" in r.stderr and "host " in r.stderr and "started " in r.stderr
        assert _files(wd) == before
    finally:
        proc.kill()
        proc.wait()
    time.sleep(5)  # > STALE_BEATS heartbeats of 1 s
    assert run_state(status(wd)) == "dead"
    assert report.load_run(str(wd)).state == "dead"
    r = run_main(wd, *TINY, "--config.num_train_steps=6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert status(wd)["status"] == "finished"


def test_status_json_is_still_written_on_a_disk_with_no_space_left(small_disk):
    from igc_jax.training.status import write_json
    path = small_disk / "status.json"
    write_json(path, {"status": "running", "step": 1})
    fault_injection.fill_disk(small_disk, leave_kib=0)
    with pytest.raises(OSError):
        (small_disk / "other").write_text("x" * 10000)
    write_json(path, {"status": "failed", "step": 2, "message": "no space left on device"})
    assert status(small_disk)["status"] == "failed"
    assert not (small_disk / "status.tmp").exists()
