"""Kill/resume fault injection: SIGKILL a training run at random moments, restart it, compare.

    python -m benchmarks.fault_injection --cycles=3 --kills=3

Each cycle trains the (shrunk) quick-start config once without interruption (the reference), then
again with `kills` SIGKILLs at random moments (one aimed at a checkpoint write: it fires as soon
as orbax's temporary checkpoint directory appears), restarting after each; the final saved state
(parameters, BatchNorm statistics, optimizer state, step and data-iterator position) must be
bit-identical to the reference. Results: benchmarks/results/fault_injection.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from run_utils import (TINY, env_with_devices, final_state, main_cmd, run_main,  # noqa: E402
                       state_differences, train_losses)

STEPS = 30
FLAGS = (*TINY, f"--config.num_train_steps={STEPS}", "--config.checkpoint_every_steps=4")


def _last_logged_step(workdir: Path) -> int:
    """Training logs every step here; a missing file or a line cut by a kill reads as absent."""
    return len(train_losses(workdir))


def _writing_checkpoint(workdir: Path) -> bool:
    d = workdir / "checkpoints"
    return d.exists() and any("tmp" in p.name for p in d.iterdir())


def run_with_kill(workdir: Path, rng: random.Random, aim_at_write: bool) -> dict:
    """Start the run, SIGKILL it at a random moment after training started; return what happened."""
    proc = subprocess.Popen(main_cmd(workdir, *FLAGS), env=env_with_devices(1), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start_step = _last_logged_step(workdir)
    target = start_step + rng.randint(2, 12)
    during_write = False
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        step = _last_logged_step(workdir)
        if aim_at_write and step > start_step and _writing_checkpoint(workdir):
            during_write = True
            break
        if not aim_at_write and step >= target:
            break
        time.sleep(0.002 if aim_at_write else 0.05)
    finished = proc.poll() is not None
    if not finished:
        proc.kill()
    proc.wait()
    return {"killed": not finished, "at_step": _last_logged_step(workdir),
            "during_write": during_write}


def fill_disk(disk: Path, leave_kib: int) -> Path:
    """A file taking all of `disk`'s free space but `leave_kib` KiB; returned to be deleted."""
    import os
    import shutil
    filler = disk / "filler"
    size = shutil.disk_usage(disk).free - leave_kib * 1024
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(size, 0))
    return filler


def resumed_step(workdir: Path) -> int:
    """The step the next start resumes from: the newest complete checkpoint."""
    d = workdir / "checkpoints"
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.exists() else []
    return max(steps, default=0)


def cycle(root: Path, kills: int, rng: random.Random) -> dict:
    ref, run = root / "ref", root / "killed"
    r = run_main(ref, *FLAGS)
    assert r.returncode == 0, r.stderr[-2000:]
    events = []
    aim = rng.randrange(kills)
    for k in range(kills):
        ev = run_with_kill(run, rng, aim_at_write=(k == aim))
        ev["resumes_from"] = resumed_step(run)
        ev["steps_lost"] = ev["at_step"] - ev["resumes_from"]
        events.append(ev)
    r = run_main(run, *FLAGS)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = final_state(run), final_state(ref)
    differ = state_differences(a, b)
    return {"identical": not differ, "differences": differ[:5], "final_step": a["step"],
            "kills": events}


def _native_available() -> bool:
    """Whether `auto` can pick the C++ mode here (what today's default modes mean on this CPU)."""
    import jax
    jax.config.update("jax_platforms", "cpu")
    from igc_jax.igc import native
    return native.available()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=STEPS,
                   help="training steps per run (about 7 per kill, so that every kill lands)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    global FLAGS
    FLAGS = (*TINY, f"--config.num_train_steps={args.steps}", "--config.checkpoint_every_steps=4")
    rng = random.Random(args.seed)
    t0 = time.time()
    results = []
    for c in range(args.cycles):
        with tempfile.TemporaryDirectory() as tmp:
            res = cycle(Path(tmp), args.kills, rng)
        results.append(res)
        print(f"cycle {c + 1}: identical={res['identical']} kills={res['kills']}", flush=True)
    kills = [k for r in results for k in r["kills"] if k["killed"]]
    summary = {
        "cycles": len(results),
        "identical": sum(r["identical"] for r in results),
        "kills": len(kills),
        "kills_during_checkpoint_write": sum(k["during_write"] for k in kills),
        "mean_steps_lost_per_kill": (float(np.mean([k["steps_lost"] for k in kills]))
                                     if kills else 0.0),
        "checkpoint_every_steps": 4,
        "steps_per_run": args.steps,
        "conv_mode": "auto (the default)",
        "native_available": _native_available(),
        "wall_seconds": round(time.time() - t0, 1),
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fault_injection.json").write_text(json.dumps(summary, indent=1))
    (out / "fault_injection.md").write_text(
        "| cycles | identical to reference | SIGKILLs | during a checkpoint write "
        "| mean steps lost per kill |\n"
        "|---|---|---|---|---|\n"
        f"| {summary['cycles']} | {summary['identical']} | {summary['kills']} | "
        f"{summary['kills_during_checkpoint_write']} | {summary['mean_steps_lost_per_kill']:.2f} "
        f"(checkpoint every 4 steps) |\n\n"
        f"conv_mode auto (native kernels available: {summary['native_available']}), "
        f"{summary['wall_seconds']:.0f} s wall.\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))


if __name__ == "__main__":
    main()
