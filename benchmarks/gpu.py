"""Every GPU computation mode of the IGC layer, and the paper's training steps, on one GPU.

    python -m benchmarks.gpu              # one GPU, under 8 minutes -> results/gpu_modes.{json,md}
    python -m benchmarks.gpu --dry-run    # anywhere (CPU too), tiny sizes, about a minute
                                          #   -> results/gpu_modes_dry_run.{json,md}

In one process on one device, side by side:
  ceilings  the chip's dense matmul rate (float32 and bfloat16) and copy bandwidth
            (benchmarks/roofline.py).
  training  the trainer's own jitted train step (igc_jax.training.steps: forward, backward,
            SGD-Nesterov + L2 update, BatchNorm statistics, donated state) of IGC-L24M2 D=20
            (CIFAR, 32², batch 256, float32), IGC-L16M16+Ident. and ResNet-18 C=69 (ImageNet, 224²,
            batch 128, bfloat16 as their configs), each in `auto` (`grouped` on a GPU); then, while
            a third of the budget lasts, the IGC networks in their other modes.
  layers    one IGC layer at the paper's CIFAR (batch 256) and ImageNet (batch 128) shapes
            (`benchmarks.run.layer_shapes`, IGC-L24M2's and IGC-L16M16's first), in every mode of
            `igc_jax.igc.modes.MODES` but the CPU-only `native` (where the mode is meant for the
            shape: `benchmarks.run.mode_in_range`), in float32 and bfloat16, as three jitted
            functions timed separately: the forward f(x), the input gradient (w.r.t. x only) and
            the weight gradient (w.r.t. both kernels only) of <f(x), g> for a fixed random g. The
            weight gradient recomputes the primary conv's output (the secondary's gradient needs
            it); the input gradient needs no forward. The first call of each compiles it and is
            the check: its result against `composed` in float32 at "highest" precision on the same
            inputs; a mode further off than the tolerance (TF32 or bfloat16 rounding) is flagged.
Times: the median (and best) of `--repeats` calls after one warm-up call; a training step's is its
share of a `--steps`-step window. Ratios (× the fastest mode, ÷ ResNet-18 C=69) are of medians
from this run. Budget: no layer item is begun after `--budget-s` (390 s) or more than
`--layer-cap-s` (30 s) after its layer's first, so the run ends within 8 minutes on an H100. A
failing item is recorded under "errors" and the run goes on; the exit status is 1 if an item
failed or a check did not pass.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import roofline, run
from igc_jax import configs, summary
from igc_jax.igc import select
from igc_jax.training import sharding, steps

PARTS = ("fwd", "dx", "dw")
# Largest relative error (max |a - b| / max |b|) against the float32 "highest" reference: float32
# convolutions and dots use TF32 (10-bit mantissa) on NVIDIA GPUs by default; bfloat16 has 8 bits.
TOLERANCE = {"float32": 1e-2, "bfloat16": 5e-2}
DTYPES = ("float32", "bfloat16")
# Layers of these networks are timed first: a run cut short by the budget still has them.
FIRST = ("IGC-L24M2", "IGC-L16M16 (ImageNet)")


@dataclasses.dataclass(frozen=True)
class Network:
    """A network whose train step is timed: its experiment config at the benchmark's batch."""
    name: str
    config: str  # experiments/<file>.py[:argument]
    batch: int
    other_modes: tuple[str, ...] = ()  # timed after `auto`, budget permitting
    model: dict = dataclasses.field(default_factory=dict)  # model field overrides (dry run)
    image_size: int | None = None


def networks(dry: bool) -> list[Network]:
    """IGC-L24M2 D=20 and IGC-L16M16+Ident. against ResNet-18 C=69 (the dry run: small versions).

    The other modes are those meant for every layer of the net (`run.mode_in_range`); on
    IGC-L16M16 (C_in/L up to 128) `composed` and `taps` would take seconds per step."""
    cifar_modes = tuple(m for m in run.modes_for("gpu") if m not in ("grouped", "taps"))
    if not dry:
        return [Network("IGC-L24M2 D=20, CIFAR", "experiments/cifar10_igc.py:L24M2,D20", 256,
                        (*cifar_modes, "taps")),
                Network("IGC-L16M16+Ident., ImageNet", "experiments/imagenet_l16m16.py", 128,
                        ("split",)),
                Network("ResNet-18 C=69, ImageNet", "experiments/imagenet_resnet18_c69.py", 128)]
    # 1/16 of the widths: every IGC layer's groups (2–8 channels) fit the C++ kernels' registers,
    # so the CPU step compiles quickly.
    small = dict(stem_width=16, widths=(16, 32, 64, 128))
    return [Network("IGC-L24M2 D=5, CIFAR", "experiments/cifar10_igc.py:L24M2,D5", 2),
            Network("IGC-L16M16+Ident. (1/16 width), ImageNet", "experiments/imagenet_l16m16.py",
                    2, model=small, image_size=32),
            Network("ResNet-18 (C=16), ImageNet", "experiments/imagenet_resnet18_c69.py", 2,
                    model=small, image_size=32)]


