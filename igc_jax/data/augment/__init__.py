"""The training augmentations (spec §4), by `config.dataset.augment`: one module per recipe family,
and the registry `RECIPES` that names them.

A recipe's train function is a pure function of the images and per-example uniforms,
(images, u, size, channels, normalization, jitter) → float32 normalised B×size×size×C:
images a uint8 B×H×W×C array (CIFAR-style) or a list of uint8 H×W×C arrays or encoded files
(ImageNet-style); u the (B, randomness.NUM_UNIFORMS) uniforms (columns as laid out in
`randomness`); channels those of the normalisation; jitter the colour jitter strength of the
recipes that take one. ImageNet-style recipes read images of any size (crops and resizes one image
at a time, decoding encoded ones at a reduced scale, `jpeg`) and evaluate on the short-side resize
+ centre crop of `imagenet`; the others evaluate on the images as stored.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from igc_jax.data.augment import cifar, inception, mxnet
from igc_jax.data.normalization import normalize


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One training augmentation: its train function (signature above), and whether it is
    ImageNet-style (images of any size, maybe encoded; eval by short-side resize + centre crop)."""

    train: Callable[[Any, np.ndarray, int, int, str, float], np.ndarray]
    imagenet: bool = False


def _as_stored(images: np.ndarray, u: np.ndarray, size: int, channels: int, normalization: str,
               jitter: float) -> np.ndarray:
    """Recipe "none": the images as stored, normalised."""
    return normalize(images, normalization)


# "cifar" pads with the mean colour (official code), "cifar_zero_pad" with black; "imagenet_mxnet"
# is the IGCV1 authors' ImageNet augmentation (MXNet scale/aspect/HSL), "imagenet_mxnet_igcv3" the
# IGCV3 authors' (scale/HSL, no aspect jitter, fill 127), "imagenet_inception" the random-area
# crop + colour jitter; "none" no augmentation.
RECIPES: dict[str, Recipe] = {
    "cifar": Recipe(cifar.train_mean_pad),
    "cifar_zero_pad": Recipe(cifar.train_zero_pad),
    "imagenet_mxnet": Recipe(mxnet.train, imagenet=True),
    "imagenet_mxnet_igcv3": Recipe(mxnet.train_igcv3, imagenet=True),
    "imagenet_inception": Recipe(inception.train, imagenet=True),
    "none": Recipe(_as_stored),
}
AUGMENTATIONS = tuple(RECIPES)
IMAGENET_AUGMENTATIONS = tuple(name for name, recipe in RECIPES.items() if recipe.imagenet)
