"""Results report over run workdirs: a markdown table and the paper's kinds of plots.

    python -m igc_jax.report runs/cifar100_lm [runs/cifar10_depth/D8-IGC-L24M2 ...] [--out DIR]

Each argument is a run workdir (it holds config.json / status.json / metrics.jsonl, written by
`igc_jax.training.loop`) or a sweep root (one run workdir per point below it). Writes to DIR
(default: `report/` under the single argument, else `./report`):
  report.md             one row per run: network, L, M, depth, parameters, multiply-adds, best
                        and final test top-1, images/s, steps, status; then the plots
  report.json           the same rows, machine-readable
  accuracy_vs_params.png, accuracy_vs_macs.png   best test top-1 per network family
  params_macs.png       the paper-style bar chart of parameters and FLOPs (multiply-adds)
  training_curves.png   training loss and test top-1 against the step, one line per run
Runs that are still going, were preempted or failed are listed with their status, never dropped;
in the plots they are hollow markers. Parameters and multiply-adds are computed from each run's
saved model config with `igc_jax.summary` (shapes only, nothing compiled). Paths may be gs://.
"""
from __future__ import annotations

import dataclasses
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from absl import flags

from igc_jax import errors
from igc_jax.cli import parse_tool_flags
from igc_jax.errors import UserError

RUN_FILES = ("config.json", "status.json", "metrics.jsonl")
PLOTS = ("accuracy_vs_params.png", "accuracy_vs_macs.png", "params_macs.png", "training_curves.png")

# This tool's own flags (`igc_jax.cli`): the arguments that are not flags are the workdirs.
FLAGS = flags.FlagValues()
flags.DEFINE_string("out", None, "output directory (default: <workdir>/report)", flag_values=FLAGS)


@dataclasses.dataclass
class Run:
    """What one workdir says about its run; None where it does not say."""
    name: str
    path: str
    config: dict | None
    status: dict | None
    metrics: list[dict]
    params: int | None = None
    macs: int | None = None

    @property
    def model(self) -> dict:
        return (self.config or {}).get("model", {})

    @property
    def state(self) -> str:
        """finished | running | dead (running, but its heartbeat is stale) | preempted | failed
        | not started (no status.json yet)."""
        from igc_jax.training.status import run_state
        if not self.status:
            return "not started"
        state = run_state(self.status)
        step, total = self.status.get("step"), self.status.get("num_steps")
        if state == "finished" and step is not None and total is not None and step < total:
            return "stopped early"  # max_train_seconds: resumable, not done
        return state

    @property
    def evals(self) -> list[dict]:
        return [r for r in self.metrics if r.get("kind") == "eval" and "top1" in r]

    @property
    def best_top1(self) -> float | None:
        top1 = [r["top1"] for r in self.evals]
        return max(top1) if top1 else (self.status or {}).get("best_top1")

    @property
    def final_top1(self) -> float | None:
        return self.evals[-1]["top1"] if self.evals else (self.status or {}).get("final_top1")

    @property
    def images_per_sec(self) -> float | None:
        ips = (self.status or {}).get("images_per_sec")
        if ips is None:
            train = [r["images_per_sec"] for r in self.metrics
                     if r.get("kind") == "train" and r.get("images_per_sec") is not None]
            ips = train[-1] if train else None
        return ips


# ---------------------------------------------------------------- reading

def _epath(path: str):
    from etils import epath  # local or gs:// alike
    return epath.Path(path)


def is_run_dir(path) -> bool:
    return any((path / f).exists() for f in RUN_FILES)


def find_runs(paths: Iterable[str]) -> list[str]:
    """Run workdirs: each path that is one, else its sub-directories that are (a sweep root)."""
    found = []
    for p in paths:
        path = _epath(p)
        if not path.is_dir():
            raise UserError(f"{p}: no such directory")
        if is_run_dir(path):
            found.append(str(path))
            continue
        subs = sorted(str(s) for s in path.iterdir() if s.is_dir() and is_run_dir(s))
        if not subs:
            raise UserError(f"{p}: neither a run workdir (no {', '.join(RUN_FILES)}) "
                            "nor a sweep root")
        found += subs
    return found


