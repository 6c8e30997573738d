"""The performance suite: IGC layers in every mode, full training steps, a PyTorch peer, rooflines.

    python -m benchmarks.run --suite=cpu            # ~6 min on 2 cores; results/cpu.{json,md}
    python -m benchmarks.run --suite=gpu            # < 8 min on one GPU; results/gpu.{json,md}
    python -m benchmarks.run --suite=cpu --quick    # a dry run at toy sizes (results/*_quick.*)

Everything runs in one process, one item after another, so ratios compare like with like:
1. the machine's ceilings (benchmarks/roofline.py): dense matmul multiply-adds/s, copy bandwidth;
2. one IGC layer in every mode of `igc_jax.modes.MODES` (and `auto`'s pick, and PyTorch's grouped
   conv2d + channel_shuffle) at the (L, M, width) of the paper's CIFAR and ImageNet networks,
   forward and forward+backward (gradients of input and both kernels), against its roofline;
3. full jitted training steps (forward, backward, SGD-Nesterov + L2 update with optax, batch-norm
   statistics) of RegConv-W16, RegConv-W18, IGC-L24M2 and IGC-L24M2+Ident. (D=20), built with
   `igc_jax.models.build_model`, beside the same networks in PyTorch (benchmarks/torch_peer.py).
Times are the best of `reps` calls after warm-up (the machine may be shared; the best call is the
least disturbed one), medians are kept in the JSON. Training FLOP/s count 3× the network's true
forward multiply-adds (forward, input gradient, weight gradient), 2 FLOPs each.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from benchmarks import roofline
from igc_jax import models, summary
from igc_jax.igc import layers, native, select
from igc_jax.igc.layers import he_normal

RESULTS = Path(__file__).resolve().parent / "results"
PAD = ((1, 1), (1, 1))
# A call slower than this is not repeated (XLA's grouped conv gradient on CPU takes seconds).
SLOW_CALL_S = 4.0


# (network, layer, N, H, C_in, C, L, M, stride): the layers of the paper's networks. CIFAR at the
# training batch; ImageNet stage 1 (56×56) and the last stage at a batch that fits the suite.
def layer_shapes(suite: str, quick: bool) -> list[tuple]:
    if quick:
        return [("IGC-L24M2", "stage1", 2, 8, 48, 48, 24, 2, 1),
                ("IGC-L24M2", "stage2 first, stride 2", 2, 8, 48, 96, 24, 4, 2),
                ("IGC-L4M32 (ImageNet)", "stage1", 1, 8, 128, 128, 4, 32, 1)]
    n_cifar, n_imnet = (64, 8) if suite == "cpu" else (256, 128)
    return [
        ("IGC-L24M2", "stage1", n_cifar, 32, 48, 48, 24, 2, 1),
        ("IGC-L24M2", "stage2 first, stride 2", n_cifar, 32, 48, 96, 24, 4, 2),
        ("IGC-L24M2", "stage2", n_cifar, 16, 96, 96, 24, 4, 1),
        ("IGC-L24M2", "stage3", n_cifar, 8, 192, 192, 24, 8, 1),
        ("IGC-L4M8", "stage1", n_cifar, 32, 32, 32, 4, 8, 1),
        ("IGC-L4M8", "stage3", n_cifar, 8, 128, 128, 4, 32, 1),
        ("IGC-L4M32 (ImageNet)", "stage1", n_imnet, 56, 128, 128, 4, 32, 1),
        ("IGC-L16M16 (ImageNet)", "stage1", n_imnet, 56, 256, 256, 16, 16, 1),
        ("IGC-L100M2 (ImageNet)", "stage1", n_imnet, 56, 200, 200, 100, 2, 1),
        ("IGC-L100M2 (ImageNet)", "stage4", n_imnet, 7, 1600, 1600, 800, 2, 1),
    ]


def networks(suite: str, quick: bool) -> list[tuple[str, dict, int, int]]:
    """(name, model config, image size, classes) of the networks whose training steps are timed."""
    depth = 8 if quick else 20
    cifar = [(f"RegConv-W16 D={depth}", f"W16,D{depth}"),
             (f"RegConv-W18 D={depth}", f"W18,D{depth}"),
             (f"IGC-L24M2 D={depth}", f"L24M2,D{depth}"),
             (f"IGC-L24M2+Ident. D={depth}", f"L24M2,D{depth},Ident")]
    nets = [(name, models.cifar_model(arg).to_dict(), 32, 10) for name, arg in cifar]
    if suite == "gpu" and not quick:
        nets += [(name, models.imagenet_model(name).to_dict(), 224, 1000)
                 for name, cfg in models.IMAGENET_NETWORKS.items() if cfg["name"] != "igcv3"]
    return nets


def _times(fn: Callable, args: tuple, reps: int) -> tuple[list[float], float]:
    """(call times after the first, compile+first-call seconds); slow calls are not repeated."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times = [time.perf_counter() - t]
    while len(times) < reps and times[0] < SLOW_CALL_S:
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return times, first


