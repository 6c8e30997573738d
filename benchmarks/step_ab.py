"""The real jitted train step of this checkout against another checkout's, side by side.

    git worktree add /tmp/before <rev>
    python -m benchmarks.step_ab --before=/tmp/before     # ~5 min on 2 cores

Alternates fresh processes of the two checkouts (A B A B ...), each compiling its own train step
(`igc_jax.training.steps` here; `igc_jax.train` in checkouts older than the package layout) on one
CPU device with the config's `auto` modes and timing `--steps` steps after warm-up, so both see
the same machine load. Reports best-of-rounds ms per step and the ratio, and whether the two
train steps are the same program (their StableHLO, source locations stripped, hashed).
Writes benchmarks/results/step_ab.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NETWORKS = {"IGC-L24M2 D=20": ("experiments/cifar10_igc.py:L24M2,D20", 128),
            "IGC-L24M2+Ident. D=20": ("experiments/cifar10_igc.py:L24M2,D20,ident", 64)}

# Run inside each checkout: prints the best step time in ms.
_PROBE = r"""
import hashlib, importlib.util, json, re, sys, time
import jax, jax.numpy as jnp, numpy as np
path, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = importlib.util.spec_from_file_location("exp", path.split(":")[0])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
config = module.get_config(path.split(":")[1] if ":" in path else None)
config.batch_size = batch
try:  # the old flat layout first (an editable install would map missing new modules elsewhere)
    from igc_jax import sharding, train as lib
    model = lib.make_model(config)
except ImportError:
    from igc_jax.training import sharding, steps as lib
    from igc_jax.igc import select
    if hasattr(lib, "plan_modes"):  # the plan decided once, then the model
        model = lib.make_model(config, lib.plan_modes(config, (32, 32, 3),
                                                      select.detect_context()).plan)
    else:
        model = lib.make_model(config, select.detect_context())
print(lib.__file__, file=sys.stderr)
mesh = sharding.make_mesh(jax.devices()[:1])
schedule = lib.learning_rate_schedule(config, 100, 10000)
tx = lib.make_optimizer(config, schedule)
state, shardings = lib.init_state(model, tx, (32, 32, 3), 0, mesh)
train, _, _ = lib.compile_steps(model, tx, schedule, shardings, mesh)
rng = np.random.default_rng(0)
batch_ = {"image": rng.standard_normal((batch, 32, 32, 3)).astype(np.float32),
          "label": rng.integers(0, 10, batch).astype(np.int32)}
batch_ = jax.device_put(batch_, sharding.batch_sharding(mesh))
# The program itself, without its source locations: equal digests mean the same step.
text = "\n".join(l for l in re.sub(r"loc\([^)]*\)", "", train.lower(state, batch_).as_text())
                 .splitlines() if not l.startswith("#loc"))
program = hashlib.sha256(text.encode()).hexdigest()[:16]
for _ in range(2):
    state, m = train(state, batch_); jax.block_until_ready(m)
times = []
for _ in range(steps):
    t = time.perf_counter(); state, m = train(state, batch_); jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
print(json.dumps({"best_ms": 1e3 * min(times), "median_ms": 1e3 * float(np.median(times)),
                  "program": program}))
"""


def probe(checkout: Path, config: str, batch: int, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, "-c", _PROBE, config, str(batch), str(steps)],
                       cwd=checkout, env=env, capture_output=True, text=True, timeout=1200)
    if r.returncode:
        raise RuntimeError(f"{checkout}: {r.stderr[-2000:]}")
    loaded = [line for line in r.stderr.splitlines() if line.endswith(".py")][-1]
    if not loaded.startswith(str(checkout)):
        raise RuntimeError(f"{checkout}: the probe imported {loaded}, another checkout's code")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    for name, (config, batch) in NETWORKS.items():
        runs = {"before": [], "after": []}
        for _ in range(args.rounds):
            for which, checkout in (("before", args.before.resolve()), ("after", ROOT)):
                runs[which].append(probe(checkout, config, batch, args.steps))
                print(name, which, runs[which][-1], flush=True)
        best = {k: min(r["best_ms"] for r in v) for k, v in runs.items()}
        programs = {k: {r.get("program") for r in v} for k, v in runs.items()}
        rows.append({"network": name, "batch": batch, "runs": runs, "best_ms": best,
                     "after_over_before": best["after"] / best["before"],
                     "same_program": len(programs["before"] | programs["after"]) == 1})
    rev = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "before": rev,
            "loadavg": [round(v, 2) for v in os.getloadavg()], "rounds": args.rounds}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_ab.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# Train step, this checkout vs {rev} ({meta['date']})", "",
             f"One CPU device, `auto` modes, best of {args.rounds} alternating fresh processes × "
             f"{args.steps} steps; load average at the end {meta['loadavg']}. "
             "`python -m benchmarks.step_ab --before=<checkout>`. \"same program\": the two "
             "checkouts' train steps lower to the same StableHLO (source locations aside), so "
             "any difference in time is the machine's.", "",
             "| network | batch | before (ms) | after (ms) | after ÷ before | same program |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['batch']} | {r['best_ms']['before']:.0f} | "
                     f"{r['best_ms']['after']:.0f} | {r['after_over_before']:.2f} | "
                     f"{'yes' if r['same_program'] else 'no'} |")
    (RESULTS / "step_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
