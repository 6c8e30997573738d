"""Time every IGC computation mode (igc_jax.modes.MODES) against a dense 3×3 conv of the same width.

For each (L, M): forward, and forward+backward (gradients w.r.t. input and both kernels, as in
training), at batch 64, 32×32, width C = L·M, float32, all in one process side by side with the
dense conv, so the ratios compare like with like. Each function is jitted and run once to compile
(reported separately); then the functions of one (L, M) are timed in interleaved rounds, one call
each per round, so load from other jobs hits them alike. A function stops after `repeats` calls,
or after 2 once its calls took `budget` seconds (the grouped fwd+bwd takes seconds per call); the
table reports the median.

    python -m benchmarks.layer_modes            # writes benchmarks/results/layer_modes.{json,md}
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from benchmarks import run
from igc_jax.igc import layers, modes
from igc_jax.igc.layers import he_normal

CONFIGS = ((24, 2), (8, 8), (4, 16), (64, 1))
RESULTS = Path(__file__).resolve().parent / "results"
PAD = ((1, 1), (1, 1))


def forward_fns(L: int, M: int, modes: Sequence[str]) -> dict[str, Callable]:
    """name → f(x, kernels) for the dense conv and each IGC mode (kernels: a tuple)."""
    fns = {"dense": lambda x, ks: modes.conv(x, ks[0], padding=PAD)}
    for mode in modes:
        fns[mode] = (lambda mode: lambda x, ks: layers.igc_apply(x, *ks, L=L, M=M, padding=PAD,
                                                              mode=mode))(mode)
    return fns


def forward_backward(f: Callable) -> Callable:
    """Output and the gradients of <f(x, ks), g> w.r.t. x and every kernel."""
    def fb(x, ks, g):
        y, vjp = jax.vjp(f, x, ks)
        return y, vjp(g)
    return fb


def call_seconds(fn: Callable, args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def time_interleaved(fns: dict[str, tuple[Callable, tuple]], repeats: int,
                     budget: float) -> dict[str, dict]:
    """Per name: first (compiling) call in s, then median and min ms of the timed calls."""
    first = {name: call_seconds(fn, args) for name, (fn, args) in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, args) in fns.items():
            if len(times[name]) < 2 or sum(times[name]) < budget:
                times[name].append(call_seconds(fn, args))
    return {name: {"first_call_s": round(first[name], 3),
                   "median_ms": round(1e3 * statistics.median(t), 2),
                   "min_ms": round(1e3 * min(t), 2), "calls": len(t)} for name, t in times.items()}


def bench_config(L: int, M: int, *, batch: int, size: int, modes: Sequence[str], repeats: int,
                 budget: float, seed: int = 0) -> list[dict]:
    C = L * M
    keys = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(keys[0], (batch, size, size, C), jnp.float32)
    kernels = {"dense": (he_normal(keys[1], (3, 3, C, C)),),
               "igc": (he_normal(keys[2], (3, 3, M, C)), he_normal(keys[3], (1, 1, L, C)))}
    g = jax.random.normal(keys[4], x.shape, jnp.float32)
    fns = {}
    for name, f in forward_fns(L, M, modes).items():
        ks = kernels["dense" if name == "dense" else "igc"]
        fns[name, "forward"] = (jax.jit(f), (x, ks))
        fns[name, "forward_backward"] = (jax.jit(forward_backward(f)), (x, ks, g))
    timed = time_interleaved(fns, repeats, budget)
    rows = []
    for name in forward_fns(L, M, modes):
        fwd, fwd_bwd = timed[name, "forward"], timed[name, "forward_backward"]
        rows.append({"L": L, "M": M, "width": C, "mode": name, "forward": fwd,
                     "forward_backward": fwd_bwd})
        print(f"L={L:3d} M={M:3d} {name:9s} fwd {fwd['median_ms']:10.2f} ms   "
              f"fwd+bwd {fwd_bwd['median_ms']:10.2f} ms", flush=True)
    dense = rows[0]
    for r in rows:
        for key in ("forward", "forward_backward"):
            r[key]["ratio_to_dense"] = round(r[key]["median_ms"] / dense[key]["median_ms"], 2)
    return rows


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# IGC layer: computation modes vs a dense 3×3 conv of the same width",
        "",
        f"`python -m benchmarks.layer_modes` on {meta['backend']} ({meta['device']}), "
        f"{meta['cpu_count']} CPU cores, jax {meta['jax']}, {meta['date']}. Batch {meta['batch']}, "
        f"{meta['size']}×{meta['size']}, float32, stride 1, padding 1. Median of timed calls after "
        "a compile call, timed in interleaved rounds; ratio = mode / dense in the same run (lower "
        "is faster). fwd+bwd = forward and gradients w.r.t. the input and both kernels.",
        "",
        f"{meta['note']} Load average before / after: {meta['loadavg_before']} / "
        f"{meta['loadavg_after']}.",
        "",
        "| L | M | width | mode | fwd ms | fwd / dense | fwd+bwd ms | fwd+bwd / dense | calls |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, b = r["forward"], r["forward_backward"]
        lines.append(f"| {r['L']} | {r['M']} | {r['width']} | {r['mode']} | {f['median_ms']:.1f} | "
                     f"{f['ratio_to_dense']:.2f} | {b['median_ms']:.1f} | "
                     f"{b['ratio_to_dense']:.2f} | {f['calls']}/{b['calls']} |")
    lines += ["", f"`select_mode('{meta['backend']}')` at run time: `{meta['auto']}`. Fastest IGC "
              "mode per configuration (fwd+bwd): " + ", ".join(
                  f"{config}: `{mode}`" for config, mode in meta["fastest_fwd_bwd"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    suite = "cpu" if jax.default_backend() == "cpu" else "gpu"
    parser.add_argument("--modes", nargs="+", default=run.modes_for(suite),
                        choices=list(modes.MODES),
                        help="default: the modes of this device's suite (benchmarks.run.modes_for)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (max)")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="seconds per measurement; slow functions get fewer calls (min 2)")
    parser.add_argument("--out", type=Path, default=RESULTS / "layer_modes")
    args = parser.parse_args(argv)

    loadavg_before = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for L, M in CONFIGS:
        rows += bench_config(L, M, batch=args.batch, size=args.size, modes=args.modes,
                             repeats=args.repeats, budget=args.budget)
    fastest = {}
    for L, M in CONFIGS:
        igc_rows = [r for r in rows if (r["L"], r["M"]) == (L, M) and r["mode"] != "dense"]
        best = min(igc_rows, key=lambda r: r["forward_backward"]["median_ms"])
        fastest[f"L{L}M{M}"] = best["mode"]
    meta = {
        "date": datetime.date.today().isoformat(), "jax": jax.__version__,
        "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "batch": args.batch,
        "size": args.size, "modes": args.modes, "auto": "per layer (igc_jax.igc.select)",
        "loadavg_before": loadavg_before, "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "fastest_fwd_bwd": fastest,
        "note": "The machine is shared with other jobs and noisy: absolute times vary run to run; "
                "the ratios, measured side by side in one process, are the meaningful numbers.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown(meta, rows))
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
