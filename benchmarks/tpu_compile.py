"""Every experiment config compiled for real TPU slices on this CPU machine: does it fit?

    pip install -e ".[tpu]"                  # libtpu, matching the installed jax
    python -m benchmarks.tpu_compile         # the whole matrix; hours on 2 cores (resumable)
    python -m benchmarks.tpu_compile --only=imagenet_l16m16 --no-max-batch

For each config of `experiments/` (CIFAR, SVHN, the quick start: one slice; ImageNet: a
single-host and a multi-host slice) at its own batch size and dtype, `igc_jax.compile` compiles
the trainer's train and eval steps with the real TPU compiler (libtpu's compile-only devices) and
records per-chip HBM against the chip's capacity, whether it fits, the collectives of one step and
the compile seconds; for the ImageNet configs on v5litepod-8 and v4-8 it also searches for the
largest global batch that fits. Each result is saved as soon as it is measured, and a rerun skips
the (config, slice) pairs already in the results file (`--rerun` measures them again).
Writes benchmarks/results/tpu_compile.{json,md}. Compile seconds depend on this machine's load.
"""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SMALL = ("experiments/quickstart.py", "experiments/cifar10_igc.py", "experiments/cifar100_igc.py",
         "experiments/svhn_igc.py", "experiments/cifar10_igcv3.py")
IMAGENET = ("experiments/imagenet_l16m16.py", "experiments/imagenet_l4m32.py",
            "experiments/imagenet_l100m2.py", "experiments/imagenet_resnet18_c64.py",
            "experiments/imagenet_resnet18_c69.py", "experiments/imagenet_igcv3.py")
SMALL_SLICE = "v5litepod-8"
IMAGENET_SLICES = ("v5litepod-8", "v4-32")     # one host, four hosts
MAX_BATCH_SLICES = ("v5litepod-8", "v4-8")     # the largest batch that fits, ImageNet configs


def jobs(max_batch: bool) -> list[tuple[str, str, bool]]:
    """(config, slice, search the largest batch) in the order they run: the plain fits first; a
    search's report holds the fit at the config's batch too."""
    searched = MAX_BATCH_SLICES if max_batch else ()
    out = [(c, SMALL_SLICE, False) for c in SMALL]
    out += [(c, s, False) for s in IMAGENET_SLICES if s not in searched for c in IMAGENET]
    out += [(c, s, True) for s in dict.fromkeys((*IMAGENET_SLICES, *searched))
            if s in searched for c in IMAGENET]
    return out


TOLERANCE = 0.05  # a search ends when its bracket is 5 % of the largest batch that fits


def bracketed(search: dict[str, Any], chips: int) -> bool:
    """Whether a saved search has found the boundary: one example per chip, or TOLERANCE."""
    lo, hi = search["largest_fitting"], search["smallest_not_fitting"]
    return hi is not None and (lo is None or hi - lo <= max(chips, TOLERANCE * lo))


def saved(job: tuple[str, str, bool], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The saved row of the job's (config, slice), if any."""
    config, topology, _ = job
    return next((r for r in rows if r["config"] == config and r["topology"] == topology), None)


def satisfied(job: tuple[str, str, bool], rows: list[dict[str, Any]]) -> bool:
    """Whether a saved row answers the job (a search's row answers the plain fit too; a search
    cut off by its compile cap is taken up again)."""
    row = saved(job, rows)
    return row is not None and (not job[2] or ("max_batch" in row and
                                               bracketed(row["max_batch"], row["chips"])))


def run_job(config: str, topology: str, max_batch: bool, out: Path, max_compiles: int,
            resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """One `python -m igc_jax.compile` in its own process (a fresh compiler each time); a search
    goes on from `resume`, the saved row of an unfinished one."""
    cmd = [sys.executable, "-m", "igc_jax.compile", f"--config={config}",
           f"--topology={topology}", f"--json={out}"]
    if max_batch:
        cmd += ["--max_batch", f"--max_batch_compiles={max_compiles}",
                f"--max_batch_tolerance={TOLERANCE}"]
        if resume is not None and "max_batch" in resume:
            prior = out.with_suffix(".resume.json")
            prior.write_text(json.dumps(resume))
            cmd.append(f"--max_batch_resume={prior}")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())


def load_rows(path: Path, ignore: bool = False) -> list[dict[str, Any]]:
    """The rows saved so far (another run may be adding to the same file)."""
    return json.loads(path.read_text())["rows"] if path.exists() and not ignore else []


def save_row(path: Path, row: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Add one row to the results file under a lock (two runs may share it); all its rows, with
    a search's row replacing the plain fit or the older search of the same (config, slice)."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [r for r in load_rows(path) if (r["config"], r["topology"]) !=
                (row["config"], row["topology"]) or ("max_batch" in r and "max_batch" not in row)]
        rows.append(row)
        path.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    return rows


def _gb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f}"


def _collectives(step: dict[str, Any]) -> str:
    c = step["collectives"]
    moved = sum(c[op]["count"] for op in c if op != "all-reduce")
    return f"{c['all-reduce']['count']} all-reduce ({c['all-reduce']['bytes'] / 1e6:.1f} MB), " \
           f"{moved} other"


def consistent(search: dict[str, Any]) -> bool:
    """Whether every batch the search compiled below its largest fit fits and every one above it
    does not: memory is not monotone in the batch (the compiler's fusion and layout choices change
    with it), so a bisection's bracket is only trustworthy where this holds."""
    lo, budget = search["largest_fitting"], search["budget_bytes"]
    return all((int(k) <= (lo or 0)) == (v <= budget)
               for k, v in search["total_bytes_by_batch"].items())


