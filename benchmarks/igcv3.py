"""IGCV3-D (spec §7) measured: counts beside the published ones, logits beside pytorchcv's, and a
CPU training step beside pytorchcv's igcv3_w1.

    python -m benchmarks.igcv3            # ~15 min on 2 busy cores; results/igcv3.{json,md}
    python -m benchmarks.igcv3 --quick    # a dry run: batch 2, 64×64 step, one width

1. Parameters and multiply-adds of every width (ImageNet 224², 1000 classes; and the CIFAR-10
   config's 32², 10 classes) from `igc_jax.summary`, beside pytorchcv's parameter counts (the
   symbol file's 3,491,688 at width 1.0) and the FLOPs/2 column of pytorchcv's model table
   (osmr/imgclsmob README, ImageNet-1K), with the builder-quirk widths too.
2. The same random weights in igc-jax and pytorchcv 0.0.74 (`to_pytorchcv`), eval mode at 224²
   (and train mode, batch statistics): the max relative logit error max|a − b| / max|b|.
3. One training step (forward, backward, SGD momentum 0.9 + L2 4e-5) of IGCV3-D 1.0 at batch 64,
   224², float32: igc-jax's jitted step and pytorchcv's igcv3_w1 (NCHW, and channels-last) in one
   run, the median of `--steps` steps after warm-up.
4. Where igc-jax's step goes on the CPU: one depthwise 3×3 layer of the network (stage 2's first,
   112²×96, stride 2, batch 8), forward and forward+backward, as XLA's grouped convolution (what
   the network runs) and as the C++ primary-conv kernel of IGC mode `native` with one channel
   per group (which the network does not use: its convolutions are no IGC layers).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from igc_jax import models, summary
from igc_jax.models import igcv3

RESULTS = Path(__file__).resolve().parent / "results"
# pytorchcv's constructor of each width, its published parameter count (asserted in pytorchcv's
# own igcv3.py) and the "FLOPs/2" (≈ MACs) of osmr/imgclsmob's ImageNet-1K model table.
PYTORCHCV = {1.0: ("igcv3_w1", 3_491_688, 340.79e6), 0.75: ("igcv3_w3d4", 2_638_084, 210.95e6),
             0.5: ("igcv3_wd2", 1_985_528, 111.12e6), 0.25: ("igcv3_wd4", 1_534_020, 41.29e6)}
WEIGHT_DECAY = 4e-5


# ----------------------------------------------------------------------------- weights

def random_variables(width: float, seed: int = 0, num_classes: int = 1000) -> dict:
    """igc-jax variables of IGCV3-D at `width` with random kernels (the official init) and random
    BatchNorm scale, bias and running statistics."""
    model = models.build_model({"name": "igcv3", "width": width}, num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(seed), x, train=False), x)
    rng = np.random.default_rng(seed)
    out: dict = {"params": {}, "batch_stats": {}}
    for name, leaves in shapes["params"].items():
        if "scale" in leaves:                                  # a BatchNorm
            c = leaves["scale"].shape
            out["params"][name] = {"scale": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, .1, c)}
            out["batch_stats"][name] = {"mean": rng.normal(0, 0.1, c),
                                        "var": rng.uniform(0.5, 1.5, c)}
        else:                                                  # N(0, 2 / fan_in) kernels
            k = leaves["kernel"].shape
            out["params"][name] = {"kernel": rng.normal(0, np.sqrt(2 / np.prod(k[:-1])), k)}
            if "bias" in leaves:
                out["params"][name]["bias"] = rng.normal(0, 0.1, leaves["bias"].shape)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), out)


def _pytorchcv_units() -> dict[tuple[int, int], tuple[int, int]]:
    """(stage, unit) in igc-jax (the official seven stages) → pytorchcv's: pytorchcv starts a
    new stage only where the stride is 2, so the stride-1 stages (96 and 320 wide) continue the
    stage before them."""
    out, theirs, offset = {}, 0, 0
    for s, (_, _, n, stride) in enumerate(igcv3.STAGES, start=1):
        if s == 1 or stride != 1:
            theirs, offset = theirs + 1, 0
        for u in range(1, n + 1):
            out[s, u] = (theirs, offset + u)
        offset += n
    return out


def _torch_name(flax_name: str) -> str:
    """igc-jax module name → pytorchcv's (features.stage{s}.unit{u}.conv{1,2,3}, ...)."""
    if flax_name == "classifier":
        return "output"
    if flax_name.startswith("stem"):
        return "features.init_block." + ("bn" if flax_name.endswith("_bn") else "conv")
    if flax_name.startswith("head"):
        return "features.final_block." + ("bn" if flax_name.endswith("_bn") else "conv")
    stage, unit, part, *bn = flax_name.split("_")          # stage3_unit2_depthwise[_bn]
    s, u = _pytorchcv_units()[int(stage[5:]), int(unit[4:])]
    conv = {"expand": "conv1", "depthwise": "conv2", "linear": "conv3"}[part]
    return f"features.stage{s}.unit{u}.{conv}." + ("bn" if bn else "conv")


