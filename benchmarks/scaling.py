"""Data parallelism of the compiled train step: per-device FLOPs, bytes and collectives.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.scaling
    (the script sets the flag itself when it is not set; about 5 minutes on 2 cores)

For 1, 2, 4 and 8 simulated CPU devices at a fixed global batch, compiles the train step of each
network in each computation mode `auto` can pick on some backend (`grouped` on GPU/TPU, `native`,
`split`, `taps` on CPU) two ways: igc-jax's per-device steps (`shard_map`) and plain GSPMD
(`jax.jit` over the sharded batch, the pre-shard_map path), and reads from the compiled step
`cost_analysis()` (per-device FLOPs and bytes accessed) and the number and bytes of every
collective in its HLO. Nothing is timed: these are properties of the compiled program.
Writes benchmarks/results/scaling.{json,md}.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=8").strip()

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from igc_jax import configs
from igc_jax.igc.select import ModeContext
from igc_jax.training import sharding, steps
from igc_jax.training.aot import collectives, cost

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (config file, overrides of model fields, image size): the three networks of issue 15.
NETWORKS: dict[str, tuple[str, dict[str, Any], int]] = {
    "IGC-L24M2 D=8": ("experiments/cifar10_igc.py:L24M2,D8", {}, 32),
    "IGC-L24M2+Ident. D=8": ("experiments/cifar10_igc.py:L24M2,D8,ident", {}, 32),
    "IGC-L16M16+Ident. (ImageNet, 64²)": ("experiments/imagenet_l16m16.py", {}, 64),
}


def network_config(name: str, mode: str, batch: int) -> ml_collections.ConfigDict:
    path, overrides, size = NETWORKS[name]
    config = configs.load_config(path)
    config.model.update(overrides)
    config.dataset.image_size = size
    config.conv_mode = mode
    config.batch_size = batch
    return config


def traced_step(config: ml_collections.ConfigDict, mesh, *, per_device: bool = True,
                context: ModeContext | None = None):
    """The train step of `config` on `mesh`, traced on abstract batch shapes; nothing runs.
    `auto` decides in `context` (None: config.conv_mode as each layer is traced)."""
    size = config.dataset.image_size
    plan = steps.plan_modes(config, (size, size, 3), context, can_measure=False).plan \
        if context else None
    model = steps.make_model(config, plan, per_device=per_device)
    schedule = steps.learning_rate_schedule(config, 100, 1000)
    tx = steps.make_optimizer(config, schedule)
    state, shardings = steps.init_state(model, tx, (size, size, 3), 0, mesh)
    train, _, _ = steps.compile_steps(model, tx, schedule, shardings, mesh,
                                      per_device_steps=per_device)
    bs = sharding.batch_sharding(mesh)
    batch = {"image": jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.float32,
                                           sharding=bs),
             "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=bs)}
    return train.trace(state, batch)


def compiled_step(config: ml_collections.ConfigDict, mesh, *, per_device: bool = True,
                  context: ModeContext | None = None):
    """The compiled train step of `config` on `mesh`; nothing runs."""
    return traced_step(config, mesh, per_device=per_device, context=context).lower().compile()


def measure(name: str, mode: str, devices: int, *, batch: int, per_device: bool,
            context: ModeContext) -> dict[str, Any]:
    mesh = sharding.make_mesh(jax.devices()[:devices])
    compiled = compiled_step(network_config(name, mode, batch), mesh, per_device=per_device,
                             context=context)
    return {"network": name, "mode": mode, "devices": devices,
            "path": "shard_map" if per_device else "gspmd", **cost(compiled),
            "collectives": collectives(compiled.as_text())}


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Data-parallel scaling of the compiled train step ({meta['date']})", "",
             f"jax {meta['jax']}, {meta['devices']} simulated CPU devices, global batch "
             f"{meta['batch']}; per-device FLOPs and bytes from `compiled.cost_analysis()` "
             "(C++ custom calls of mode `native` count 0 FLOPs), collectives from the compiled "
             "HLO (bytes = result size per device). `flops ×N` = per-device FLOPs × devices ÷ the "
             "1-device step's (1.00 = perfect split). `python -m benchmarks.scaling`.", "",
             "| network | mode | path | devices | GFLOP/device | flops ×N | MB accessed/device |"
             " all-reduce (n, MB) | all-gather (n, MB) | collective-permute (n, MB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["network"], r["mode"], r["path"]): r["flops"] for r in rows if r["devices"] == 1}
    for r in rows:
        c = r["collectives"]
        one = base.get((r["network"], r["mode"], r["path"])) or float("nan")
        cell = lambda op: f"{c[op]['count']}, {c[op]['bytes'] / 1e6:.2f}"  # noqa: E731
        lines.append(f"| {r['network']} | {r['mode']} | {r['path']} | {r['devices']} | "
                     f"{r['flops'] / 1e9:.3f} | {r['flops'] * r['devices'] / one:.2f} | "
                     f"{r['bytes_accessed'] / 1e6:.1f} | {cell('all-reduce')} | "
                     f"{cell('all-gather')} | {cell('collective-permute')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling")
    args = parser.parse_args(argv)
    if jax.device_count() < max(args.devices):
        sys.exit(f"error: {max(args.devices)} devices asked for, {jax.device_count()} present")
    # The modes `auto` picks for these layers: grouped (GPU/TPU), native (CPU with the C++
    # kernels), split and taps (CPU without them); each compiled here on CPU.
    modes = {"IGC-L24M2 D=8": ("grouped", "native", "split"),
             "IGC-L24M2+Ident. D=8": ("grouped", "native", "split"),
             "IGC-L16M16+Ident. (ImageNet, 64²)": ("grouped", "split")}
    context = ModeContext("cpu", native=True)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "jax": jax.__version__,
            "devices": jax.device_count(), "batch": args.batch}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, network_modes in modes.items():
        for mode in network_modes:
            for per_device in (True, False):
                for n in args.devices:
                    rows.append(measure(name, mode, n, batch=args.batch, per_device=per_device,
                                        context=context))
                    r = rows[-1]
                    print(f"{name} {mode} {r['path']} {n}: {r['flops'] / 1e9:.3f} GFLOP/dev, "
                          f"{ {k: v['count'] for k, v in r['collectives'].items() if v['count']} }",
                          flush=True)
                    # Saved after every row: a long run stopped midway keeps what it measured.
                    args.out.with_suffix(".json").write_text(
                        json.dumps({**meta, "rows": rows}, indent=1) + "\n")
                    args.out.with_suffix(".md").write_text(_markdown(rows, meta))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
