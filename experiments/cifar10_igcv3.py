"""CIFAR-10: IGCV3-D (spec §7) with the authors' ImageNet training recipe.

    python -m igc_jax.main --config=experiments/cifar10_igcv3.py --workdir=runs/c10_igcv3_w1
    python -m igc_jax.main --config=experiments/cifar10_igcv3.py:0.5 --workdir=runs/c10_igcv3_wd2

The argument is the width multiplier: 1.0 (default), 0.75, 0.5 or 0.25. The authors released no
CIFAR code; their builder (symbols/igcv3.py) has one table, keyed 224×224, and uses it for any
input size, so this is the ImageNet network unchanged on 32×32 images (its last stages see 2×2
and 1×1 maps) with 10 classes: 2,223,498 parameters at width 1.0.
Training: the authors' ImageNet recipe (SGD, momentum 0.9, L2 4e-5, batch 96, lr 0.045 ×0.98 at
every epoch for 480 epochs, MXNet's Xavier init, mean subtraction only with CIFAR-10's mean) with
the standard CIFAR augmentation (pad 4 with the mean colour, random crop, flip).
Hardware: one GPU or TPU host (the batch of 96 divides over 1, 2, 4 or 8 devices); 480 epochs
are 249,600 steps.
Paper's result: the authors' README gives IGCV3-D 94.96% (1.0×, 2.4M parameters), 94.92% (0.7×,
1.7M) and 94.73% (0.5×, 1.2M) on CIFAR-10, for a CIFAR variant whose layout and training they did
not publish; this config is not that variant, so those figures are context, not its target.
"""
from igc_jax import configs

# The widths pytorchcv publishes for ImageNet; the tests build every one.
CONFIG_ARGS = ("1.0", "0.75", "0.5", "0.25")


def get_config(arg: str | None = None):
    width = configs.width_argument("experiments/cifar10_igcv3.py", arg,
                                   tuple(map(float, CONFIG_ARGS)))
    return configs.igcv3_recipe("cifar10", width)