def attempt(what: str, fn: Callable[[], dict], errors: list[str]) -> dict:
    """fn(), or {"error": ...} recorded in `errors`: one failing item must not cost the run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 (recorded, reported, and the exit status says so)
        errors.append(f"{what}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")
        print(f"  ERROR {errors[-1]}", flush=True)
        return {"error": errors[-1]}


# ----------------------------------------------------------------------------- layers

def part_fns(mode: str, L: int, M: int, stride: int) -> dict[str, Callable]:
    """The layer's three jitted parts, each of (x, primary, secondary, g): the forward f(x) and
    the gradients of <f(x), g> w.r.t. x only (`dx`) and w.r.t. both kernels only (`dw`)."""
    f = run.layer_fn(mode, L, M, stride)

    def inner(x, p, s, g):
        return jnp.sum(f(x, p, s).astype(jnp.float32) * g.astype(jnp.float32))

    return {"fwd": jax.jit(lambda x, p, s, g: f(x, p, s)),
            "dx": jax.jit(jax.grad(inner, argnums=0)),
            "dw": jax.jit(jax.grad(inner, argnums=(1, 2)))}


def reference(L: int, M: int, stride: int, args: tuple) -> dict[str, Any]:
    """Every part by `composed` in float32 at "highest" precision (no TF32) on `args`."""
    args32 = tuple(a.astype(jnp.float32) for a in args)
    with jax.default_matmul_precision("highest"):
        return {part: fn(*args32) for part, fn in part_fns("composed", L, M, stride).items()}


def relative_error(out, ref) -> float:
    """Largest over the leaves of max |out - ref| / max |ref|."""
    return max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)) / jnp.max(jnp.abs(b)))
               for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)))


def time_part(fn: Callable, args: tuple, ref, tolerance: float, reps: int) -> dict:
    """Compile and check `fn` (first call), then time it (`run._times`: warm-up, `reps` calls)."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t
    error = relative_error(out, ref)
    del out
    times, _ = run._times(fn, args, reps)
    return {**run._stats(times), "compile_s": compile_s, "rel_error": error,
            "passed": error <= tolerance}


def bench_layer(shape: tuple, modes: list[str], dtypes: tuple[str, ...], reps: int,
                deadline: float, errors: list[str]) -> list[dict]:
    """One row per (dtype, mode, part) of one `run.layer_shapes` layer; an item not begun by
    `deadline` (time.monotonic) or outside its mode's range is a row with "skipped"."""
    net, name, N, H, C_in, C, L, M, stride = shape
    Ho = (H - 1) // stride + 1
    base = {"network": net, "layer": name, "N": N, "H": H, "C_in": C_in, "C": C, "L": L, "M": M,
            "stride": stride, "macs": roofline.igc_layer_macs(N, Ho, Ho, C_in, C, L, M)}
    # bfloat16 values in every dtype: one reference serves them all.
    x, p, s = run.layer_args(N, H, C_in, C, L, M, jnp.bfloat16)
    inputs = (x, p, s, jax.random.normal(jax.random.key(3), (N, Ho, Ho, C), jnp.bfloat16))
    ref = attempt(f"{net} {name} reference", lambda: reference(L, M, stride, inputs), errors)
    rows = []
    for dtype in dtypes:
        args = tuple(a.astype(dtype) for a in inputs)
        for mode in modes:
            fns = part_fns(mode, L, M, stride)
            for part in PARTS:
                row = {**base, "dtype": dtype, "mode": mode, "part": part}
                if not run.mode_in_range(mode, C_in, L):
                    row["skipped"] = "outside the mode's range (benchmarks.run.mode_in_range)"
                elif "error" in ref or time.monotonic() > deadline:
                    row["skipped"] = "no reference, layer time cap or run budget"
                else:
                    row.update(attempt(f"{net} {name} {dtype} {mode} {part}", lambda: time_part(
                        fns[part], args, ref[part], TOLERANCE[dtype], reps), errors))
                rows.append(row)
            print(f"  {net} {name} {dtype} {mode}: " + ", ".join(
                _cell(r) for r in rows[-len(PARTS):]), flush=True)
    return rows


