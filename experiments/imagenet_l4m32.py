"""ImageNet: IGC-L4M32+Ident., spec §3.

ResNet-18 layout with every 3×3 conv an IGC layer: L = 4 in every stage, M = 32, 64, 128, 256
(widths 128, 256, 512, 1024); the 1×1 projections have 4 groups.

    python -m igc_jax.main --config=experiments/imagenet_l4m32.py --workdir=runs/l4m32

Training (official code, spec §4): SGD, Nesterov momentum 0.9, L2 1e-4 on every parameter, batch
256, lr 0.1 ×0.1 every 30 epochs, 120 epochs (the released MXNet weights are from epoch 95); MXNet's
augmentation (scale 0.533–1 of a 480 short side, aspect 0.75–1.25, mean-colour fill, random 224
crop, flip, HSL jitter ±36/50/50; `--config.dataset.augment=imagenet_inception` for the Inception
recipe) and the authors' mean/std; evaluation on the 256-short-side 224 centre crop.
Computes in bfloat16 (parameters, BatchNorm statistics and logits stay float32); add
--config.dtype=float32 for the official numerics.
Hardware: a TPU v4-8 / v5e-8 host or one 8-GPU host (32 images per device); 120 epochs are
about 600,000 steps. Layers and counts: `python -m igc_jax.summary --config=<this file>`.
Paper's result (single 224 crop): top-1 / top-5 error 30.77 / 10.99%;
11.205M parameters and 1.9G FLOPs as the paper counts them.
"""
from igc_jax import configs

NETWORK = "IGC-L4M32+Ident."


def get_config(arg: str | None = None):
    configs.no_argument("experiments/imagenet_l4m32.py", arg)
    return configs.imagenet_recipe(NETWORK)
