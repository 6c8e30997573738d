"""ImageNet: ResNet-18, C = 64, spec §3.

The ResNet-18 layout with stage widths 64, 128, 256, 512.

    python -m igc_jax.main --config=experiments/imagenet_resnet18_c64.py --workdir=runs/resnet18_c64

Training (official code, spec §4): SGD, Nesterov momentum 0.9, L2 1e-4 on every parameter, batch
256, lr 0.1 ×0.1 every 30 epochs, 100 epochs (the released MXNet weights are from epoch 95); random
scale/aspect crop to 224 + flip + colour jitter; evaluation on the 256-short-side 224 centre crop.
Computes in bfloat16 (parameters, BatchNorm statistics and logits stay float32); add
--config.dtype=float32 for the official numerics.
Hardware: a TPU v4-8 / v5e-8 host or one 8-GPU host (32 images per device); 100 epochs are
about 500,000 steps. Layers and counts: `python -m igc_jax.summary --config=<this file>`.
Paper's result (single 224 crop): top-1 / top-5 error 31.06 / 11.38%;
11.151M parameters and 1.8G FLOPs as the paper counts them.
"""
from igc_jax import configs

NETWORK = "ResNet (C=64)"


def get_config(arg: str | None = None):
    configs.no_argument("experiments/imagenet_resnet18_c64.py", arg)
    return configs.imagenet_recipe(NETWORK)