def monotone_note(searches: list[dict[str, Any]]) -> str:
    """One sentence on whether the searches' compiles agree with their brackets."""
    bad = [f"{r['config']} on {r['topology']}" for r in searches
           if not consistent(r["max_batch"])]
    if not bad:
        return ("GB per chip is not monotone in the batch (the compiler's fusion and layout "
                "choices change with it), but in every search below, each batch compiled at or "
                "under the largest that fits did fit, and each one above it did not.")
    return ("GB per chip is not monotone in the batch; in " + ", ".join(bad) + " a batch under "
            "the largest that fits did not fit, or one above it did: that bracket is one "
            "boundary, not the only one.")


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Experiment configs compiled for TPU slices ({meta['date']})", "",
             f"jax {meta['jax']}, libtpu {meta['libtpu']}, on {meta['machine']} (no TPU): "
             "libtpu's compile-only devices, the real TPU compiler. Per-chip HBM = arguments + "
             "outputs − aliased (the donated state) + temporaries + code, the larger of the train "
             "and eval steps; capacity: 16 GiB (v5e), 32 GiB (v4). Collectives of one train step "
             "(\"other\" = all-gather, all-to-all, collective-permute, reduce-scatter). Compile "
             "seconds are on this 2-core machine under its load at the time. "
             "`python -m benchmarks.tpu_compile`.", "",
             "| config | network | slice | chips (hosts) | batch (per chip) | dtype | "
             "computation modes (IGC, depthwise) | "
             "GB per chip (train / eval) | capacity GB | fits | train-step collectives | "
             "compile s (train + eval) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        modes = ", ".join(f"{m} ×{n}" for m, n in r["conv_modes"].items()) or "—"
        lines.append(
            f"| {r['config']} | {r['network']} | {r['topology']} | {r['chips']} ({r['hosts']}) | "
            f"{r['batch_size']} ({r['batch_size'] // r['chips']}) | {r['dtype']} | {modes} | "
            f"{_gb(r['train']['memory_bytes']['total'])} / "
            f"{_gb(r['eval']['memory_bytes']['total'])} | {_gb(r['hbm_per_chip_bytes'])} | "
            f"{'yes' if r['fits'] else '**no**'} | "
            f"{_collectives(r['train'])} | {r['train']['compile_s']:.0f} + "
            f"{r['eval']['compile_s']:.0f} |")
    searches = [r for r in rows if "max_batch" in r]
    if searches:
        lines += ["", "## The largest global batch that fits (train step)", "",
                  "Bisection over compiles, each step guided by a line through the measured "
                  "totals (`--max_batch`), stopped when the bracket (the largest batch that fits, "
                  "the smallest that does not) is one example per chip or "
                  f"{TOLERANCE:.0%} wide (IGC-L16M16 and IGC-L4M32 on v5litepod-8 were searched "
                  "to 2%); a search cut off by its compile cap is taken up again "
                  "by the next run (`--max_batch_resume`). Where the compile cap came before any "
                  "batch that does not fit, the largest is a lower bound (≥). \"compiles\" "
                  "counts every compile of the search, the config's batch included.", "",
                  "| config | slice | config's batch | largest that fits (per chip) | "
                  "smallest that does not | compiles | GB per chip at each batch |",
                  "|---|---|---|---|---|---|---|"]
        lines[-2:-2] = [monotone_note(searches), ""]
        for r in searches:
            b = r["max_batch"]
            bound = "" if b["smallest_not_fitting"] else "≥ "
            per = f"{bound}{b['largest_fitting']} ({b['largest_fitting'] // r['chips']})" \
                if b["largest_fitting"] else "none"
            totals = ", ".join(f"{k}: {_gb(v)}" for k, v in
                               sorted(b["total_bytes_by_batch"].items(), key=lambda kv: int(kv[0])))
            lines.append(f"| {r['config']} | {r['topology']} | {r['batch_size']} | {per} | "
                         f"{b['smallest_not_fitting'] or '—'} | {b['compiles']} | {totals} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only configs whose path contains this")
    parser.add_argument("--no-max-batch", action="store_true", help="skip the batch searches")
    parser.add_argument("--rerun", action="store_true", help="ignore the saved results")
    parser.add_argument("--slice", default="", help="run only the jobs of this slice")
    parser.add_argument("--max-batch-compiles", type=int, default=5,
                        help="new compiles per run of a largest-batch search")
    parser.add_argument("--out", type=Path, default=RESULTS / "tpu_compile")
    args = parser.parse_args(argv)
    import importlib.metadata

    import jax
    from igc_jax.training import aot
    aot.check_libtpu()
    path = args.out.with_suffix(".json")
    meta = {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
            "libtpu": importlib.metadata.version("libtpu"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    tmp = args.out.with_suffix(f".job{os.getpid()}.json")
    for config, topology, max_batch in jobs(not args.no_max_batch):
        if (args.only not in config or (args.slice and topology != args.slice)
                or satisfied((config, topology, max_batch), load_rows(path, args.rerun))):
            continue
        print(f"{config} on {topology}{' (largest batch)' if max_batch else ''} ...", flush=True)
        row = run_job(config, topology, max_batch, tmp, args.max_batch_compiles,
                      resume=saved((config, topology, max_batch), load_rows(path, args.rerun)))
        rows = save_row(path, row, meta)
        args.out.with_suffix(".md").write_text(markdown(rows, meta))
        print(f"  {'fits' if row['fits'] else 'does not fit'}: "
              f"{row['need_per_chip_bytes'] / 1e9:.2f} GB per chip", flush=True)
    tmp.unlink(missing_ok=True)
    tmp.with_suffix(".resume.json").unlink(missing_ok=True)
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