def pytorchcv_state(variables: dict) -> dict[str, np.ndarray]:
    """igc-jax's IGCV3 variables under pytorchcv's state-dict names, in its layouts."""
    state = {}
    for name, leaves in variables["params"].items():
        prefix = _torch_name(name)
        if "scale" in leaves:
            stats = variables["batch_stats"][name]
            state.update({f"{prefix}.weight": leaves["scale"], f"{prefix}.bias": leaves["bias"],
                          f"{prefix}.running_mean": stats["mean"],
                          f"{prefix}.running_var": stats["var"]})
        elif name == "classifier":
            state.update({f"{prefix}.weight": np.asarray(leaves["kernel"]).T,
                          f"{prefix}.bias": leaves["bias"]})
        else:       # HWIO (kh, kw, C_in/g, C_out) → OIHW; groups are contiguous blocks in both
            state[f"{prefix}.weight"] = np.asarray(leaves["kernel"]).transpose(3, 2, 0, 1)
    return state


def to_pytorchcv(variables: dict, width: float, num_classes: int = 1000):
    """pytorchcv 0.0.74's IGCV3 at `width` holding exactly `variables` (every array once)."""
    import torch
    from pytorchcv.models import igcv3 as ptcv

    net = ptcv.get_igcv3(width, num_classes=num_classes)
    state = pytorchcv_state(variables)
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != expected:
        raise ValueError(f"pytorchcv has {sorted(expected - set(state))[:3]} unfilled, "
                         f"{sorted(set(state) - expected)[:3]} unknown")
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, np.float32))
                         for k, v in state.items()}, strict=False)
    return net


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b|: relative to the logits' scale."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def calibrated(variables: dict, width: float, x: np.ndarray) -> dict:
    """`variables` with every BatchNorm's running statistics set to those of the batch `x` (as a
    trained network's are close to its data's): random statistics leave the activations of 50
    layers unnormalised, and float32 rounding grows with them, in any implementation."""
    model = models.build_model({"name": "igcv3", "width": width}, num_classes=1000)
    _, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    m = igcv3.BN_MOMENTUM        # running = m·running + (1 − m)·batch
    stats = jax.tree.map(lambda n, o: (np.asarray(n, np.float64) - m * o) / (1 - m),
                         new["batch_stats"], variables["batch_stats"])
    return {"params": variables["params"],
            "batch_stats": jax.tree.map(lambda a: np.asarray(a, np.float32), stats)}


def logit_errors(width: float, batch: int = 2, size: int = 224, seed: int = 0,
                 modes: tuple[str, ...] = ("eval", "train")) -> dict[str, float]:
    """Max relative error of igc-jax's logits against pytorchcv's, eval mode (running statistics
    from another batch) and train mode (batch statistics)."""
    import torch
    rng = np.random.default_rng(seed + 1)
    x, calibration = (rng.standard_normal((n, size, size, 3)).astype(np.float32)
                      for n in (batch, 4))
    variables = calibrated(random_variables(width, seed), width, calibration)
    model = models.build_model({"name": "igcv3", "width": width}, num_classes=1000)
    net = to_pytorchcv(variables, width)
    out = {}
    for train in (mode == "train" for mode in modes):
        ours = model.apply(variables, x, train=train, mutable=["batch_stats"] if train else False)
        ours = np.asarray(ours[0] if train else ours)
        net.train(train)
        with torch.no_grad():
            theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        out["train" if train else "eval"] = relative_error(ours, theirs)
    return out


# ----------------------------------------------------------------------------- counts

def counts() -> list[dict]:
    rows = []
    for width, (name, params, flops2) in PYTORCHCV.items():
        _, t = summary.summarize_model({"name": "igcv3", "width": width}, num_classes=1000,
                                       image_size=224)
        _, q = summary.summarize_model({"name": "igcv3", "width": width, "width_quirk": True},
                                       num_classes=1000, image_size=224)
        _, c = summary.summarize_model({"name": "igcv3", "width": width}, num_classes=10,
                                       image_size=32)
        rows.append({"width": width, "pytorchcv": name, "params": t["params"],
                     "published_params": params, "macs": t["macs"],
                     "published_flops_over_2": flops2, "quirk_params": q["params"],
                     "quirk_macs": q["macs"], "cifar10_params": c["params"],
                     "cifar10_macs": c["macs"]})
    return rows


