"""The fused Pallas IGC kernel against the unfused modes on a GPU: layers and training steps.

    python benchmarks/gpu_fused.py             # on one GPU: under 8 minutes (see --budget-s)
    python benchmarks/gpu_fused.py --dry-run   # anywhere: tiny sizes, Pallas interpret mode

Side by side in one run (one process, one device):
  ceilings  the chip's measured peaks: a large bfloat16 matmul and a float32 (default precision)
            matmul in TFLOP/s, a large streaming copy (read + write) in GB/s.
  check     at full size, `fused` (both tilings) equals every unfused mode (outputs; gradients
            against `grouped` for one layer per tiling).
  layers    one IGC layer, forward and forward+backward, in every mode of igc_jax.modes.MODES, plus
            the fused kernel's other tiling and a few tile sizes, for the paper's CIFAR (batch 256,
            float32) and ImageNet (batch 128, bfloat16) (L, M, width) shapes. A layer is timed as a
            chain of `--chain` applications inside one jit (shape-preserving layers) so launch
            overhead is amortised as in a network.
  training  jitted training steps (igc_jax.steps.train_step, SGD + Nesterov, donated state) of
            IGC-L24M2 D=20 (CIFAR, batch 256, float32), IGC-L16M16+Ident. and ResNet-18 C=69
            (ImageNet 224², batch 128, bfloat16), in each mode.
Reported: time, images/s, achieved TFLOP/s (useful multiply-adds × 2, IGC counted exactly, not
the dense composed kernel) and GB/s of compulsory traffic (input + output + weights), each as a
fraction of the measured ceilings; then the issue's targets: fused ≥ 1.5× the best unfused mode
for the (L=24, M=2) and (L=16, M=16) layers, and the IGC-L16M16+Ident. step no slower per
multiply-add than ResNet-18 C=69's. Training FLOPs are 3 × the forward's (backward ≈ 2 × forward).
A failing measurement is recorded under "errors" and the run goes on; the exit status is 1 if any
failed or a check did not pass. New measurements stop being started after --budget-s (360 s; half
of it for the non-target layers), so the run ends within 8 minutes on an H100/H200.
Writes benchmarks/results/gpu_fused.{json,md} (the dry run: gpu_fused_dry_run.{json,md}; its
numbers are interpret-mode CPU times, meaningless as speeds, and only show the script works).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from igc_jax import configs, summary
from igc_jax.igc import fused, modes
from igc_jax.training import sharding
from igc_jax.training import steps as train_steps
from igc_jax.igc.fused import Blocks

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# `native` is the C++ kernel for CPU, not a GPU mode.
UNFUSED = [m for m in modes.MODES if m not in ("fused", "native")]
# Unfused modes timed only where their docstrings say they are meant for; elsewhere their run and
# compile times grow with K_i = C_in/L or with L past usefulness. `composed` (L× the primary's
# multiply-adds) is timed on every layer but on no ImageNet network.
MODE_APPLIES: dict[str, Callable[[int, int], bool]] = {
    "taps": lambda k_i, L: k_i <= 16,  # unrolls K_i·9 plane multiply-adds
    "split": lambda k_i, L: L <= 16,  # L separate dense convolutions
}


def unfused_modes(k_i: int, L: int) -> list[str]:
    """The unfused modes worth timing for L primary groups of K_i inputs."""
    return [m for m in UNFUSED if MODE_APPLIES.get(m, lambda *_: True)(k_i, L)]


TARGET_SPEEDUP = 1.5


@dataclasses.dataclass(frozen=True)
class Layer:
    """One IGC layer: input (N, H, W, c_in) → (N, H/stride, W/stride, C)."""
    name: str
    N: int
    H: int
    c_in: int
    C: int
    L: int
    M: int
    stride: int = 1
    dtype: str = "float32"
    target: bool = False  # one of the (L, M) shapes: 1.5× target, fwd+bwd, tile sweep
    check: bool = True  # part of the full-size correctness check

    @property
    def chainable(self) -> bool:
        return self.stride == 1 and self.c_in == self.C

    def macs(self) -> int:
        """Useful multiply-adds: primary C·K_i·9 + secondary C·(C/M) per output pixel."""
        Ho = -(-self.H // self.stride)
        return self.N * Ho * Ho * self.C * ((self.c_in // self.L) * 9 + self.C // self.M)

    def bytes(self) -> int:
        """Compulsory HBM traffic of one application: read x and the weights, write the output."""
        Ho = -(-self.H // self.stride)
        weights = 9 * self.c_in // self.L * self.C + self.C // self.M * self.C
        items = self.N * self.H * self.H * self.c_in + self.N * Ho * Ho * self.C + weights
        return items * jnp.dtype(self.dtype).itemsize


def full_layers() -> list[Layer]:
    """CIFAR (batch 256, float32): IGC-L24M2 stages 1 and 3, L64M1; ImageNet (batch 128,
    bfloat16): IGC-L16M16 stages 1 and 4, L4M32 and L100M2 stage 1; a strided widening layer of
    each. The targets come first, so that a run cut short by `--budget-s` still has them."""
    c, i = dict(N=256, dtype="float32"), dict(N=128, dtype="bfloat16")
    return [
        Layer("CIFAR L24M2 stage 1", H=32, c_in=48, C=48, L=24, M=2, target=True, **c),
        Layer("ImageNet L16M16 stage 1", H=56, c_in=256, C=256, L=16, M=16, target=True, **i),
        Layer("CIFAR L24M2 stage 3", H=8, c_in=192, C=192, L=24, M=8, check=False, **c),
        Layer("CIFAR L64M1 stage 1", H=32, c_in=64, C=64, L=64, M=1, check=False, **c),
        Layer("CIFAR L24M2 2→3 (stride 2)", H=16, c_in=96, C=192, L=24, M=8, stride=2, **c),
        Layer("ImageNet L16M16 stage 4", H=7, c_in=2048, C=2048, L=16, M=128, **i),
        Layer("ImageNet L4M32 stage 1", H=56, c_in=128, C=128, L=4, M=32, check=False, **i),
        Layer("ImageNet L100M2 stage 1", H=56, c_in=200, C=200, L=100, M=2, **i),
        Layer("ImageNet L16M16 1→2 (stride 2)", H=56, c_in=256, C=512, L=16, M=32, stride=2, **i),
    ]


def dry_layers() -> list[Layer]:
    """The same kinds of layer at tiny sizes (odd spatial size, both tilings, stride 2)."""
    c, i = dict(N=2, dtype="float32"), dict(N=2, dtype="bfloat16")
    return [
        Layer("CIFAR L24M2 stage 1", H=7, c_in=48, C=48, L=24, M=2, target=True, **c),
        Layer("ImageNet L16M16 stage 1", H=5, c_in=256, C=256, L=16, M=16, target=True, **i),
        Layer("CIFAR L24M2 2→3 (stride 2)", H=7, c_in=96, C=192, L=24, M=8, stride=2, **c),
        Layer("ImageNet L100M2 stage 1", H=5, c_in=200, C=200, L=100, M=2, **i),
    ]


@dataclasses.dataclass(frozen=True)
class Network:
    name: str
    experiment: str  # experiments/<file>.py
    arg: str | None
    batch: int
    modes: tuple[str, ...]
    overrides: dict = dataclasses.field(default_factory=dict)  # model fields (dry run)
    image_size: int | None = None


def networks(dry: bool) -> list[Network]:
    """The issue's three networks, in the order a cut-short run most needs them: the two of the
    per-multiply-add target first, `fused` first. On ImageNet (IGC-L16M16: K_i up to 128) neither
    `composed` nor `taps` is timed: a step would take seconds."""
    cifar_modes = ("fused", *UNFUSED)
    imagenet_modes = ("fused", *(m for m in unfused_modes(128, 16) if m != "composed"))
    if not dry:
        return [
            Network("ResNet-18 C=69, ImageNet", "imagenet_resnet18_c69", None, 128, ("auto",)),
            Network("IGC-L16M16+Ident., ImageNet", "imagenet_l16m16", None, 128, imagenet_modes),
            Network("IGC-L24M2 (D=20), CIFAR", "cifar10_igc", "L24M2,D20", 256, cifar_modes),
        ]
    small = dict(stem_width=32, widths=(32, 64, 128, 256))
    return [
        Network("ResNet-18 (C=32), ImageNet", "imagenet_resnet18_c69", None, 2, ("auto",),
                small, 32),
        Network("IGC-L16M16+Ident. (⅛ width), ImageNet", "imagenet_l16m16", None, 2,
                ("fused", "grouped"), dict(small, L=(16, 16, 16, 16)), 32),
        Network("IGC-L24M2 (D=5), CIFAR", "cifar10_igc", "L24M2,D5", 2, cifar_modes),
    ]


# ----------------------------------------------------------------------------- timing

def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of fn() (blocked on), after one untimed call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ceilings(dry: bool, repeats: int) -> dict:
    """Measured peaks of this chip: bf16 and f32 matmul TFLOP/s, streaming copy GB/s."""
    n = 256 if dry else 8192
    out = {}
    for dtype in ("bfloat16", "float32"):
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        mm = jax.jit(lambda a: a @ a)
        out[f"matmul_{dtype}_tflops"] = 2 * n**3 / median_seconds(lambda: mm(a), repeats) / 1e12
    words = (1 << 16) if dry else (1 << 28)  # 1 GiB of float32
    x = jnp.ones((words,), jnp.float32)
    add = jax.jit(lambda x: x + 1.0)
    out["copy_gbps"] = 2 * 4 * words / median_seconds(lambda: add(x), repeats) / 1e9
    out["sizes"] = {"matmul_n": n, "copy_bytes": 4 * words}
    return out


# ----------------------------------------------------------------------------- layers

def layer_args(layer: Layer, seed: int = 0):
    """x and variance-preserving kernels (a chain of layers neither explodes nor vanishes)."""
    kx, kp, ks = jax.random.split(jax.random.key(seed), 3)
    k_i = layer.c_in // layer.L
    dt = jnp.dtype(layer.dtype)
    x = jax.random.normal(kx, (layer.N, layer.H, layer.H, layer.c_in), dt)
    primary = (jax.random.normal(kp, (3, 3, k_i, layer.C)) / math.sqrt(9 * k_i)).astype(dt)
    secondary = (jax.random.normal(ks, (1, 1, layer.C // layer.M, layer.C))
                 / math.sqrt(layer.C // layer.M)).astype(dt)
    return x, primary, secondary


def layer_fn(layer: Layer, variant: str, blocks: Blocks | None = None) -> Callable:
    """The layer in one mode; `fused:<tiling>` / explicit blocks select the fused kernel's tiles."""
    kw = dict(L=layer.L, M=layer.M, strides=(layer.stride,) * 2, padding=((1, 1), (1, 1)))
    if variant.startswith("fused"):
        if blocks is None and ":" in variant:
            blocks = fused.default_blocks(layer.L, layer.M, layer.c_in, layer.C,
                                               variant.split(":")[1])
        return functools.partial(fused.igc_fused, blocks=blocks, **kw)
    return functools.partial(modes.MODES[variant], **kw)


