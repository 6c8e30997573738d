"""Same recipe, same wall-clock budget: CIFAR-10 networks trained side by side on this machine.

    python -m benchmarks.cifar_budget --minutes=40 --nets L24M2,D8 W16,D8 W18,D8 L4M8,D8,sumfusion \
        --data_dir=../shared/data/cifar10 --root=runs/cifar10_d8
    python -m igc_jax.report runs/cifar10_d8 --out benchmarks/results/cifar10_d8_report

The networks run side by side, at the same time, so that they share whatever load this machine
has (it is shared and noisy); with four networks, `--minutes=40` gives each about 10 minutes of
the whole machine. For each network a short calibration run (also side by side) measures training
images/s; the number of epochs that fits the budget at that rate becomes `num_epochs`, so the
spec §4 schedule (×0.1 at 1/2, 3/4, 7/8) completes inside the budget, and `max_train_seconds`
stops a run if the machine slows down. Results (images/s, epochs, test top-1, wall time):
benchmarks/results/cifar10_budget.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from igc_jax.training.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "cifar10_igc.py"
TRAIN_IMAGES = 50_000


def _start(config: str, workdir: Path, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "igc_jax.main", f"--config={config}", f"--workdir={workdir}",
           *flags]
    print("+", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _wait(name: str, proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed: {err.strip().splitlines()[-1]}")


def _records(workdir: Path) -> list[dict]:
    return read_metrics(workdir / "metrics.jsonl")


def _calibration_dir(root: Path, net: str) -> Path:
    """Beside the sweep root, so that `igc_jax.report <root>` sees only the real runs."""
    return root.parent / f"{root.name}_calibration" / net.replace(",", "_")


def calibrate(nets: list[str], data_flags: list[str], root: Path, steps: int = 40) -> list[float]:
    """Training images/s after compilation (the rate over the last half of a short run), side by
    side."""
    procs = {net: _start(f"{CONFIG}:{net}", _calibration_dir(root, net), *data_flags,
                         f"--config.num_train_steps={steps}",
                         f"--config.log_every_steps={steps // 2}",
                         f"--config.eval_every_steps={10 * steps}",
                         f"--config.checkpoint_every_steps={10 * steps}") for net in nets}
    for net, proc in procs.items():
        _wait(f"calibration of {net}", proc)
    return [[x for x in _records(_calibration_dir(root, net))
             if x["kind"] == "train"][-1]["images_per_sec"] for net in nets]


def run(nets: list[str], minutes: float, data_flags: list[str], root: Path) -> list[dict]:
    rates = calibrate(nets, data_flags, root)
    budget = minutes * 60
    # Evaluation (10k images, forward only) after each epoch costs about a sixth of an epoch.
    epochs = [max(round(0.85 * budget * ips / TRAIN_IMAGES / (1 + 1 / 6), 2), 0.2) for ips in rates]
    t0 = time.time()
    procs = {net: _start(f"{CONFIG}:{net}", root / net.replace(",", "_"), *data_flags,
                         f"--config.num_epochs={e}", f"--config.max_train_seconds={budget}",
                         "--config.log_every_steps=50") for net, e in zip(nets, epochs)}
    ended: dict[str, float] = {}
    while len(ended) < len(procs):  # poll, so that each run's own wall time is recorded
        for net, proc in procs.items():
            if net not in ended and proc.poll() is not None:
                ended[net] = time.time() - t0
                _wait(net, proc)
        time.sleep(1)
    return [_result(net, root / net.replace(",", "_"), ips, e, ended[net])
            for net, ips, e in zip(nets, rates, epochs)]


def _result(net: str, workdir: Path, ips: float, epochs: float, wall: float) -> dict:
    recs = _records(workdir)
    train_recs = [x for x in recs if x["kind"] == "train"]
    evals = [x for x in recs if x["kind"] == "eval"]
    status = json.loads((workdir / "status.json").read_text())
    return {"network": net, "calibrated_images_per_sec": ips, "planned_epochs": epochs,
            "epochs_done": train_recs[-1]["epoch"], "steps": status["step"],
            "images_per_sec_mean": sum(x["images_per_sec"] for x in train_recs) / len(train_recs),
            "final_top1": evals[-1]["top1"], "best_top1": max(x["top1"] for x in evals),
            "wall_seconds": wall, "stopped_by_budget": bool(status["message"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=40)
    p.add_argument("--nets", nargs="+", default=["L24M2,D8", "W16,D8"])
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    p.add_argument("--root", default="/tmp/cifar_budget")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cifar10_budget"))
    args = p.parse_args()
    data_flags = ["--config.dataset.name=arrays", f"--config.dataset.data_dir={args.data_dir}"]
    results = run(args.nets, args.minutes, data_flags, Path(args.root))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"minutes": args.minutes, "results": results}, indent=1))
    rows = ["| network | train images/s (mean) | epochs done | steps | test top-1 final | best "
            "| wall s |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r['network']} | {r['images_per_sec_mean']:.1f} | {r['epochs_done']:.2f} | "
             f"{r['steps']} | {r['final_top1']:.4f} | {r['best_top1']:.4f} | "
             f"{r['wall_seconds']:.0f} |" for r in results]
    out.with_suffix(".md").write_text(
        f"CIFAR-10 (real, lossless arrays), plain D=8, spec §4 recipe (batch 64, SGD-Nesterov, "
        f"lr 0.1 with ×0.1 at 1/2, 3/4, 7/8 of the planned epochs), {args.minutes:.0f} minutes "
        f"of wall clock, the {len(results)} networks training side by side at the same time on "
        f"this shared 2-core CPU.\n\n" + "\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