def _read_json(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None


def load_run(workdir: str) -> Run:
    from igc_jax.training.metrics_log import read_metrics  # skips a line cut short by a kill

    path = _epath(workdir)
    return Run(name=path.name, path=str(path), config=_read_json(path / "config.json"),
               status=_read_json(path / "status.json"),
               metrics=read_metrics(path / "metrics.jsonl"))


def add_counts(runs: Sequence[Run]) -> None:
    """Parameters and multiply-adds from each run's saved model config (cached per network)."""
    from igc_jax import summary  # imports jax: only when a report is made

    cache: dict[str, tuple[int | None, int | None]] = {}
    for run in runs:
        if not run.config or not run.model.get("name"):
            continue
        ds = run.config.get("dataset", {})
        key = json.dumps([run.model, ds.get("num_classes"), ds.get("image_size")], sort_keys=True)
        if key not in cache:
            try:
                _, t = summary.summarize_model(run.model, num_classes=int(ds["num_classes"]),
                                               image_size=int(ds["image_size"]))
                cache[key] = (t["params"], t["macs"])
            except (ValueError, KeyError, TypeError):  # a config this version cannot build
                cache[key] = (None, None)
        run.params, run.macs = cache[key]


# ---------------------------------------------------------------- describing

def network(run: Run) -> str:
    from igc_jax import models
    if not run.model.get("name"):
        return "?"
    try:
        return models.network_name(run.model)
    except (KeyError, TypeError):
        return run.model["name"]


def family(run: Run) -> str:
    """Plot series: RegConv, IGC or SumFusion (CIFAR), ResNet-18 or IGC ResNet-18, and +Ident."""
    m = run.model
    base = {"cifar_regconv": "RegConv", "imagenet_resnet18": "ResNet-18",
            "imagenet_igc_resnet18": "IGC ResNet-18"}.get(m.get("name"), m.get("name") or "?")
    if m.get("name") == "cifar_igc":
        base = "SumFusion" if m.get("sum_fusion") else "IGC"
    return base + ("+Ident." if m.get("residual") else "")


def _join(v: Any) -> str:
    if v is None:
        return "–"
    return "/".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def depth(run: Run) -> str:
    m = run.model
    if "depth" in m:
        return str(m["depth"])
    return "18" if "resnet18" in m.get("name", "") else "–"


def _unit(largest: float) -> tuple[str, float]:
    """The K/M/G prefix (and its scale) for numbers up to `largest`."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if largest >= scale:
            return unit, scale
    return "", 1.0


def human(n: float | None) -> str:
    """1,234,567 → 1.23M; keeps three significant digits."""
    if n is None:
        return "n/a"
    unit, scale = _unit(abs(n))
    return f"{n / scale:.3g}{unit}"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def row(run: Run) -> dict[str, Any]:
    s = run.status or {}
    return {
        "run": run.name, "network": network(run), "family": family(run),
        "dataset": (run.config or {}).get("dataset", {}).get("name"),
        "L": _join(run.model.get("L")), "M": _join(run.model.get("M")), "depth": depth(run),
        "params": run.params, "macs": run.macs, "best_top1": run.best_top1,
        "final_top1": run.final_top1, "images_per_sec": run.images_per_sec,
        "step": s.get("step"), "num_steps": s.get("num_steps"), "status": run.state,
        "message": s.get("message") or "", "path": run.path,
    }


def sort_key(run: Run):
    dataset = str((run.config or {}).get("dataset", {}).get("name"))
    return dataset, family(run), run.params or 0, run.name


def markdown(runs: Sequence[Run], sources: Sequence[str], plots: Sequence[str]) -> str:
    rows = [row(r) for r in runs]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = ["# igc-jax results", "",
             f"{len(rows)} runs ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) from "
             + ", ".join(f"`{s}`" for s in sources) + ".", "",
             "Test top-1 in %. Parameters: trainable (conv, BatchNorm, classifier); multiply-adds: "
             "convolutions + classifier per image at the dataset's input size (the paper's FLOPs); "
             "both from each run's saved config via `igc_jax.summary`. Images/s: training "
             "throughput of the last logged interval (machine-dependent).", ""]
    header = ("run", "network", "dataset", "L", "M", "depth", "params", "mult-adds",
              "best top-1", "final top-1", "images/s", "steps", "status")
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        steps = "–" if r["step"] is None else f"{r['step']}/{r['num_steps']}"
        ips = "n/a" if r["images_per_sec"] is None else f"{r['images_per_sec']:.0f}"
        lines.append("| " + " | ".join([
            r["run"], r["network"], r["dataset"] or "?", r["L"], r["M"], r["depth"],
            human(r["params"]), human(r["macs"]), pct(r["best_top1"]), pct(r["final_top1"]), ips,
            steps, r["status"]]) + " |")
    unfinished = [r for r in rows if r["status"] != "finished"]
    if unfinished:
        lines += ["", "Not finished:", ""]
        lines += [f"- `{r['run']}`: {r['status']}" + (f" ({r['message']})" if r["message"] else "")
                  for r in unfinished]
    if plots:
        lines += [""] + [f"![{p[:-4].replace('_', ' ')}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy(runs: Sequence[Run], x: str, path: Path) -> None:
    """Best test top-1 against parameters or multiply-adds, one series per network family."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    families = sorted({family(r) for r in runs})
    colors = plt.get_cmap("tab10")
    for i, fam in enumerate(families):
        pts = sorted(((getattr(r, x), r.best_top1, r) for r in runs
                      if family(r) == fam and getattr(r, x) and r.best_top1 is not None),
                     key=lambda p: p[0])
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [100 * p[1] for p in pts]
        ax.plot(xs, ys, "-", color=colors(i % 10), alpha=0.4)
        for xv, yv, (_, _, r) in zip(xs, ys, pts):
            done = r.state == "finished"
            ax.plot(xv, yv, "o", color=colors(i % 10),
                    markerfacecolor=colors(i % 10) if done else "none")
            ax.annotate(r.name, (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.plot([], [], "o-", color=colors(i % 10), label=fam)
    ax.set_xscale("log")
    ax.set_xlabel("parameters" if x == "params" else "multiply-adds per image")
    ax.set_ylabel("best test top-1 (%)")
    ax.set_title(f"Accuracy vs {'parameters' if x == 'params' else 'multiply-adds'} "
                 "(hollow: not finished)")
    ax.grid(True, which="both", alpha=0.3)
    if families:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_params_macs(runs: Sequence[Run], path: Path) -> None:
    """Paper-style bars: parameters (left axis) and FLOPs = multiply-adds (right) per network."""
    plt = _pyplot()
    counted = [r for r in runs if r.params is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(counted) + 2), 4.5))
    xs = list(range(len(counted)))
    p_unit, p_scale = _unit(max((r.params for r in counted), default=1))
    m_unit, m_scale = _unit(max((r.macs for r in counted), default=1))
    ax.bar([x - 0.2 for x in xs], [r.params / p_scale for r in counted], 0.4, color="tab:blue",
           label="parameters")
    ax.set_ylabel(f"parameters ({p_unit})", color="tab:blue")
    ax2 = ax.twinx()
    ax2.bar([x + 0.2 for x in xs], [r.macs / m_scale for r in counted], 0.4, color="tab:orange",
            label="FLOPs (multiply-adds)")
    ax2.set_ylabel(f"FLOPs = multiply-adds ({m_unit})", color="tab:orange")
    ax.set_xticks(xs, [r.name for r in counted], rotation=60, ha="right", fontsize=7)
    ax.set_title("Parameters and FLOPs")
    handles = [h for a in (ax, ax2) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_curves(runs: Sequence[Run], path: Path) -> None:
    """Training loss and test top-1 against the step, one line per run."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        train = [m for m in r.metrics if m.get("kind") == "train" and "loss" in m]
        line = None
        if train:
            (line,) = ax_loss.plot([m["step"] for m in train], [m["loss"] for m in train],
                                   label=r.name, lw=1)
        if r.evals:
            ax_acc.plot([m["step"] for m in r.evals], [100 * m["top1"] for m in r.evals], "o-",
                        ms=3, lw=1, label=r.name, color=None if line is None else line.get_color())
    ax_loss.set(xlabel="step", ylabel="training loss", title="Training loss")
    ax_acc.set(xlabel="step", ylabel="test top-1 (%)", title="Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------- entry points

def _savefig(fig, path) -> None:
    """A PNG through epath (matplotlib writes local files only; `out` may be on gs://)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    path.write_bytes(buf.getvalue())


def make_report(paths: Sequence[str], out: str | Path) -> tuple[list[Run], Path]:
    """Read every run under `paths`, write report.md, report.json and the plots into `out`."""
    runs = [load_run(w) for w in find_runs(paths)]
    add_counts(runs)
    runs.sort(key=sort_key)
    out = _epath(str(out))
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(runs, "params", out / PLOTS[0])
    plot_accuracy(runs, "macs", out / PLOTS[1])
    plot_params_macs(runs, out / PLOTS[2])
    plot_curves(runs, out / PLOTS[3])
    (out / "report.md").write_text(markdown(runs, paths, PLOTS))
    (out / "report.json").write_text(json.dumps([row(r) for r in runs], indent=1, default=str))
    return runs, out / "report.md"


def default_out(paths: Sequence[str]) -> str:
    if len(paths) == 1:
        return f"{paths[0].rstrip('/')}/report"   # string joining keeps gs:// intact
    return "report"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m igc_jax.report`'s arguments (sys.argv[1:] when None) → the exit status."""
    workdirs = parse_tool_flags(FLAGS, argv)
    try:
        if not workdirs:
            raise UserError("give one or more run workdirs or sweep roots")
        runs, md = make_report(workdirs, FLAGS.out or default_out(workdirs))
    except UserError as e:  # anything else is a bug: its traceback, exit 1
        return errors.report(str(e))
    print(f"{len(runs)} runs → {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