def _cell(row: dict) -> str:
    if "median_ms" in row:
        return f"{row['part']} {row['median_ms']:.3g} ms" + ("" if row["passed"] else " WRONG")
    return f"{row['part']} {'error' if 'error' in row else 'skipped'}"


def bench_layers(dry: bool, reps: int, deadline: float, cap_s: float,
                 errors: list[str]) -> list[dict]:
    """Every layer of `run.layer_shapes("gpu")` (FIRST's first), each within `cap_s` seconds."""
    shapes = sorted(run.layer_shapes("gpu", dry), key=lambda s: s[0] not in FIRST)
    if dry:  # compile time on a 2-core CPU: the strided layer is left to tests/test_benchmarks.py
        shapes = [s for s in shapes if s[-1] == 1]
    rows = []
    for shape in shapes:
        layer_deadline = min(deadline, time.monotonic() + cap_s)
        rows += bench_layer(shape, run.modes_for("gpu"), DTYPES, reps, layer_deadline, errors)
    return rows


# ----------------------------------------------------------------------------- training

def network_config(net: Network, mode: str) -> ml_collections.ConfigDict:
    """The network's experiment config at the benchmark's batch, in conv mode `mode`."""
    config = configs.load_config(net.config)
    config.model.update(net.model)
    if net.image_size:
        config.dataset.image_size = net.image_size
    config.batch_size, config.conv_mode = net.batch, mode
    return config


def random_batch(config: ml_collections.ConfigDict, mesh) -> dict:
    """A batch of standard-normal images and uniform labels, placed as the trainer places one."""
    rng = np.random.default_rng(0)
    size, n = config.dataset.image_size, config.batch_size
    return jax.device_put(
        {"image": rng.standard_normal((n, size, size, 3), np.float32),
         "label": rng.integers(0, config.dataset.num_classes, n).astype(np.int32)},
        sharding.batch_sharding(mesh))


def time_train_step(net: Network, mode: str, reps: int, window: int) -> dict:
    """The trainer's jitted train step of `net` in `mode`: compile, one warm-up step, then
    `reps` windows of `window` steps; per-step times."""
    config = network_config(net, mode)
    mesh = sharding.make_mesh(jax.devices()[:1])
    size = config.dataset.image_size
    planned = steps.plan_modes(config, (size, size, 3), select.detect_context())
    model = steps.make_model(config, planned.plan)
    schedule = steps.learning_rate_schedule(config, 1000, 100_000)
    tx = steps.make_optimizer(config, schedule)
    state, shardings = steps.init_state(model, tx, (size, size, 3), 0, mesh)
    train, _, _ = steps.compile_steps(model, tx, schedule, shardings, mesh)
    batch = random_batch(config, mesh)
    t = time.perf_counter()
    state, metrics = jax.block_until_ready(train(state, batch))
    compile_s = time.perf_counter() - t
    state, metrics = jax.block_until_ready(train(state, batch))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(window):
            state, metrics = train(state, batch)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t) / window)
    stats = run._stats(times)
    return {**stats, "compile_s": compile_s, "images_per_s": 1e3 * net.batch / stats["median_ms"],
            "resolved_modes": sorted({m for _, m in planned.layers.values()}),
            "loss": float(metrics["loss"]), "loss_finite": bool(np.isfinite(metrics["loss"]))}


