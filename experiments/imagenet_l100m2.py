"""ImageNet: IGC-L100M2+Ident., spec §3.

ResNet-18 layout with every 3×3 conv an IGC layer: M = 2 in every stage, L = 100, 200, 400, 800
(widths 200, 400, 800, 1600); the 1×1 projections are grouped with the stage's L. The stem is 100
wide, so stage 1 opens with a stride-1 1×1 projection (100 groups) + BN instead of the identity.

    python -m igc_jax.main --config=experiments/imagenet_l100m2.py --workdir=runs/l100m2

Training (official code, spec §4): SGD, Nesterov momentum 0.9, L2 1e-4 on every parameter, batch
256, lr 0.1 ×0.1 every 30 epochs, 120 epochs (the released MXNet weights are from epoch 95); MXNet's
augmentation (scale 0.533–1 of a 480 short side, aspect 0.75–1.25, mean-colour fill, random 224
crop, flip, HSL jitter ±36/50/50; `--config.dataset.augment=imagenet_inception` for the Inception
recipe) and the authors' mean/std; evaluation on the 256-short-side 224 centre crop.
Computes in bfloat16 (parameters, BatchNorm statistics and logits stay float32); add
--config.dtype=float32 for the official numerics.
Hardware: a TPU v4-8 / v5e-8 host or one 8-GPU host (32 images per device); 120 epochs are
about 600,000 steps. Layers and counts: `python -m igc_jax.summary --config=<this file>`.
Paper's result (single 224 crop): top-1 / top-5 error 26.95 / 8.92%;
8.61M parameters and 1.3G FLOPs as the paper counts them.
"""
from igc_jax import configs

NETWORK = "IGC-L100M2+Ident."


def get_config(arg: str | None = None):
    configs.no_argument("experiments/imagenet_l100m2.py", arg)
    return configs.imagenet_recipe(NETWORK)