# ----------------------------------------------------------------------------- training steps

def jax_step_times(batch: int, size: int, warmup: int, steps: int,
                   depthwise: str = "auto") -> list[float]:
    """Step times of igc-jax's IGCV3-D 1.0 with its depthwise convs in mode `depthwise`."""
    from benchmarks.run import make_train_step
    model = models.build_model({"name": "igcv3", "width": 1.0}, num_classes=1000,
                               plan=depthwise)
    x = jax.random.normal(jax.random.key(1), (batch, size, size, 3), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 1000)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
    tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(0.045, momentum=0.9))
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    step = make_train_step(model, tx)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        *state, loss = step(*state, x, y)
        loss.block_until_ready()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def torch_step_times(batch: int, size: int, warmup: int, steps: int,
                     channels_last: bool) -> list[float]:
    import torch
    import torch.nn.functional as F
    from pytorchcv.models import igcv3 as ptcv
    torch.manual_seed(0)
    net = ptcv.igcv3_w1(in_size=(size, size)).train()
    if size != 224:
        net.features.final_pool = torch.nn.AdaptiveAvgPool2d(1)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.045, momentum=0.9, weight_decay=WEIGHT_DECAY)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def depthwise_layer_times(reps: int = 3, batch: int = 8) -> dict[str, dict[str, float]]:
    """Best-of-`reps` ms of one depthwise layer, forward and forward+backward (input and kernel
    gradients), XLA's grouped conv beside `native.primary_conv` (where a C++ compiler exists)."""
    from igc_jax.igc import modes, native
    C, H, stride, pad = 96, 112, (2, 2), ((1, 1), (1, 1))
    x = jax.random.normal(jax.random.key(0), (batch, H, H, C))
    w = jax.random.normal(jax.random.key(1), (3, 3, 1, C)) * 0.3
    impls = {"xla_grouped_conv": lambda x, w: modes.conv(x, w, stride, pad, groups=C)}
    if native.available():
        impls["native_primary_conv"] = lambda x, w: native.primary_conv(x, w, C, stride, pad)
    out = {}
    for name, f in impls.items():
        fwd = jax.jit(f)
        both = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
        row = {}
        for key, fn in (("forward_ms", fwd), ("forward_backward_ms", both)):
            jax.block_until_ready(fn(x, w))
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                jax.block_until_ready(fn(x, w))
                times.append(time.perf_counter() - t)
            row[key] = 1e3 * min(times)
        out[name] = row
    return out


def _median_ms(times: list[float]) -> dict[str, Any]:
    return {"median_ms": 1e3 * statistics.median(times), "best_ms": 1e3 * min(times),
            "steps": len(times), "all_ms": [round(1e3 * t, 1) for t in times]}


# ----------------------------------------------------------------------------- report

