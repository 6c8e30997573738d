"""ImageNet: IGC-L16M16+Ident., spec §3.

ResNet-18 layout with every 3×3 conv an IGC layer: L = 16 in every stage, M = 16, 32, 64, 128
(widths 256, 512, 1024, 2048); the 1×1 projections have 16 groups.

    python -m igc_jax.main --config=experiments/imagenet_l16m16.py --workdir=runs/l16m16

Training (official code, spec §4): SGD, Nesterov momentum 0.9, L2 1e-4 on every parameter, batch
256, lr 0.1 ×0.1 every 30 epochs, 100 epochs (the released MXNet weights are from epoch 95); random
scale/aspect crop to 224 + flip + colour jitter; evaluation on the 256-short-side 224 centre crop.
Computes in bfloat16 (parameters, BatchNorm statistics and logits stay float32); add
--config.dtype=float32 for the official numerics.
Hardware: a TPU v4-8 / v5e-8 host or one 8-GPU host (32 images per device); 100 epochs are
about 500,000 steps. Layers and counts: `python -m igc_jax.summary --config=<this file>`.
Paper's result (single 224 crop): top-1 / top-5 error 29.40 / 10.32%;
11.329M parameters and 2.2G FLOPs as the paper counts them.
"""
from igc_jax import configs

NETWORK = "IGC-L16M16+Ident."


def get_config(arg: str | None = None):
    configs.no_argument("experiments/imagenet_l16m16.py", arg)
    return configs.imagenet_recipe(NETWORK)
