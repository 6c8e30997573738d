"""`conv_mode=autotune` on this CPU: what it chooses for each layer, whether an independent timing
agrees, and what the tuning costs at start-up.

For the quick start and CIFAR IGC-L24M2 D=20, at each config's own batch and dtype:
1. start-up: `igc_jax.training.steps.plan_modes` with conv_mode=autotune and an empty cache (the
   tuner measures every distinct layer shape), then again (everything from the cache);
2. an independent timing of every candidate mode of each layer shape, written here and sharing
   no code with the tuner's timer (its own program: the output and the three gradients for a
   cotangent given as an argument, as in a train step; its own inputs; the modes timed in
   interleaved rounds of one call each, the median of ROUNDS calls);
3. per layer: the tuner's choice, its independent time against the independently fastest mode
   (the issue's bound: within 1.3×), and the rules' choice (`auto` on CPU) beside it.

    python -m benchmarks.autotune        # writes benchmarks/results/autotune_cpu.{json,md}
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from igc_jax import configs
from igc_jax.igc import modes, select
from igc_jax.igc.select import LayerShape
from igc_jax.training import steps

RESULTS = Path(__file__).resolve().parent / "results"
NETWORKS = {"quick start (IGC-L4M4, D=8, digits 8×8)": ("experiments/quickstart.py", (8, 8, 1)),
            "IGC-L24M2 D=20 (CIFAR 32×32)": ("experiments/cifar10_igc.py:L24M2,D20", (32, 32, 3))}
ROUNDS = 7
BOUND = 1.3


def independent_times(shape: LayerShape, mode_names: list[str], batch: int,
                      dtype: str) -> dict[str, float]:
    """Median milliseconds of forward + backward of each mode on one layer shape."""
    kh, kw = shape.kernel
    h, w = shape.size
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((batch, h, w, shape.C_in)), dtype)
    p = jnp.asarray(rng.standard_normal((kh, kw, shape.C_in // shape.L, shape.C)), dtype)
    s = jnp.asarray(rng.standard_normal((1, 1, shape.C // shape.M, shape.C)), dtype)
    pad = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    out = jax.eval_shape(lambda a, b, c: modes.MODES["composed"](
        a, b, c, L=shape.L, M=shape.M, strides=shape.strides, padding=pad), x, p, s)
    dy = jnp.asarray(rng.standard_normal(out.shape), dtype)
    fns = {}
    for m in mode_names:
        def train_pass(a, b, c, g, f=modes.MODES[m]):
            # What a train step asks of the layer: its output, and the three gradients for the
            # cotangent that arrives from above (an argument, as in a network).
            y, back = jax.vjp(lambda *k: f(*k, L=shape.L, M=shape.M, strides=shape.strides,
                                           padding=pad), a, b, c)
            return y, back(g)
        fns[m] = jax.jit(train_pass)
        jax.block_until_ready(fns[m](x, p, s, dy))  # compile + warm-up
    times = {m: [] for m in mode_names}
    for _ in range(ROUNDS):
        for m, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(x, p, s, dy))
            times[m].append(time.perf_counter() - t)
    return {m: 1e3 * statistics.median(t) for m, t in times.items()}


def measure(name: str, path: str, image_shape: tuple[int, int, int]) -> dict:
    config = configs.load_config(path)
    config.conv_mode = "autotune"
    context = select.detect_context()  # builds the C++ kernels first: not the tuner's cost
    with tempfile.TemporaryDirectory() as cache:
        os.environ["IGC_JAX_AUTOTUNE_DIR"] = cache
        t = time.perf_counter()
        first = steps.plan_modes(config, image_shape, context)
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        cached = steps.plan_modes(config, image_shape, context)
        cached_s = time.perf_counter() - t
    assert cached.plan == first.plan and all(r["cached"] for r in cached.tuned)
    batch = config.batch_size // jax.device_count()
    layers = []
    for record in first.tuned:
        f = record["shape"]
        shape = LayerShape(**{**f, "kernel": tuple(f["kernel"]), "strides": tuple(f["strides"]),
                              "size": tuple(f["size"])})
        indep = independent_times(shape, sorted(record["timings_ms"]), batch, config.dtype)
        fastest = min(indep, key=indep.get)
        n = sum(1 for s, _ in first.layers.values() if s == shape.describe())
        layers.append({"shape": shape.describe(), "input": f"{shape.size[0]}×{shape.size[1]}",
                       "layers": n, "choice": record["choice"], "tuner_ms": record["timings_ms"],
                       "independent_ms": indep, "fastest": fastest,
                       "ratio": indep[record["choice"]] / indep[fastest],
                       "rules": select.select_mode(shape, context)})
        print(f"{name}: {layers[-1]['shape']} on {layers[-1]['input']}: tuner {record['choice']}"
              f", independent fastest {fastest}, ratio {layers[-1]['ratio']:.2f}", flush=True)
    return {"network": name, "config": path, "batch_per_device": batch, "dtype": config.dtype,
            "startup_first_s": first_s, "startup_cached_s": cached_s, "layers": layers}


def markdown(doc: dict) -> str:
    lines = [f"# conv_mode=autotune on this CPU ({doc['date']})", "",
             f"{doc['machine']}, jax {doc['jax']}; `python -m benchmarks.autotune`. The tuner's "
             "timings (forward + backward, median of 5 to 100 interleaved rounds within its "
             "2 s per-layer budget) "
             "beside an independent timing of every candidate written in the benchmark "
             f"(output and gradients for a given cotangent, interleaved rounds, median of "
             f"{ROUNDS}), in one process. \"ratio\": "
             "the independent time of the tuner's choice over the independently fastest mode "
             f"(bound {BOUND}×). \"rules\": what `auto` picks on this CPU without measuring. "
             "Times in ms; the machine was shared with other jobs.", ""]
    for net in doc["networks"]:
        lines += [f"## {net['network']}", "",
                  f"`{net['config']}`, batch {net['batch_per_device']} per device, "
                  f"{net['dtype']}. Start-up cost of the tuning: **{net['startup_first_s']:.1f} s**"
                  f" with an empty cache, **{net['startup_cached_s']:.2f} s** cached.", "",
                  "| layer shape | input | layers | tuner's choice | rules | tuner ms | "
                  "independent ms (each mode) | independent fastest | ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in net["layers"]:
            indep = ", ".join(f"{m} {t:.3g}" for m, t in sorted(r["independent_ms"].items(),
                                                              key=lambda kv: kv[1]))
            over = "" if r["ratio"] <= BOUND else " **over**"
            lines.append(f"| {r['shape']} | {r['input']} | {r['layers']} | {r['choice']} | "
                         f"{r['rules']} | {r['tuner_ms'][r['choice']]:.3g} | {indep} | "
                         f"{r['fastest']} | {r['ratio']:.2f}{over} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "autotune_cpu")
    args = parser.parse_args(argv)
    doc = {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "networks": [measure(name, *spec) for name, spec in NETWORKS.items()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    worst = max(r["ratio"] for net in doc["networks"] for r in net["layers"])
    print(f"wrote {args.out.with_suffix('.md')}; worst ratio {worst:.2f} (bound {BOUND})")


if __name__ == "__main__":
    main()
