"""How far apart two correct implementations of the CIFAR IGCV3 training drift, step by step.

    python -m benchmarks.igcv3_divergence      # ~5 min; results/igcv3_divergence.{json,md}

`benchmarks/cifar_reference_igcv3.py` trains IGCV3-D 1.0 on CIFAR-10 in igc-jax and in PyTorch
from different random starts and batch orders, so its finals differ by whatever one run differs
from another. This script asks how much of that is the implementations: from one start (igc-jax's
initial variables, copied into pytorchcv's network with `benchmarks.igcv3.to_pytorchcv`) and on
the same batches (igc-jax's input pipeline, seed 1), it runs `STEPS` steps of the config's recipe
three ways: igc-jax's jitted train step (float32, the plan its CIFAR run uses: depthwise convs
`native`), PyTorch in float32 and PyTorch in float64 (the reference). After each step it records
the three losses and each float32 run's distance from the float64 one, ||θ − θ64|| over all
parameters, relative to how far the float64 run has moved from the start, ||θ64 − θ0||.

If igc-jax computed a different step (another gradient, learning rate, decay, momentum or
augmentation), its distance would stand out from step 1 on; if it computes the same step, its
distance grows like PyTorch float32's, which differs from float64 by rounding alone.
Real CIFAR-10 from ../shared/data/cifar10 (`--data_dir`); without it, random images (the report
says which).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from benchmarks import cifar_reference_igcv3 as bench
from benchmarks.igcv3 import pytorchcv_state, to_pytorchcv
from igc_jax import configs
from igc_jax.igc.select import ModePlan
from igc_jax.training import sharding, steps

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 20
SEED = 1


def recipe(batch: int, data_dir: Path | None):
    """experiments/cifar10_igcv3.py with the benchmark's 8-epoch schedule, batch `batch`."""
    c = configs.load_config(f"{bench.CONFIG}:1.0")
    c.batch_size, c.seed = batch, SEED
    c.lr_decay_per_epoch = bench.decay_per_epoch(bench.EPOCHS)
    if data_dir is not None:
        c.dataset.name, c.dataset.data_dir = "arrays", str(data_dir)
    return c


def batches(config, data_dir: Path | None) -> Iterator[dict[str, np.ndarray]]:
    """igc-jax's training batches of `config`; random normalised images without data."""
    if data_dir is not None:
        from igc_jax.data import pipeline
        yield from pipeline.train_iterator(config, process_index=0, process_count=1)
    rng = np.random.default_rng(SEED)
    while True:
        yield {"image": rng.normal(0, 60, (config.batch_size, 32, 32, 3)).astype(np.float32),
               "label": rng.integers(0, 10, config.batch_size).astype(np.int32)}


def _flat_jax(params: dict, batch_stats: dict, names: list[str]) -> np.ndarray:
    """igc-jax's parameters as one float64 vector: PyTorch's `names`, in their layouts."""
    state = pytorchcv_state({"params": params, "batch_stats": batch_stats})
    return np.concatenate([np.asarray(state[k], np.float64).ravel() for k in names])


def _flat_torch(net) -> np.ndarray:
    """The PyTorch network's parameters as one float64 vector, in `named_parameters` order."""
    return np.concatenate([p.detach().double().numpy().ravel() for p in net.parameters()])