def bench_training(dry: bool, reps: int, window: int, deadline: float, errors: list[str],
                   skipped: list[str]) -> list[dict]:
    """Each network in `auto`, then (none begun past `deadline`) the IGC nets' other modes."""
    jobs = [(net, "auto") for net in networks(dry)]
    jobs += [(net, mode) for net in networks(dry) for mode in net.other_modes]
    rows = []
    for net, mode in jobs:
        if mode != "auto" and time.monotonic() > deadline:
            skipped.append(f"training {net.name} {mode} (time budget)")
            continue
        config = network_config(net, mode)
        row = {"network": net.name, "mode": mode, "batch": net.batch, "dtype": config.dtype,
               "image_size": config.dataset.image_size,
               "macs_per_image": summary.summarize(config)[1]["macs"]}
        row.update(attempt(f"training {net.name} {mode}",
                           lambda: time_train_step(net, mode, reps, window), errors))
        rows.append(row)
        if "median_ms" in row:
            print(f"  {net.name} {mode} ({', '.join(row['resolved_modes']) or 'no IGC'}): "
                  f"{row['median_ms']:.1f} ms/step, {row['images_per_s']:.0f} images/s", flush=True)
    return rows


# ----------------------------------------------------------------------------- report

def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]]


def _timed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "median_ms" in r]


def layer_tables(rows: list[dict]) -> list[str]:
    """Per layer and dtype, one line per mode: each part's median ms (× the fastest mode's)."""
    lines = []
    keys = dict.fromkeys((r["network"], r["layer"], r["dtype"]) for r in rows)
    for net, name, dtype in keys:
        group = [r for r in rows if (r["network"], r["layer"], r["dtype"]) == (net, name, dtype)]
        first = group[0]
        fastest = {part: min((r["median_ms"] for r in _timed(group) if r["part"] == part),
                             default=None) for part in PARTS}
        body = []
        for mode in dict.fromkeys(r["mode"] for r in group):
            parts = {r["part"]: r for r in group if r["mode"] == mode}
            cells = [f"{parts[p]['median_ms']:.3g} ({parts[p]['median_ms'] / fastest[p]:.2f}×)"
                     if "median_ms" in parts[p] else
                     ("error" if "error" in parts[p] else "skipped") for p in PARTS]
            timed = _timed(parts.values())
            error = max((r["rel_error"] for r in timed), default=None)
            check = "–" if not timed else ("ok" if all(r["passed"] for r in timed) else "**WRONG**")
            body.append([mode, *cells, "–" if error is None else f"{error:.1e}", check])
        lines += [f"**{net} {name}** ({first['C_in']}→{first['C']}, {first['H']}², L{first['L']} "
                  f"M{first['M']}, stride {first['stride']}, batch {first['N']}, "
                  f"{first['macs'] / 1e9:.3g} GMAC), {dtype}", "",
                  *_table(["mode", "forward ms", "input grad ms", "weight grad ms",
                           "max rel. error", "check"], body), ""]
    return lines


def _per_image(row: dict, per: int | str) -> float:
    """Median ms per image, divided by `per` (1, or a row key such as "macs_per_image")."""
    return row["median_ms"] / row["batch"] / (row[per] if isinstance(per, str) else per)


def training_table(rows: list[dict]) -> list[str]:
    """ms/step, images/s and the ratios to ResNet-18 C=69 and to the network's own `auto`."""
    resnet = next((r for r in _timed(rows) if "ResNet" in r["network"]), None)
    auto = {r["network"]: r for r in _timed(rows) if r["mode"] == "auto"}
    body = []
    for r in rows:
        if "median_ms" not in r:
            body.append([r["network"], r["mode"], "", r["batch"], r["dtype"], "error", "", "", "",
                         "", ""])
            continue
        same_data = resnet is not None and "ImageNet" in r["network"]
        vs_resnet = [f"{_per_image(r, per) / _per_image(resnet, per):.2f}×" if same_data else "–"
                     for per in (1, "macs_per_image")]
        vs_auto = r["median_ms"] / auto[r["network"]]["median_ms"] if r["network"] in auto else "–"
        body.append([r["network"], r["mode"], ", ".join(r["resolved_modes"]) or "no IGC layer",
                     r["batch"], r["dtype"], r["median_ms"], r["images_per_s"], *vs_resnet,
                     vs_auto, r["compile_s"]])
    return _table(["network", "mode", "resolved", "batch", "dtype", "ms/step (median)",
                   "images/s", "time per image ÷ ResNet-18's", "per multiply-add ÷ ResNet-18's",
                   "÷ its auto", "compile s"], body)