def chain(f: Callable, n: int) -> Callable:
    """n applications of a shape-preserving layer, each on the previous output."""
    def run(x, primary, secondary):
        for _ in range(n):
            x = f(x, primary, secondary)
        return x
    return run


def fused_variants(layer: Layer) -> list[str]:
    """`fused` (default tiles) and its other tiling where that one can compute the layer."""
    default = fused.default_blocks(layer.L, layer.M, layer.c_in, layer.C).tiling
    other = "fma" if default == "dot" else "dot"
    standard = layer.C // layer.M == layer.L
    return ["fused"] + ([f"fused:{other}"] if other == "fma" or standard else [])


def block_candidates(layer: Layer) -> list[Blocks]:
    """A few tile sizes around the default, for the target layers (tuning data for later)."""
    b = fused.default_blocks(layer.L, layer.M, layer.c_in, layer.C)
    cands = [dataclasses.replace(b, pixels=64), dataclasses.replace(b, num_warps=8),
             dataclasses.replace(b, pixels=16, num_warps=2)]
    if b.tiling == "fma":
        cands.append(dataclasses.replace(b, groups=1))
    else:
        cands.append(dataclasses.replace(b, out=max(b.out // 2, 1), groups=min(b.groups * 2, 64)))
    return cands


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def attempt(what: str, fn: Callable[[], Any], errors: list[str]):
    """fn(), or None with the error recorded: one failing kernel must not cost the whole run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 (recorded, reported and the exit status says so)
        errors.append(f"{what}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")
        print(f"  ERROR {errors[-1]}", flush=True)
        return None


def _sq_loss(f: Callable) -> Callable:
    return lambda *a: jnp.sum(f(*a).astype(jnp.float32) ** 2)


def check_variant(layer: Layer, variant: str, args, refs: dict, with_grads: bool) -> dict:
    """One fused variant against the unfused modes' outputs (and `grouped`'s gradients)."""
    # float32 convs and dots use TF32 (10-bit mantissa) on GPU by default; bfloat16 has 8 bits.
    tol = 5e-2 if layer.dtype == "bfloat16" else 1e-2
    f = layer_fn(layer, variant)
    y = jax.jit(f)(*args)
    errs = {m: relative_error(y, r) for m, r in refs.items()}
    row = {"layer": layer.name, "variant": variant, "max_rel_error": errs, "tolerance": tol,
           "passed": all(e <= tol for e in errs.values())}
    if with_grads:
        g_fused = jax.jit(jax.grad(_sq_loss(f), argnums=(0, 1, 2)))(*args)
        reference = layer_fn(layer, "grouped")
        g_ref = jax.jit(jax.grad(_sq_loss(reference), argnums=(0, 1, 2)))(*args)
        row["grad_rel_error"] = [relative_error(a, b) for a, b in zip(g_fused, g_ref)]
        row["passed"] &= all(e <= tol for e in row["grad_rel_error"])
    return row


def check_layers(layers: list[Layer], errors: list[str]) -> list[dict]:
    """fused (each tiling) vs every unfused mode at full size; gradients once per tiling."""
    rows, grads_done = [], set()
    for layer in (l for l in layers if l.check):
        args = layer_args(layer, seed=1)
        refs = {}
        for m in unfused_modes(layer.c_in // layer.L, layer.L):
            y = attempt(f"check {layer.name} {m}", lambda: jax.jit(layer_fn(layer, m))(*args),
                        errors)
            if y is not None:
                refs[m] = y
        for variant in fused_variants(layer):
            tiling = variant.split(":")[1] if ":" in variant else \
                fused.default_blocks(layer.L, layer.M, layer.c_in, layer.C).tiling
            row = attempt(f"check {layer.name} {variant}",
                          lambda: check_variant(layer, variant, args, refs,
                                                tiling not in grads_done), errors)
            if row is None:
                rows.append({"layer": layer.name, "variant": variant, "max_rel_error": {},
                             "passed": False, "error": errors[-1]})
                continue
            grads_done.add(tiling)
            rows.append(row)
            print(f"  check {layer.name:34s} {variant:10s} "
                  f"{'ok' if row['passed'] else 'FAILED'} {max(row['max_rel_error'].values()):.2e}",
                  flush=True)
    return rows


def time_layer(layer: Layer, variant: str, *, chain_len: int, repeats: int, backward: bool,
               blocks: Blocks | None = None) -> dict:
    """Seconds per layer application (forward, or forward+backward) of one variant."""
    f = layer_fn(layer, variant, blocks)
    n = chain_len if layer.chainable else 1
    forward = chain(f, n)
    if backward:
        run = jax.jit(jax.grad(lambda *a: jnp.sum(forward(*a).astype(jnp.float32)),
                               argnums=(0, 1, 2)))
    else:
        run = jax.jit(forward)
    args = layer_args(layer)
    t = time.perf_counter()
    jax.block_until_ready(run(*args))
    compile_s = time.perf_counter() - t
    seconds = median_seconds(lambda: run(*args), repeats) / n
    return {"layer": layer.name, "variant": variant, "pass": "fwd+bwd" if backward else "fwd",
            "blocks": dataclasses.asdict(blocks) if blocks else None, "ms": 1e3 * seconds,
            "compile_s": compile_s, "chain": n}


def annotate(row: dict, layer: Layer, ceil: dict) -> dict:
    """Achieved TFLOP/s and GB/s (useful work, compulsory bytes) and fractions of the ceilings."""
    s = row["ms"] / 1e3
    factor = 3 if row["pass"] == "fwd+bwd" else 1
    tflops = factor * 2 * layer.macs() / s / 1e12
    gbps = factor * layer.bytes() / s / 1e9
    peak = ceil[f"matmul_{layer.dtype}_tflops"]
    return {**row, "tflops": tflops, "gbps": gbps, "frac_matmul_peak": tflops / peak,
            "frac_copy_peak": gbps / ceil["copy_gbps"],
            "images_per_s": layer.N / s}


def time_layers(layers: list[Layer], ceil: dict, *, chain_len: int, repeats: int,
                deadline: float, skipped: list[str], errors: list[str]) -> list[dict]:
    """Every variant of every layer; past `deadline` (perf_counter) only the target layers."""
    rows = []
    for layer in layers:
        if not layer.target and time.perf_counter() > deadline:
            skipped.append(f"layer {layer.name} (time budget)")
            continue
        unfused = unfused_modes(layer.c_in // layer.L, layer.L)
        jobs = [(v, False, None) for v in [*unfused, *fused_variants(layer)]]
        if layer.target:
            jobs += [(v, True, None) for v in [*unfused, "fused"]]
            jobs += [("fused", False, b) for b in block_candidates(layer)]
        for variant, backward, blocks in jobs:
            tiles = "  " + _blocks_str(dataclasses.asdict(blocks)) if blocks else ""
            row = attempt(f"{layer.name} {variant}{' fwd+bwd' if backward else ''}{tiles}",
                          lambda: annotate(time_layer(layer, variant, chain_len=chain_len,
                                                      repeats=repeats, backward=backward,
                                                      blocks=blocks), layer, ceil), errors)
            if row is None:
                continue
            rows.append(row)
            print(f"  {layer.name:34s} {variant:10s} {row['pass']:8s} {row['ms']:9.3f} ms "
                  f"{row['tflops']:7.2f} TFLOP/s {row['gbps']:8.1f} GB/s{tiles}", flush=True)
    return rows


# ----------------------------------------------------------------------------- training

def load_config(net: Network):
    """The experiment's config with the benchmark's batch (and the dry run's model overrides)."""
    path = ROOT / "experiments" / f"{net.experiment}.py"
    config = configs.load_config_module(path).get_config(net.arg)
    config.batch_size = net.batch
    for key, value in net.overrides.items():
        config.model[key] = value
    if net.image_size:
        config.dataset.image_size = net.image_size
    return config


def time_step(net: Network, mode: str, batch: dict, mesh, *, macs: int, ceil: dict, steps: int,
              repeats: int) -> dict:
    """Seconds per jitted training step (igc_jax.training.steps) of one network in one conv mode."""
    config = load_config(net)
    config.conv_mode = mode
    size = config.dataset.image_size
    model = train_steps.make_model(config)
    schedule = train_steps.learning_rate_schedule(config, 1000, 100_000)
    tx = train_steps.make_optimizer(config, schedule)
    state, shardings = train_steps.init_state(model, tx, (size, size, 3), 0, mesh)
    step, _, _ = train_steps.compile_steps(model, tx, schedule, shardings, mesh)
    t = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    windows = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        windows.append((time.perf_counter() - t) / steps)
    s = statistics.median(windows)
    flops = 3 * 2 * macs * net.batch
    return {"network": net.name, "mode": mode,
            "resolved_mode": mode,  # `auto` resolves per layer; see the run's conv_modes
            "batch": net.batch, "dtype": config.dtype, "image_size": size,
            "macs_per_image": macs, "ms_per_step": 1e3 * s, "images_per_s": net.batch / s,
            "tflops": flops / s / 1e12,
            "frac_matmul_peak": flops / s / 1e12 / ceil[f"matmul_{config.dtype}_tflops"],
            "ns_per_mac": 1e9 * s / (macs * net.batch), "compile_s": compile_s,
            "loss": float(metrics["loss"])}


def time_training(net: Network, ceil: dict, *, steps: int, repeats: int, deadline: float,
                  skipped: list[str], errors: list[str]) -> list[dict]:
    """Each of the network's modes (none begun past `deadline`)."""
    rows = []
    base = load_config(net)
    macs = summary.summarize(base)[1]["macs"]  # per image, convs + classifier
    mesh = sharding.make_mesh(jax.devices()[:1])
    size = base.dataset.image_size
    rng = np.random.default_rng(0)
    batch = jax.device_put(
        {"image": rng.standard_normal((net.batch, size, size, 3), np.float32),
         "label": rng.integers(0, base.dataset.num_classes, net.batch).astype(np.int32)},
        sharding.batch_sharding(mesh))
    for mode in net.modes:
        if time.perf_counter() > deadline:
            skipped.append(f"training {net.name} {mode} (time budget)")
            continue
        row = attempt(f"training {net.name} {mode}",
                      lambda: time_step(net, mode, batch, mesh, macs=macs, ceil=ceil, steps=steps,
                                        repeats=repeats), errors)
        if row is None:
            continue
        rows.append(row)
        print(f"  {net.name:38s} {mode:9s} {row['ms_per_step']:9.2f} ms/step "
              f"{row['images_per_s']:9.1f} img/s {row['tflops']:7.2f} TFLOP/s", flush=True)
    return rows


# ----------------------------------------------------------------------------- targets, report

def targets(layers: list[Layer], layer_rows: list[dict], train_rows: list[dict]) -> dict:
    """The issue's targets, evaluated on this run's numbers."""
    out = {"layer_speedups": []}
    for layer in (l for l in layers if l.target):
        fwd = {r["variant"]: r["ms"] for r in layer_rows
               if r["layer"] == layer.name and r["pass"] == "fwd" and r["blocks"] is None}
        tuned = [r["ms"] for r in layer_rows if r["layer"] == layer.name and r["blocks"]]
        unfused = {m: t for m, t in fwd.items() if not m.startswith("fused")}
        if "fused" not in fwd or not unfused:
            out["layer_speedups"].append({"layer": layer.name, "met": False,
                                          "note": "not measured (section off, or see errors)"})
            continue
        best_unfused = min(unfused.values())
        best_fused = min([fwd[v] for v in fwd if v.startswith("fused")] + tuned)
        out["layer_speedups"].append({
            "layer": layer.name, "best_unfused_ms": best_unfused,
            "best_unfused_mode": min(unfused, key=unfused.get), "fused_ms": fwd["fused"],
            "best_fused_ms": best_fused, "speedup": best_unfused / fwd["fused"],
            "best_speedup": best_unfused / best_fused,
            "met": best_unfused / fwd["fused"] >= TARGET_SPEEDUP})
    igc = [r for r in train_rows if "L16M16" in r["network"]]
    resnet = [r for r in train_rows if "ResNet" in r["network"]]
    if igc and resnet:
        best = min(igc, key=lambda r: r["ns_per_mac"])
        out["l16m16_vs_resnet"] = {
            "l16m16_best_mode": best["mode"], "l16m16_ns_per_mac": best["ns_per_mac"],
            "l16m16_fused_ns_per_mac": next((r["ns_per_mac"] for r in igc if r["mode"] == "fused"),
                                            None),
            "resnet_ns_per_mac": resnet[0]["ns_per_mac"],
            "met": best["ns_per_mac"] <= resnet[0]["ns_per_mac"]}
    return out


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]]


def markdown(result: dict) -> str:
    c = result["ceilings"]
    lines = [f"# Fused Pallas IGC kernel vs unfused modes ({result['device']})", ""]
    if result["dry_run"]:
        lines += ["**Dry run**: tiny sizes, Pallas interpret mode on CPU. The times are not "
                  "speeds; this only shows the script runs end to end.", ""]
    lines += [f"jax {result['jax']}, {result['date']}; one device, medians of {result['repeats']} "
              "runs; a shared machine is noisy, compare ratios within this run.", "",
              "## Ceilings (measured in this run)", "",
              *_table(["bf16 matmul TFLOP/s", "f32 matmul TFLOP/s (default precision)",
                       "copy GB/s (read+write)"],
                      [[c["matmul_bfloat16_tflops"], c["matmul_float32_tflops"], c["copy_gbps"]]]),
              "", "## Targets", ""]
    t = result["targets"]
    lines += _table(["layer", "best unfused (ms)", "fused (ms)", "speedup", "best fused tiles (ms)",
                     f"≥ {TARGET_SPEEDUP}×"],
                    [[s["layer"], s["note"], "", "", "", "no"] if "note" in s else
                     [s["layer"], f"{s['best_unfused_mode']} {s['best_unfused_ms']:.3g}",
                      s["fused_ms"], s["speedup"], s["best_fused_ms"], "yes" if s["met"] else "no"]
                     for s in t["layer_speedups"]])
    if "l16m16_vs_resnet" in t:
        r = t["l16m16_vs_resnet"]
        lines += ["", f"IGC-L16M16+Ident. training step: {r['l16m16_ns_per_mac']:.4g} ns per "
                  f"multiply-add·image (best mode `{r['l16m16_best_mode']}`) vs ResNet-18 C=69 "
                  f"{r['resnet_ns_per_mac']:.4g}: target {'met' if r['met'] else 'not met'}."]
    lines += ["", "## Correctness at full size", "",
              *_table(["layer", "fused variant", "max rel. error vs each unfused mode",
                       "grad rel. error (x, primary, secondary)", "passed"],
                      [[r["layer"], r["variant"],
                        ", ".join(f"{m} {e:.1e}" for m, e in r["max_rel_error"].items()),
                        ", ".join(f"{e:.1e}" for e in r.get("grad_rel_error", [])) or "–",
                        "yes" if r["passed"] else "**no**"] for r in result["checks"]]),
              "", "## Layers", "",
              *_table(["layer", "mode", "pass", "tiles", "ms", "img/s", "TFLOP/s", "% matmul peak",
                       "GB/s", "% copy peak"],
                      [[r["layer"], r["variant"], r["pass"],
                        _blocks_str(r["blocks"]) if r["blocks"] else "default", r["ms"],
                        r["images_per_s"], r["tflops"], 100 * r["frac_matmul_peak"], r["gbps"],
                        100 * r["frac_copy_peak"]] for r in result["layers"]]),
              "", "## Training steps", "",
              *_table(["network", "mode", "batch", "dtype", "ms/step", "img/s", "TFLOP/s",
                       "% matmul peak", "ns per MAC·image", "compile s"],
                      [[r["network"], r["resolved_mode"], r["batch"], r["dtype"], r["ms_per_step"],
                        r["images_per_s"], r["tflops"], 100 * r["frac_matmul_peak"],
                        r["ns_per_mac"], r["compile_s"]] for r in result["training"]]),
              "", f"Total run time {result['elapsed_s']:.0f} s."
              + (f" Skipped: {'; '.join(result['skipped'])}." if result["skipped"] else ""), ""]
    if result["errors"]:
        lines += ["## Errors", "", *(f"- {e}" for e in result["errors"]), ""]
    return "\n".join(lines)


def _blocks_str(b: dict) -> str:
    keys = ("pixels", "groups", "out", "l" if b["tiling"] == "fma" else "k")
    return f"{b['tiling']} " + " ".join(f"{k}={b[k]}" for k in keys) + f" w={b['num_warps']}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes in Pallas interpret mode (runs on CPU)")
    parser.add_argument("--sections", default="check,layers,training",
                        help="comma-separated subset of check,layers,training "
                             "(the ceilings always run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    parser.add_argument("--chain", type=int, default=None, help="layer applications per timed run")
    parser.add_argument("--steps", type=int, default=None, help="training steps per timed window")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds: begin no non-target layer after half of this, no training "
                             "measurement after all of it (a begun one finishes); default 360, "
                             "no limit in a dry run")
    args = parser.parse_args(argv)
    dry = args.dry_run
    if not dry and jax.default_backend() != "gpu":
        parser.error(f"needs a GPU (backend is {jax.default_backend()!r}); use --dry-run elsewhere")
    repeats = args.repeats or (1 if dry else 5)
    chain_len = args.chain or (2 if dry else 8)
    steps = args.steps or (1 if dry else 10)
    budget = args.budget_s or (math.inf if dry else 360.0)
    sections = set(args.sections.split(","))
    start = time.perf_counter()
    layers = dry_layers() if dry else full_layers()
    result = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
              "jax": jax.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "dry_run": dry, "repeats": repeats,
              "chain": chain_len, "steps": steps, "budget_s": budget, "ceilings": {},
              "checks": [], "layers": [], "training": [], "skipped": [], "errors": []}
    print("ceilings", flush=True)
    result["ceilings"] = ceilings(dry, repeats)
    print("  " + json.dumps({k: round(v, 1) for k, v in result["ceilings"].items()
                             if isinstance(v, float)}), flush=True)
    if "check" in sections:
        print("check", flush=True)
        result["checks"] = check_layers(layers, result["errors"])
    if "layers" in sections:
        print("layers", flush=True)
        result["layers"] = time_layers(layers, result["ceilings"], chain_len=chain_len,
                                       repeats=repeats, deadline=start + budget / 2,
                                       skipped=result["skipped"], errors=result["errors"])
    if "training" in sections:
        print("training", flush=True)
        for net in networks(dry):
            result["training"] += time_training(net, result["ceilings"], steps=steps,
                                                repeats=max(repeats // 2, 1),
                                                deadline=start + budget,
                                                skipped=result["skipped"],
                                                errors=result["errors"])
    result["targets"] = targets(layers, result["layers"], result["training"])
    result["elapsed_s"] = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "gpu_fused_dry_run" if dry else "gpu_fused"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(f"wrote {RESULTS / stem}.{{json,md}} in {result['elapsed_s']:.0f} s", flush=True)
    if result["errors"] or not all(r["passed"] for r in result["checks"]):
        print(f"FAILED: {len(result['errors'])} error(s), "
              f"{sum(not r['passed'] for r in result['checks'])} failed check(s)", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