def trajectories(num_steps: int, batch: int, data_dir: Path | None = None) -> list[dict[str, Any]]:
    """Per step: the three losses and each float32 run's distance from the float64 run relative
    to the float64 run's distance from the start."""
    import torch
    torch.manual_seed(SEED)
    config = recipe(batch, data_dir)
    steps_per_epoch = 50_000 // batch
    model = steps.make_model(config, plan=ModePlan("native"), per_device=False)
    schedule = steps.learning_rate_schedule(config, steps_per_epoch,
                                            bench.EPOCHS * steps_per_epoch)
    tx = steps.make_optimizer(config, schedule)
    state, _ = steps.init_state(model, tx, (32, 32, 3), SEED,
                                sharding.make_mesh(jax.devices()[:1]))
    start = jax.tree.map(np.asarray, {"params": state.params, "batch_stats": state.batch_stats})
    nets = {}
    for name, dtype in (("pytorch_float32", torch.float32), ("pytorch_float64", torch.float64)):
        net = bench.cifar(to_pytorchcv(start, 1.0, num_classes=10)).train().to(dtype)
        opt = torch.optim.SGD(net.parameters(), lr=bench.LR, momentum=bench.MOMENTUM,
                              nesterov=False, weight_decay=bench.WEIGHT_DECAY)
        nets[name] = (net, opt, dtype)
    step_fn = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, schedule=schedule))
    names = [k for k, _ in nets["pytorch_float64"][0].named_parameters()]
    theta0 = _flat_torch(nets["pytorch_float64"][0])
    rows = []
    for step, b in zip(range(num_steps), batches(config, data_dir)):
        state, metrics = step_fn(state, b)
        row: dict[str, Any] = {"step": step + 1, "igc_jax_loss": float(metrics["loss"])}
        lr = bench.learning_rate(step, steps_per_epoch, config.lr_decay_per_epoch)
        for name, (net, opt, dtype) in nets.items():
            for group in opt.param_groups:
                group["lr"] = lr
            x = torch.from_numpy(b["image"].transpose(0, 3, 1, 2).copy()).to(dtype)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(x), torch.from_numpy(
                b["label"].astype(np.int64)))
            loss.backward()
            opt.step()
            row[f"{name}_loss"] = loss.item()
        reference = _flat_torch(nets["pytorch_float64"][0])
        moved = float(np.linalg.norm(reference - theta0))
        row["igc_jax_distance"] = float(np.linalg.norm(
            _flat_jax(state.params, start["batch_stats"], names) - reference)) / moved
        row["pytorch_float32_distance"] = float(np.linalg.norm(
            _flat_torch(nets["pytorch_float32"][0]) - reference)) / moved
        rows.append(row)
    return rows


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# IGCV3-D 1.0 on CIFAR-10: igc-jax and PyTorch from one start ({r['date']})", "",
             f"{r['data'][:1].upper()}{r['data'][1:]}, batch {r['batch']}, the recipe of "
             "`experiments/cifar10_igcv3.py` with "
             "`benchmarks/cifar_reference_igcv3.py`'s 8-epoch schedule; one start (igc-jax's "
             "initial variables) and the same batches on every side. Distance: ||θ − θ64|| over "
             "all parameters ÷ ||θ64 − θ0||, θ64 being PyTorch float64's parameters after the "
             f"step. jax {r['jax']}, torch {r['torch']}, {r['machine']}. "
             "`python -m benchmarks.igcv3_divergence`.", "",
             "| step | loss: igc-jax | PyTorch f32 | PyTorch f64 | distance from f64: igc-jax | "
             "PyTorch f32 | igc-jax ÷ PyTorch f32 |", "|---|---|---|---|---|---|---|"]
    for s in r["rows"]:
        lines.append(f"| {s['step']} | {s['igc_jax_loss']:.4f} | {s['pytorch_float32_loss']:.4f} "
                     f"| {s['pytorch_float64_loss']:.4f} | {s['igc_jax_distance']:.2e} | "
                     f"{s['pytorch_float32_distance']:.2e} | "
                     f"{s['igc_jax_distance'] / s['pytorch_float32_distance']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import torch
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", type=Path, default=bench.ref.ROOT.parent / "shared" / "data" /
                   "cifar10")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--batch", type=int, default=bench.BATCH)
    args = p.parse_args(argv)
    data_dir = args.data_dir.resolve() if (args.data_dir / "test.npz").exists() else None
    rows = trajectories(args.steps, args.batch, data_dir)
    r = dict(date=datetime.date.today().isoformat(), jax=jax.__version__,
             torch=torch.__version__, machine=f"{platform.machine()}, CPU",
             data="real CIFAR-10" if data_dir else "random images (no CIFAR-10 found)",
             batch=args.batch, rows=rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "igcv3_divergence.json").write_text(json.dumps(r, indent=1) + "\n")
    (RESULTS / "igcv3_divergence.md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