def markdown(result: dict) -> str:
    c = result["ceilings"]
    lines = [f"# GPU computation modes and training steps ({result['device']})", ""]
    if result["dry_run"]:
        lines += ["**Dry run**: tiny sizes on this machine's backend. The times are not GPU "
                  "speeds; they show that the script runs end to end and that every mode agrees.",
                  ""]
    lines += [f"jax {result['jax']}, {result['date']}, one device. Medians of {result['repeats']} "
              f"timed calls after a warm-up; training: per step of {result['window']}-step "
              "windows. Ratios are within this run.", "",
              f"Ceilings measured in this run: matmul {c['matmul_float32_tflops']:.3g} TFLOP/s "
              f"float32 (default precision), {c['matmul_bfloat16_tflops']:.3g} TFLOP/s bfloat16; "
              f"copy {c['copy_gbps']:.3g} GB/s.", "",
              "## Training steps (the trainer's jitted step: forward, backward, SGD update)", "",
              *training_table(result["training"]), "",
              "## IGC layer: forward, input gradient, weight gradient, every mode", "",
              "Median ms (× the fastest mode for that part). Check: every part against `composed` "
              f"in float32 at highest precision, tolerance {TOLERANCE['float32']:g} (float32, "
              f"TF32 on GPU) / {TOLERANCE['bfloat16']:g} (bfloat16) relative.", "",
              *layer_tables(result["layers"]),
              f"Total run time {result['elapsed_s']:.0f} s."
              + (f" Skipped: {'; '.join(result['skipped'])}." if result["skipped"] else ""), ""]
    if result["errors"]:
        lines += ["## Errors", "", *(f"- {e}" for e in result["errors"]), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def ceilings(dry: bool) -> dict[str, float]:
    """Dense matmul TFLOP/s in float32 and bfloat16, copy GB/s (benchmarks.roofline)."""
    n, reps = (256, 2) if dry else (8192, 5)
    out = {f"matmul_{d}_tflops": 2 * roofline.matmul_rate(n, jnp.dtype(d), reps) / 1e12
           for d in DTYPES}
    out["copy_gbps"] = roofline.copy_bandwidth(1 << 22 if dry else 1 << 30, reps) / 1e9
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, any backend")
    parser.add_argument("--sections", default="training,layers",
                        help="comma-separated subset of training,layers")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (windows) per item")
    parser.add_argument("--steps", type=int, default=None, help="train steps per timed window")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="begin no other-mode train step after a third of this, no layer item "
                             "after all of it (default 390; a dry run: no limit)")
    parser.add_argument("--layer-cap-s", type=float, default=None,
                        help="begin no item of a layer this long after its first (default 30; "
                             "a dry run: no limit)")
    args = parser.parse_args(argv)
    if not args.dry_run and jax.default_backend() != "gpu":
        parser.error(f"needs a GPU (backend is {jax.default_backend()!r}); use --dry-run elsewhere")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    dry = args.dry_run
    reps, window = args.repeats or (2 if dry else 5), args.steps or (1 if dry else 10)
    budget = args.budget_s or (math.inf if dry else 390.0)
    start = time.monotonic()
    sections = set(args.sections.split(","))
    result = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
              "jax": jax.__version__, "python": platform.python_version(),
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "dry_run": dry,
              "repeats": reps, "window": window, "budget_s": budget, "modes": run.modes_for("gpu"),
              "ceilings": ceilings(dry), "training": [], "layers": [], "skipped": [], "errors": []}
    print(f"{result['device']}, jax {result['jax']}: ceilings {result['ceilings']}", flush=True)
    if "training" in sections:
        result["training"] = bench_training(dry, reps, window, start + budget / 3,
                                            result["errors"], result["skipped"])
    if "layers" in sections:
        cap = args.layer_cap_s or (math.inf if dry else 30.0)
        result["layers"] = bench_layers(dry, reps, start + budget, cap, result["errors"])
    result["elapsed_s"] = time.monotonic() - start
    write(result, "gpu_modes_dry_run" if dry else "gpu_modes")
    wrong = [r for r in _timed(result["layers"]) if not r["passed"]]
    if result["errors"] or wrong:
        print(f"FAILED: {len(result['errors'])} error(s), {len(wrong)} wrong result(s): "
              + ", ".join(f"{r['layer']} {r['dtype']} {r['mode']} {r['part']}" for r in wrong),
              file=sys.stderr)
        sys.exit(1)
    return result


def write(result: dict, stem: str) -> None:
    """results/<stem>.json and .md."""
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    (run.RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (run.RESULTS / f"{stem}.md").write_text(markdown(result))
    print(f"wrote {run.RESULTS / stem}.{{json,md}} in {result['elapsed_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