def markdown(r: dict) -> str:
    lines = ["# IGCV3-D: counts, logits beside pytorchcv, CPU training step", "",
             f"{r['date']}; {r['machine']}. {r['note']}", "",
             "## Parameters and multiply-adds (ImageNet 224², 1000 classes)", "",
             "MACs: convolutions and the classifier (`igc_jax.summary`); pytorchcv's table counts "
             "FLOPs/2 with its own counter (it also counts BatchNorm, activations and additions).",
             "",
             "| width | pytorchcv | params | published params | MACs | published FLOPs/2 | "
             "builder quirk: params, MACs | CIFAR-10 (32², 10 classes): params, MACs |",
             "|---|---|---|---|---|---|---|---|"]
    for c in r["counts"]:
        lines.append(f"| {c['width']} | `{c['pytorchcv']}` | {c['params']:,} | "
                     f"{c['published_params']:,} | {c['macs'] / 1e6:.2f}M | "
                     f"{c['published_flops_over_2'] / 1e6:.2f}M | {c['quirk_params']:,}, "
                     f"{c['quirk_macs'] / 1e6:.2f}M | {c['cifar10_params']:,}, "
                     f"{c['cifar10_macs'] / 1e6:.2f}M |")
    lines += ["", "## Logits beside pytorchcv 0.0.74 (same random weights)", "",
              f"Batch {r['logits_batch']}, {r['logits_size']}², float32; max |ours − theirs| / "
              "max |theirs|.", "", "| width | eval mode | train mode (batch statistics) |",
              "|---|---|---|"]
    for w, e in r["logits"].items():
        lines.append(f"| {w} | {e['eval']:.2e} | {e['train']:.2e} |")
    s = r["step"]
    lines += ["", f"## Training step, IGCV3-D 1.0, batch {s['batch']}, {s['size']}², float32, CPU",
              "", "Forward, backward and SGD (momentum 0.9, L2 4e-5); median of "
              f"{s['jax']['steps']} steps after {s['warmup']} warm-up, one after another in one "
              "process.", "", "| implementation | median ms | best ms | images/s |",
              "|---|---|---|---|"]
    labels = ((f"igc-jax, depthwise convs `{s.get('jax_depthwise_mode', 'grouped')}` (auto's "
               "choice on CPU)", "jax"),
              ("igc-jax, depthwise convs `grouped` (XLA's grouped convolution)", "jax_grouped"),
              ("pytorchcv igcv3_w1, NCHW", "torch"),
              ("pytorchcv igcv3_w1, channels-last", "torch_channels_last"))
    for label, key in labels:
        if key not in s:
            continue
        t = s[key]
        lines.append(f"| {label} | {t['median_ms']:,.0f} | {t['best_ms']:,.0f} | "
                     f"{1e3 * s['batch'] / t['median_ms']:.1f} |")
    ratio = s["jax"]["median_ms"] / s["torch"]["median_ms"]
    lines += ["", f"igc-jax / pytorchcv (NCHW): {ratio:.2f}× the time per step.", ""]
    if "jax_grouped" in s:
        lines[-1:] = [f"`grouped` / `native` depthwise convs: "
                      f"{s['jax_grouped']['median_ms'] / s['jax']['median_ms']:.2f}×.", ""]
    d = r["depthwise"]
    lines += [f"## One depthwise layer (112²×96, stride 2, batch {r['depthwise_batch']}), CPU", "",
              "XLA's grouped convolution (`feature_group_count` = C, mode `grouped`) beside the "
              "C++ primary-conv kernel of mode `native` with one channel per group; best of 3 "
              "calls.", "",
              "| implementation | forward ms | forward + backward ms |", "|---|---|---|"]
    lines += [f"| {name} | {v['forward_ms']:.1f} | {v['forward_backward_ms']:.1f} |"
              for name, v in d.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a dry run at toy sizes")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation")
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.0f} s] {msg}", flush=True)

    batch, size, warmup = (2, 64, 1) if args.quick else (64, 224, 1)
    widths = (0.25,) if args.quick else tuple(PYTORCHCV)
    result: dict[str, Any] = {
        "quick": args.quick, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, jax {jax.__version__}, torch "
                   f"{torch.__version__} ({torch.get_num_threads()} threads)",
        "note": ("Shared machine: other jobs ran during the measurement (load average at start "
                 f"{os.getloadavg()[0]:.1f}); compare the two implementations within this run."),
    }
    result["counts"] = counts()
    log("counts: " + ", ".join(f"{c['width']}: {c['params']:,}" for c in result["counts"]))
    result["logits_batch"], result["logits_size"] = 2, 224
    result["logits"] = {}
    for w in widths:
        result["logits"][str(w)] = logit_errors(w)
        log(f"logits width {w}: {result['logits'][str(w)]}")
    step: dict[str, Any] = {"batch": batch, "size": size, "warmup": warmup}
    from igc_jax.igc import native
    step["jax"] = _median_ms(jax_step_times(batch, size, warmup, args.steps, "auto"))
    step["jax_depthwise_mode"] = "native" if native.available() else "grouped"
    log(f"jax step ({step['jax_depthwise_mode']} depthwise): {step['jax']['median_ms']:.0f} ms")
    if step["jax_depthwise_mode"] != "grouped":
        step["jax_grouped"] = _median_ms(jax_step_times(batch, size, warmup, args.steps,
                                                        "grouped"))
        log(f"jax step (grouped depthwise): {step['jax_grouped']['median_ms']:.0f} ms")
    step["torch"] = _median_ms(torch_step_times(batch, size, warmup, args.steps, False))
    log(f"torch step: {step['torch']['median_ms']:.0f} ms")
    step["torch_channels_last"] = _median_ms(torch_step_times(batch, size, warmup, args.steps,
                                                              True))
    log(f"torch channels-last step: {step['torch_channels_last']['median_ms']:.0f} ms")
    result["step"] = step
    result["depthwise_batch"] = 2 if args.quick else 8
    result["depthwise"] = depthwise_layer_times(batch=result["depthwise_batch"])
    log("depthwise layer: " + ", ".join(f"{k} {v['forward_backward_ms']:.0f} ms fwd+bwd"
                                        for k, v in result["depthwise"].items()))
    result["wall_s"] = time.monotonic() - start
    stem = "igcv3" + ("_quick" if args.quick else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    log(f"wrote {RESULTS / stem}.json and .md")


if __name__ == "__main__":
    main()