def _stats(times: list[float]) -> dict[str, Any]:
    return {"best_ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times),
            "calls": len(times)}


def layer_fn(mode: str, L: int, M: int, stride: int) -> Callable:
    """f(x, primary, secondary): one IGC layer (3×3, symmetric padding) computed by `mode`."""
    def f(x, p, s):
        return layers.igc_apply(x, p, s, L=L, M=M, strides=(stride, stride), padding=PAD, mode=mode)
    return f


def layer_fns(mode: str, L: int, M: int, stride: int) -> tuple[Callable, Callable]:
    """Jitted forward and forward+backward (grads of x and both kernels) of one IGC layer."""
    f = layer_fn(mode, L, M, stride)

    def loss(x, p, s):
        return jnp.sum(jnp.square(f(x, p, s).astype(jnp.float32)))

    return jax.jit(f), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def torch_device(suite: str) -> str:
    """Where the PyTorch peer runs: on the GPU beside JAX in the GPU suite, else the CPU."""
    return "cuda" if suite == "gpu" else "cpu"


def modes_for(suite: str) -> list[str]:
    """Every mode of layers.ALL_MODES for the suite's device: the C++ `native` only on CPU (where
    it builds)."""
    with_native = suite == "cpu" and native.available()
    return [m for m in layers.ALL_MODES if m != "native" or with_native]


