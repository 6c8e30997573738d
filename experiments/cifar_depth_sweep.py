"""The depth comparison on CIFAR-10 (spec §2, §5): D = 8, 20, 26 × 4 networks × {plain, +Ident.}.

Networks: RegConv-W16, RegConv-W18, SumFusion (IGC-L4M8 with the fixed all-ones secondary
kernel, the ResNeXt-like fusion) and IGC-L24M2. The paper's claim (spec §5): at equal or fewer
parameters IGC-L24M2 beats RegConv-W16 and RegConv-W18, and +Ident. improves further.
Plain nets need D = 3B+2 and residual (+Ident.) nets D = 6B+2; 8, 20 and 26 are of both forms,
so all 24 points exist (a depth that is not 6B+2 gets no +Ident. point: `residual_depth_ok`).
Training as spec §4 (SGD Nesterov, batch 64, lr 0.1, 400 epochs, ×0.1 at 1/2, 3/4, 7/8).

Point names: `D<depth>-<network>[-Ident]`, e.g. D8-RegConv-W16, D20-IGC-L24M2-Ident,
D26-SumFusion-L4M8.

    python -m igc_jax.sweep --config=experiments/cifar_depth_sweep.py --workdir=runs/cifar10_depth
    python -m igc_jax.sweep --config=experiments/cifar_depth_sweep.py \\
        --workdir=runs/cifar10_depth --only=D8-RegConv-W16,D8-IGC-L24M2
    python -m igc_jax.main --config=experiments/cifar_depth_sweep.py:D20-IGC-L24M2-Ident \\
        --workdir=runs/cifar10_depth/D20-IGC-L24M2-Ident
    python -m igc_jax.sweep --config=experiments/cifar_depth_sweep.py \\
        --workdir=runs/cifar10_depth --dry_run
    python -m igc_jax.report runs/cifar10_depth --out runs/cifar10_depth/report

CIFAR-100 instead: add `--config.dataset.name=cifar100 --config.dataset.num_classes=100
--config.dataset.normalization=cifar100` (passed through to every point). The real CIFAR-10
arrays of this machine:
`--config.dataset.name=arrays --config.dataset.data_dir=../shared/data/cifar10`.
Hardware: one GPU or TPU chip per point for the full 400 epochs (hours each); on Cloud TPU:

    launch/tpu_vm.sh --name igc-depth --zone us-west4-a --accelerator v5litepod-8 --spot --sweep \\
      --config experiments/cifar_depth_sweep.py --workdir gs://BUCKET/igc/cifar10_depth \\
      --tfds-data-dir gs://BUCKET/tensorflow_datasets
"""
from __future__ import annotations

from pathlib import Path

import ml_collections

from igc_jax import configs, sweep
from igc_jax.configs import networks

DEPTHS = (8, 20, 26)
# Point-name stem → `models.cifar_model` network string (without depth and ident).
NETWORKS = {
    "RegConv-W16": "W16",
    "RegConv-W18": "W18",
    "SumFusion-L4M8": "L4M8,sumfusion",
    "IGC-L24M2": "L24M2",
}


def residual_depth_ok(depth: int) -> bool:
    """+Ident. networks stack basic units of two layers: D = 6B+2."""
    return depth >= 8 and (depth - 2) % 6 == 0


def base_config() -> ml_collections.ConfigDict:
    """CIFAR-10 and spec §4 training, from the per-network config file."""
    cifar10 = configs.load_config_module(Path(__file__).resolve().with_name("cifar10_igc.py"))
    return cifar10.get_config(f"L24M2,D{DEPTHS[0]}")


def get_sweep() -> list[tuple[str, dict]]:
    points = []
    for depth in DEPTHS:
        for stem, net in NETWORKS.items():
            plain = networks.cifar_model(f"{net},D{depth}")
            points.append((f"D{depth}-{stem}", {"model": dict(plain)}))
            if residual_depth_ok(depth):
                points.append((f"D{depth}-{stem}-Ident",
                               {"model": dict(networks.cifar_model(f"{net},D{depth},ident"))}))
    return points


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return sweep.point_config(base_config(), get_sweep(), arg)
