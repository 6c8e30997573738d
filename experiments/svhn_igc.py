"""SVHN with the paper's CIFAR/SVHN networks (spec §2) and the official SVHN setup (spec §4).

    python -m igc_jax.main --config=experiments/svhn_igc.py:L24M2,D20 --workdir=runs/svhn_L24M2_D20

The argument names the network exactly as in experiments/cifar10_igc.py:
`<net>,D<depth>[,ident][,sumfusion][,noquirk]`, e.g. `W16,D20`, `L24M2,D20,ident`. No argument:
L24M2,D20.

Training (official code): train + extra splits (604,388 images), no augmentation, 40 epochs with
lr 0.1 ×0.1 at epochs 20, 30, 35; otherwise as CIFAR (batch 64, Nesterov 0.9, L2 1e-4).
Hardware: one GPU or one TPU host (the global batch of 64 divides over 1, 2, 4 or 8 devices);
40 epochs are about 378,000 steps.
Paper's result: the spec quotes no SVHN accuracies.
"""
from igc_jax import configs

NETWORKS = ("W16", "W18", "L24M2", "L4M8", "L4M8,sumfusion")
CONFIG_ARGS = tuple(f"{net},D20{ident}" for net in NETWORKS for ident in ("", ",ident"))


def get_config(arg: str | None = None):
    return configs.small_image_recipe("svhn", arg or "L24M2,D20")
