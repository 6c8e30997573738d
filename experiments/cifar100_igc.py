"""CIFAR-100 with the paper's CIFAR networks (spec §2) and the official training setup (spec §4).

    python -m igc_jax.main --config=experiments/cifar100_igc.py:L24M2,D20 \\
        --workdir=runs/c100_L24M2_D20

The argument names the network: `<net>,D<depth>[,ident][,sumfusion][,noquirk]` with
  <net>      W16 | W18 (RegConv-W16/W18) or L<x>M<y> (IGC-LxMy, e.g. L24M2, L4M8)
  D<depth>   plain nets D = 3B+2 (8, 20, 26); +Ident. nets D = 6B+2 (8, 20, 26)
  ident      residual (+Ident.) version
  sumfusion  SumFusion: the IGC net with its secondary fixed to summation (use it as L4M8,sumfusion)
  noquirk    residual IGC without the official downsampling quirk (spec §2; on by default)
e.g. `W16,D8`, `W18,D26,ident`, `L24M2,D20,ident`, `L4M8,D20,sumfusion`. No argument: L24M2,D20.

Training (official code): SGD, Nesterov momentum 0.9, L2 1e-4 on every parameter, batch 64,
lr 0.1 ×0.1 at epochs 200, 300, 350 of 400; pad-4 random crop + flip; per-channel normalisation.
Hardware: one GPU or one TPU host (the global batch of 64 divides over 1, 2, 4 or 8 devices);
400 epochs are 312,500 steps.
Paper's result (spec §5): in the (L, M) study on CIFAR-100, IGC-L40M2 reaches 63.89% and
IGC-L64M1 (Xception-like) 63.07% (see experiments/cifar100_lm_sweep.py); the claim to reproduce is
that at equal or fewer parameters IGC-L24M2 beats RegConv-W16 and RegConv-W18, and +Ident. improves
further.
"""
from igc_jax import configs

# The networks of the paper's CIFAR comparison; the tests build every one.
NETWORKS = ("W16", "W18", "L24M2", "L4M8", "L4M8,sumfusion")
CONFIG_ARGS = tuple(f"{net},D{depth}{ident}" for depth in (8, 20, 26) for net in NETWORKS
                    for ident in ("", ",ident"))


def get_config(arg: str | None = None):
    return configs.small_image_recipe("cifar100", arg or "L24M2,D20")
