"""The CIFAR augmentation of spec §4: pad 4 pixels, random crop back to the image size, random
horizontal flip, vectorised over the batch (one gather of pixels). Two recipes differ in the
padding colour: "cifar" the rounded mean colour (the authors' code), "cifar_zero_pad" black.
"""
from __future__ import annotations

import numpy as np

from igc_jax.data.normalization import fill_colour, normalize
from igc_jax.data.randomness import U_FLIP, U_POS

CIFAR_PAD = 4


def pad_crop_flip(images: np.ndarray, u: np.ndarray, pad: int = CIFAR_PAD,
                  fill: np.ndarray | int = 0) -> np.ndarray:
    """CIFAR augmentation: pad `pad` pixels of colour `fill` (per channel), random crop back to
    H×W, random horizontal flip.

    One `np.take` of pixels for the whole batch (flat pixel indices into the padded batch); the
    offsets come from u[:, U_POS:U_POS+2], the flip (u[:, U_FLIP] < 0.5) reverses the columns.
    """
    b, h, w, c = images.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    padded = np.empty((b, hp, wp, c), images.dtype)
    padded[...] = np.asarray(fill, images.dtype)
    padded[:, pad:pad + h, pad:pad + w] = images
    dy = np.floor(u[:, U_POS] * (2 * pad + 1)).astype(np.intp)
    dx = np.floor(u[:, U_POS + 1] * (2 * pad + 1)).astype(np.intp)
    cols = dx[:, None] + np.arange(w)
    cols = np.where((u[:, U_FLIP] < 0.5)[:, None], cols[:, ::-1], cols)
    rows = (np.arange(b) * hp + dy)[:, None] + np.arange(h)
    pixels = rows[:, :, None] * wp + cols[:, None, :]
    return np.take(padded.reshape(-1, c), pixels, axis=0)


def train_mean_pad(images: np.ndarray, u: np.ndarray, size: int, channels: int,
                   normalization: str, jitter: float) -> np.ndarray:
    """Recipe "cifar": padded with the dataset's rounded mean colour (`fill_colour`)."""
    return normalize(pad_crop_flip(images, u, fill=fill_colour(normalization)), normalization)


def train_zero_pad(images: np.ndarray, u: np.ndarray, size: int, channels: int,
                   normalization: str, jitter: float) -> np.ndarray:
    """Recipe "cifar_zero_pad": padded with black."""
    return normalize(pad_crop_flip(images, u), normalization)
