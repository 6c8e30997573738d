"""Time README's quick start as a user runs it: the whole command, first run and cached run, with
`auto` and with each mode `auto` may pick for its layers, side by side in one run.

    python -m benchmarks.quickstart            # writes benchmarks/results/quickstart.{json,md}

A "first" run starts with an empty C++ kernel cache (`$IGC_JAX_NATIVE_CACHE` pointed at a fresh
folder, so the kernels of mode `native` are compiled, as on a new machine); a "cached" run finds
them built. No JAX compilation cache is used (as a user's first command has none). The variants
run in interleaved rounds, so the load of other jobs on a shared machine hits them alike; each
run's wall time, the load average around it, the run's final test top-1 and the modes `auto`
chose are saved, and the tables report medians.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUICKSTART = ROOT / "experiments" / "quickstart.py"
# `auto` on a CPU picks `native` or `split` for the quick start's layers (igc_jax.igc.select).
MODES = ("auto", "native", "split")
# What a user's shell has not set: the tests' persistent compilation cache, a platform choice.
_TEST_ONLY_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "JAX_PLATFORMS", "XLA_FLAGS")


def _children_cpu_seconds() -> float:
    """User + system CPU time of every finished child process and its children (the C++
    compiler included): on a shared machine it moves far less with the load than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(mode: str, native_cache: Path, scratch: Path, extra: list[str]) -> dict:
    """One quick-start command in a fresh workdir: wall time, load, accuracy, modes used."""
    workdir = Path(tempfile.mkdtemp(dir=scratch))
    env = {k: v for k, v in os.environ.items() if k not in _TEST_ONLY_ENV}
    env["IGC_JAX_NATIVE_CACHE"] = str(native_cache)
    cmd = [sys.executable, "-m", "igc_jax.main", f"--config={QUICKSTART}",
           f"--workdir={workdir}", f"--config.conv_mode={mode}", *extra]
    load_before = os.getloadavg()[0]
    cpu0 = _children_cpu_seconds()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    cpu_seconds = _children_cpu_seconds() - cpu0
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-2000:]}")
    status = json.loads((workdir / "status.json").read_text())
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
            "load_before": load_before,
            "load_after": os.getloadavg()[0], "final_top1": status["final_top1"],
            "best_top1": status["best_top1"], "steps": status["step"],
            "images_per_sec": status["images_per_sec"],
            "modes": sorted(set(status["conv_modes"]["layers"].values())),
            "layers": status["conv_modes"]["layers"],
            "native": status["conv_modes"]["context"]["native"]}


def measure(modes: list[str], repeats: int, extra: list[str]) -> dict[str, list[dict]]:
    """{"<mode> first" / "<mode> cached": [run, ...]}, interleaved round by round."""
    runs: dict[str, list[dict]] = {f"{m} {k}": [] for k in ("first", "cached") for m in modes}
    with tempfile.TemporaryDirectory(prefix="igc_quickstart_bench_") as tmp:
        scratch = Path(tmp)
        warm = scratch / "native_warm"
        for r in range(repeats):
            for kind in ("first", "cached"):
                for mode in modes:
                    cache = warm if kind == "cached" else scratch / f"native_cold_{r}_{mode}"
                    runs[f"{mode} {kind}"].append(run_once(mode, cache, scratch, extra))
                    print(f"round {r + 1}/{repeats} {mode} {kind}: "
                          f"{runs[f'{mode} {kind}'][-1]['seconds']} s", flush=True)
    return runs


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Median, spread and accuracy per variant, and its ratio to the fastest cached variant."""
    out = {}
    for name, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        cpu = [r["cpu_seconds"] for r in rs]
        out[name] = {"median_s": round(statistics.median(secs), 2), "min_s": min(secs),
                     "max_s": max(secs), "cpu_median_s": round(statistics.median(cpu), 2),
                     "cpu_min_s": min(cpu), "cpu_max_s": max(cpu),
                     "final_top1_median": statistics.median(r["final_top1"] for r in rs),
                     "modes": rs[0]["modes"]}
    fastest = min(v["median_s"] for k, v in out.items() if k.endswith("cached"))
    fastest_cpu = min(v["cpu_median_s"] for k, v in out.items() if k.endswith("cached"))
    for v in out.values():
        v["ratio_to_fastest_cached"] = round(v["median_s"] / fastest, 3)
        v["cpu_ratio_to_fastest_cached"] = round(v["cpu_median_s"] / fastest_cpu, 3)
    return out


def markdown(result: dict) -> str:
    rows = [f"| {name} | {', '.join(s['modes'])} | {s['median_s']:.1f} | {s['min_s']:.1f}–"
            f"{s['max_s']:.1f} | {s['ratio_to_fastest_cached']:.2f}× | {s['cpu_median_s']:.1f} | "
            f"{s['cpu_min_s']:.1f}–{s['cpu_max_s']:.1f} | "
            f"{s['cpu_ratio_to_fastest_cached']:.2f}× | "
            f"{100 * s['final_top1_median']:.2f}% |"
            for name, s in result["summary"].items()]
    loads = [x for rs in result["runs"].values() for r in rs for x in (r["load_before"],
                                                                        r["load_after"])]
    return "\n".join([
        "# Quick start, whole command (`python -m benchmarks.quickstart`)",
        "",
        f"{result['date']}, {result['cpus']} CPUs ({result['cpu']}), jax {result['jax']}, "
        f"{result['repeats']} runs per variant, interleaved; median wall time of "
        f"`python -m igc_jax.main --config=experiments/quickstart.py --workdir=<new dir> "
        f"--config.conv_mode=<mode>`, and its CPU time (user + system, the C++ compiler "
        f"included; 2 cores: up to twice the wall time). First: empty C++ kernel cache; cached: "
        f"kernels built; ratios against the fastest cached variant. "
        f"1-minute load average during the runs: {min(loads):.1f}–{max(loads):.1f} "
        f"(a shared machine: other jobs ran beside these).",
        "",
        "| variant | modes used | wall s (median) | wall min–max | vs fastest | CPU s (median) "
        "| CPU min–max | vs fastest | test top-1 |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows, ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", default="quickstart", help="results/<out>.{json,md}")
    args, extra = parser.parse_known_args(argv)
    if any(not a.startswith("--config.") for a in extra):  # e.g. --config.num_train_steps=5
        parser.error(f"only --config.X=Y overrides pass through, got {extra}")
    import jax  # only for the version recorded
    runs = measure(args.modes.split(","), args.repeats, extra)
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
              "cpus": len(os.sched_getaffinity(0)), "jax": jax.__version__,
              "repeats": args.repeats, "extra": extra, "runs": runs,
              "summary": summarise(runs)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
