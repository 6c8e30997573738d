"""The train / eval transforms of one dataset config: the augmentation recipe it names
(`augment.RECIPES`), its normalisation and image size.

Training batches go through the recipe's train function; evaluation is deterministic, the
short-side resize + centre crop for ImageNet-style recipes (`augment.imagenet`), else the images
as stored, then the normalisation.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from igc_jax.data.augment import RECIPES, Recipe
from igc_jax.data.augment.imagenet import imagenet_eval_crop
from igc_jax.data.augment.inception import DEFAULT_COLOR_JITTER
from igc_jax.data.normalization import NORMALIZATION, normalize


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The train / eval transforms one config asks for (augment, normalization, image_size)."""

    augment: str
    normalization: str
    image_size: int
    color_jitter: float = DEFAULT_COLOR_JITTER

    @property
    def channels(self) -> int:
        """Channels of the normalisation constants: what encoded images are decoded to."""
        return len(NORMALIZATION[self.normalization][0])

    @property
    def recipe(self) -> Recipe:
        """The `augment.RECIPES` entry `augment` names."""
        return RECIPES[self.augment]

    def train(self, images: np.ndarray | list[np.ndarray], u: np.ndarray) -> np.ndarray:
        """A batch of uint8 images (array, or list for ImageNet) → float32 normalised B×S×S×C."""
        return self.recipe.train(images, u, self.image_size, self.channels, self.normalization,
                                 self.color_jitter)

    def eval(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Deterministic: ImageNet short-side resize + centre crop, else the images as stored."""
        if self.recipe.imagenet:
            images = np.stack([imagenet_eval_crop(im, self.image_size, self.channels)
                               for im in images])
        return normalize(images, self.normalization)
