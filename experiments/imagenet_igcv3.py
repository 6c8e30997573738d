"""ImageNet: IGCV3-D (spec §7), the network and training of the authors' released MXNet code.

    python -m igc_jax.main --config=experiments/imagenet_igcv3.py --workdir=runs/igcv3_w1
    python -m igc_jax.main --config=experiments/imagenet_igcv3.py:0.5 --workdir=runs/igcv3_wd2

The argument is the width multiplier: 1.0 (default), 0.75, 0.5 or 0.25 (pytorchcv's igcv3_w1,
igcv3_w3d4, igcv3_wd2, igcv3_wd4; 3,491,688 / 2,638,084 / 1,985,528 / 1,534,020 parameters).
MobileNetV2's layout with IGCV3 blocks: 1×1 group conv (2 groups) → BN → shuffle(2) → 3×3
depthwise → BN → ReLU6 → 1×1 group conv (2 groups) → BN, identity on blocks 2…n of a stage.
`--config.model.width_quirk=True` follows the official builder's width arithmetic instead
(it differs from pytorchcv's below width 1.0 only).

Training (the authors' train_imagenet.py, spec §7): SGD, momentum 0.9 (not Nesterov), L2 4e-5,
batch 96, lr 0.045 ×0.98 at every epoch for 480 epochs, MXNet's Xavier init (gaussian, fan-in,
magnitude 2), mean subtraction only (123.68, 116.779, 103.939), their augmentation (scale
0.533–1 of a 480 short side, flip, HSL jitter ±36/50/50, no aspect jitter); evaluation on the
256-short-side 224 centre crop. Computes in bfloat16; --config.dtype=float32 for the official
numerics.
Hardware: a TPU v5e-8 / v4-8 host or one 8-GPU host (12 images per device, as the authors' 8
GPUs); 480 epochs are about 6.4 million steps. Layers and counts: `python -m igc_jax.summary
--config=<this file>`.
Paper's result (the authors' README, single 224 crop): IGCV3-D 1.0 top-1 / top-5 72.2 / 90.5%
after their retraining (70.6 / 89.7% before), 3.5M parameters.
"""
from igc_jax import configs

# The widths pytorchcv publishes; the tests build every one.
CONFIG_ARGS = ("1.0", "0.75", "0.5", "0.25")


def get_config(arg: str | None = None):
    width = configs.width_argument("experiments/imagenet_igcv3.py", arg,
                                   tuple(map(float, CONFIG_ARGS)))
    return configs.igcv3_recipe("imagenet2012", width)