def mode_in_range(mode: str, C_in: int, L: int) -> bool:
    """Whether `mode` is meant for L primary groups of C_in/L inputs (its docstring's range):
    `taps` unrolls 9·C_in/L plane multiply-adds, `split` runs L separate convolutions."""
    if mode == "taps":
        return 9 * (C_in // L) <= select.TAPS_MAX_TERMS
    return mode != "split" or L <= 64


def layer_args(N: int, H: int, C_in: int, C: int, L: int, M: int, dtype) -> tuple:
    """x (N, H, H, C_in) and He-normal primary and secondary kernels, in `dtype`."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (N, H, H, C_in), dtype)
    p = he_normal(keys[1], (3, 3, C_in // L, C), jnp.float32).astype(dtype)
    s = he_normal(keys[2], (1, 1, C // M, C), jnp.float32).astype(dtype)
    return x, p, s


def bench_layers(suite: str, quick: bool, dtype, ceil: roofline.Ceilings, torch_peer, reps: int,
                 deadline: float, log) -> list[dict]:
    rows = []
    itemsize = jnp.dtype(dtype).itemsize
    for (net, layer, N, H, C_in, C, L, M, stride) in layer_shapes(suite, quick):
        if time.monotonic() > deadline:
            log(f"  {net} {layer}: skipped (suite time budget)")
            continue
        Ho = (H + 2 - 3) // stride + 1
        x, p, s = layer_args(N, H, C_in, C, L, M, dtype)
        shape = select.LayerShape(L=L, M=M, C_in=C_in, C=C, strides=(stride, stride))
        macs = roofline.igc_layer_macs(N, Ho, Ho, C_in, C, L, M)
        w_elems = p.size + s.size
        x_elems, y_elems = x.size, N * Ho * Ho * C
        row = {"network": net, "layer": layer, "N": N, "H": H, "C_in": C_in, "C": C, "L": L,
               "M": M, "stride": stride, "macs": macs,
               "auto": select.select_mode(shape, select.detect_context()),
               "roofline_ms": {
                   "fwd": 1e3 * ceil.roofline_s(macs, roofline.layer_bytes(
                       x_elems, y_elems, w_elems, itemsize, backward=False)),
                   "fwd_bwd": 1e3 * ceil.roofline_s(3 * macs, roofline.layer_bytes(
                       x_elems, y_elems, w_elems, itemsize, backward=True))},
               "modes": {}}
        imagenet = "ImageNet" in net
        for mode in modes_for(suite):
            entry = {}
            fwd, fwd_bwd = layer_fns(mode, L, M, stride)
            out_of_range = not mode_in_range(mode, C_in, L)
            for kind, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
                if out_of_range:
                    entry[kind] = {"skipped": "outside the mode's range (igc_jax.igc.select)"}
                    continue
                if suite == "cpu" and mode == "grouped" and imagenet and not quick:
                    entry[kind] = {"skipped": "XLA CPU grouped conv: tens of seconds per call"}
                    continue
                times, first = _times(fn, (x, p, s), reps)
                entry[kind] = {**_stats(times), "compile_and_first_s": first}
            row["modes"][mode] = entry
            log(f"  {net} {layer} {mode}: " + ", ".join(
                f"{k} {v['best_ms']:.1f} ms" if "best_ms" in v else f"{k} skipped"
                for k, v in entry.items()))
        if torch_peer is not None and dtype == jnp.float32:
            row["torch"] = {kind: _stats(torch_peer.igc_layer_times(
                N, H, C_in, C, L, M, stride, backward=kind == "fwd_bwd", reps=reps,
                device=torch_device(suite)))
                for kind in ("fwd", "fwd_bwd")}
            log(f"  {net} {layer} torch: fwd {row['torch']['fwd']['best_ms']:.1f} ms, "
                f"fwd_bwd {row['torch']['fwd_bwd']['best_ms']:.1f} ms")
        rows.append(row)
    return rows


def make_train_step(model, tx):
    """One jitted SGD step: forward (train mode), softmax cross-entropy, backward, optax update."""
    def loss_fn(params, batch_stats, x, y):
        logits, state = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, state["batch_stats"]

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, batch_stats, opt_state, x, y):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return step


def time_jax_step(model_cfg: dict, batch: int, image_size: int, num_classes: int, dtype,
                  conv_mode: str, warmup: int, reps: int) -> dict:
    model = models.build_model(ml_collections.ConfigDict(model_cfg), num_classes=num_classes,
                               dtype=dtype, plan=conv_mode)
    x = jax.random.normal(jax.random.key(1), (batch, image_size, image_size, 3), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (batch,), 0, num_classes)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = optax.chain(optax.add_decayed_weights(1e-4),
                     optax.sgd(0.1, momentum=0.9, nesterov=True))
    opt_state = tx.init(params)
    step = make_train_step(model, tx)
    t = time.perf_counter()
    state = (params, batch_stats, opt_state)
    for _ in range(warmup):
        *state, loss = step(*state, x, y)
        loss.block_until_ready()
    first = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        *state, loss = step(*state, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - t)
    n_params = sum(math.prod(v.shape) for v in jax.tree.leaves(params))
    return {**_stats(times), "compile_and_warmup_s": first, "params": n_params,
            "loss_finite": bool(jnp.isfinite(loss))}


def step_roofline(model_cfg: dict, image_size: int, num_classes: int, batch: int, itemsize: int,
                  ceil: roofline.Ceilings) -> dict:
    """True MACs of a training step (3× forward) and the roofline time of the whole step."""
    rows, total = summary.summarize_model(model_cfg, num_classes=num_classes, image_size=image_size)
    nbytes = sum(roofline.layer_bytes(batch * math.prod(r.in_shape), batch * math.prod(r.out_shape),
                                      r.params, itemsize, backward=True)
                 for r in rows if r.kind in ("conv", "igc", "dense"))
    macs = 3 * total["macs"] * batch
    return {"macs_per_image": total["macs"], "step_macs": macs, "step_bytes": nbytes,
            "roofline_ms": 1e3 * ceil.roofline_s(macs, nbytes)}


def bench_steps(suite: str, quick: bool, dtype, ceil: roofline.Ceilings, torch_peer, reps: int,
                deadline: float, log) -> list[dict]:
    rows = []
    batches = (2,) if quick else ((64, 128) if suite == "cpu" else (128, 512))
    itemsize = jnp.dtype(dtype).itemsize
    for name, cfg, image_size, num_classes in networks(suite, quick):
        for batch in batches if image_size == 32 else (batch for batch in (128,)):
            if time.monotonic() > deadline:
                rows.append({"network": name, "batch": batch, "skipped": "suite time budget"})
                continue
            row = {"network": name, "batch": batch, "model": cfg,
                   **step_roofline(cfg, image_size, num_classes, batch, itemsize, ceil)}
            conv_modes = ["auto"] + (["composed"] if cfg["name"] == "cifar_igc"
                                     and suite == "cpu" and not cfg.get("residual") else [])
            row["jax"] = {m: time_jax_step(cfg, batch, image_size, num_classes, dtype, m,
                                           warmup=1 if quick else 2, reps=reps)
                          for m in conv_modes}
            if torch_peer is not None and image_size == 32 and dtype == jnp.float32:
                torch_times = torch_peer.train_step_times(cfg, batch, warmup=1 if quick else 2,
                                                          reps=reps, device=torch_device(suite))
                n_torch = sum(p.numel() for p in torch_peer.build(cfg).parameters())
                row["torch"] = {**_stats(torch_times), "params": n_torch}
            best = row["jax"]["auto"]["best_ms"]
            row["images_per_s"] = 1e3 * batch / best
            row["gflops"] = 2 * row["step_macs"] / best / 1e6
            log(f"  {name} batch {batch}: jax " + ", ".join(
                f"{m} {v['best_ms']:.0f} ms" for m, v in row["jax"].items())
                + (f", torch {row['torch']['best_ms']:.0f} ms" if "torch" in row else "")
                + f", roofline {row['roofline_ms']:.0f} ms")
            rows.append(row)
    return rows


def _fmt(ms: float | None) -> str:
    return "–" if ms is None else (f"{ms:.1f}" if ms < 100 else f"{ms:.0f}")


def _best(entry: dict | None) -> float | None:
    return entry.get("best_ms") if entry else None


def markdown(result: dict) -> str:
    c = result["ceilings"]
    lines = [f"# Benchmarks: suite `{result['suite']}` ({result['dtype']})", "",
             f"{result['date']}, {result['machine']}. {result['note']}", "",
             f"Ceilings measured in this run: dense matmul {c['matmul_gmacs']:.1f} GMAC/s "
             f"({2 * c['matmul_gmacs']:.1f} GFLOP/s), copy bandwidth {c['copy_gbs']:.1f} GB/s.", ""]
    for dtype_key, part in result["parts"].items():
        lines += [f"## IGC layer, every mode ({dtype_key}); ms, best call", "",
                  "Roofline = max(true IGC MACs at the matmul rate, unavoidable traffic at the "
                  "copy bandwidth). `auto/roof` = auto's time ÷ roofline; `vs torch` = auto ÷ "
                  "PyTorch.",
                  ""]
        modes = [m for m in result["modes"]]
        head = (["layer", "N", "MMAC", "auto"] + [f"{m}" for m in modes]
                + ["torch", "roofline", "auto/roof", "vs torch"])
        for kind in ("fwd", "fwd_bwd"):
            lines += [f"**{'forward' if kind == 'fwd' else 'forward + backward'}**", "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for r in part["layers"]:
                vals = {m: _best(r["modes"].get(m, {}).get(kind)) for m in modes}
                auto = vals.get(r["auto"])
                torch_ms = _best(r.get("torch", {}).get(kind))
                roof = r["roofline_ms"][kind]
                lines.append("| " + " | ".join(
                    [f"{r['network']} {r['layer']} ({r['C_in']}→{r['C']}, {r['H']}², L{r['L']} "
                     f"M{r['M']})", str(r["N"]), f"{r['macs'] / 1e6:.0f}", r["auto"]]
                    + [_fmt(vals[m]) for m in modes]
                    + [_fmt(torch_ms), _fmt(roof),
                       f"{auto / roof:.1f}×" if auto else "–",
                       f"{auto / torch_ms:.2f}" if auto and torch_ms else "–"]) + " |")
            lines.append("")
        lines += [f"## Training steps ({dtype_key}); ms per step, best of the timed steps", "",
                  "`vs torch` = igc-jax ÷ PyTorch (below 1: igc-jax faster); `vs W18` = this "
                  "network's igc-jax step ÷ RegConv-W18's at the same batch; GFLOP/s count 3× the "
                  "true forward MACs.", "",
                  "| network | batch | GMAC/step | igc-jax auto | igc-jax composed | PyTorch | "
                  "vs torch | vs W18 | images/s | GFLOP/s | % of matmul | roofline | auto/roof |",
                  "|" + "---|" * 13]
        w18 = {r["batch"]: _best(r["jax"]["auto"]) for r in part["steps"]
               if "W18" in r["network"] and "jax" in r}
        for r in part["steps"]:
            if "skipped" in r:
                lines.append(f"| {r['network']} | {r['batch']} | skipped: {r['skipped']} |"
                             + " |" * 11)
                continue
            auto = _best(r["jax"]["auto"])
            torch_ms = _best(r.get("torch"))
            lines.append("| " + " | ".join([
                r["network"], str(r["batch"]), f"{r['step_macs'] / 1e9:.1f}", _fmt(auto),
                _fmt(_best(r["jax"].get("composed"))), _fmt(torch_ms),
                f"{auto / torch_ms:.2f}" if torch_ms else "–",
                f"{auto / w18[r['batch']]:.2f}" if w18.get(r["batch"]) else "–",
                f"{r['images_per_s']:.0f}", f"{r['gflops']:.1f}",
                f"{100 * r['gflops'] / (2 * c['matmul_gmacs']):.0f}%", _fmt(r["roofline_ms"]),
                f"{auto / r['roofline_ms']:.1f}×"]) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes: a dry run of every path")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new layer or training-step item after this many seconds "
                             "(default: 420 for gpu, so the suite ends within 8 minutes; 3600 cpu)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    budget = args.budget_s or (420.0 if args.suite == "gpu" else 3600.0)
    deadline = start + budget

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.0f} s] {msg}", flush=True)

    torch_peer = None
    if not args.no_torch:
        try:
            from benchmarks import torch_peer
            threads = torch_peer.configure_threads()
            log(f"PyTorch {torch_peer.torch.__version__}, {threads} threads")
        except ImportError:
            log("PyTorch not installed (pip install -e '.[bench]'): no peer")
    if args.suite == "gpu" and torch_peer is not None and not torch_peer.torch.cuda.is_available():
        torch_peer = None  # the peer runs on the CPU only; comparing it with a GPU is meaningless
    reps = 1 if args.quick else 5
    dtypes = [jnp.float32] if args.suite == "cpu" else [jnp.bfloat16, jnp.float32]
    ceil = roofline.measure(quick=args.quick)
    log(f"ceilings: {ceil.macs_per_s / 1e9:.1f} GMAC/s matmul, "
        f"{ceil.bytes_per_s / 1e9:.1f} GB/s copy")
    result = {
        "suite": args.suite, "quick": args.quick,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, jax {jax.__version__} on "
                   f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
        "note": ("Shared machine: other jobs ran during the measurement (load average at start "
                 f"{os.getloadavg()[0]:.1f}); best-of-N times, ratios from this one run."),
        "dtype": ", ".join(jnp.dtype(d).name for d in dtypes),
        "ceilings": {"matmul_gmacs": ceil.macs_per_s / 1e9, "copy_gbs": ceil.bytes_per_s / 1e9},
        "modes": modes_for(args.suite), "parts": {},
    }
    for dtype in dtypes:
        key = jnp.dtype(dtype).name
        d_ceil = ceil if dtype == jnp.float32 else roofline.Ceilings(
            roofline.matmul_rate(256 if args.quick else 4096, dtype), ceil.bytes_per_s)
        log(f"IGC layers, {key}")
        layers = bench_layers(args.suite, args.quick, dtype, d_ceil, torch_peer, reps, deadline,
                              log)
        log(f"training steps, {key}")
        steps = bench_steps(args.suite, args.quick, dtype, d_ceil, torch_peer, reps, deadline, log)
        result["parts"][key] = {"layers": layers, "steps": steps,
                                "matmul_gmacs": d_ceil.macs_per_s / 1e9}
    result["wall_s"] = time.monotonic() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.suite + ("_quick" if args.quick else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    log(f"wrote {RESULTS / stem}.json and .md")


if __name__ == "__main__":
    main()
