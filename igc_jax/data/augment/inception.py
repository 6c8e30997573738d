"""The Inception (ResNet) ImageNet recipe, "imagenet_inception": a random-area crop (8–100% of the
area, aspect 3/4–4/3) resized to size×size, a random flip, then brightness, contrast and saturation
jitter, run on the whole batch as one 3×3 colour matrix per image with the normalisation folded
in.
"""
from __future__ import annotations

import math

import numpy as np

from igc_jax.data.augment.imagenet import maybe_flip
from igc_jax.data.jpeg import Encoded, crop_source, resize_box
from igc_jax.data.normalization import NORMALIZATION, normalize
from igc_jax.data.randomness import CROP_ATTEMPTS, U_JITTER, U_POS

CROP_SCALE = (0.08, 1.0)           # area fraction of the random crop (Inception / ResNet recipe)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_COLOR_JITTER = 0.4         # brightness, contrast, saturation factors in [1-s, 1+s]


def random_crop_box(height: int, width: int, u: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of a random scale/aspect crop (CROP_SCALE, CROP_RATIO).

    Up to CROP_ATTEMPTS draws of (area, log aspect); the first that fits is placed at a random
    position; if none fits, the centre crop with the aspect clamped to CROP_RATIO (as torchvision).
    """
    area = height * width
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for t in range(CROP_ATTEMPTS):
        target = area * (CROP_SCALE[0] + u[2 * t] * (CROP_SCALE[1] - CROP_SCALE[0]))
        aspect = math.exp(log_lo + u[2 * t + 1] * (log_hi - log_lo))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            top = int(u[U_POS] * (height - ch + 1))
            left = int(u[U_POS + 1] * (width - cw + 1))
            return top, left, ch, cw
    aspect = width / height
    if aspect < CROP_RATIO[0]:
        cw, ch = width, round(width / CROP_RATIO[0])
    elif aspect > CROP_RATIO[1]:
        cw, ch = round(height * CROP_RATIO[1]), height
    else:
        cw, ch = width, height
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def imagenet_train_crop(image: Encoded, u: np.ndarray, size: int,
                        channels: int = 3) -> np.ndarray:
    """uint8 H×W×C (or its encoded file) → a random scale/aspect crop, resized (bilinear) to
    size×size, maybe flipped. The box depends only on the stored size and `u`; an encoded image is
    decoded at the largest DCT reduction that keeps the box at least size×size."""
    pixels, (top, left, ch, cw) = crop_source(
        image, lambda h, w: random_crop_box(h, w, u), size, channels)
    return maybe_flip(resize_box(pixels, (left, top, left + cw, top + ch), size), u)


def color_jitter(images: np.ndarray, u: np.ndarray, strength: float) -> np.ndarray:
    """Brightness, contrast, saturation (in order), factors 1 + strength·(2u − 1); float 0–255."""
    factors = (1.0 + strength * (2.0 * u[:, U_JITTER:U_JITTER + 3] - 1.0)).astype(np.float32)
    x = images.astype(np.float32) * factors[:, 0, None, None, None]
    gray = _gray(x)
    mean = gray.mean(axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * factors[:, 1, None, None, None] + mean
    if x.shape[-1] == 3:
        gray = _gray(x)
        x = (x - gray) * factors[:, 2, None, None, None] + gray
    return np.clip(x, 0.0, 255.0)


_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def color_jitter_normalize(images: np.ndarray | list[np.ndarray], u: np.ndarray, strength: float,
                           normalization: str) -> np.ndarray:
    """`normalize(color_jitter(images, u, strength), normalization)` in one pass per image.

    Brightness b, contrast c (about the mean luma m) and saturation s (about the pixel's luma g)
    compose to one affine map per image: x → b·c·s·x + b·c·(1−s)·g + b·(1−c)·m, i.e. a 3×3 matrix
    and a bias; the normalisation folds into both, and the clip to [0, 255] becomes a clip to
    the normalised images of 0 and 255. Equal to the two-step form up to float32 rounding.
    Per image (the data stays in cache), with the per-channel bias and bounds tiled along a row:
    numpy broadcasts a length-3 vector over (N, 3) about ten times slower than over (H, W·3).
    `images` may be a list of equal-shape H×W×3 arrays (the crops, not stacked first).
    """
    if isinstance(images, list) and (not images or images[0].shape[-1] != 3):
        images = np.stack(images)
    if isinstance(images, np.ndarray) and (images.ndim != 4 or images.shape[-1] != 3):
        return normalize(color_jitter(images, u, strength), normalization)
    f = (1.0 + strength * (2.0 * u[:, U_JITTER:U_JITTER + 3] - 1.0)).astype(np.float32)
    b, c, s = f[:, 0], f[:, 1], f[:, 2]
    n, (h, w, _) = len(images), images[0].shape
    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION[normalization])
    scale = np.float32(1.0) / std
    lo, hi = np.tile(-mean * scale, w), np.tile((255.0 - mean) * scale, w)
    matrix = (b * c * s)[:, None, None] * np.eye(3, dtype=np.float32) + (
        (b * c * (1 - s))[:, None, None] * _LUMA[None, :, None])
    matrix *= scale
    ones = np.ones((1, h * w), np.float32)
    out = np.empty((n, h, w, 3), np.float32)
    for i in range(n):
        x = images[i].reshape(h * w, 3).astype(np.float32)
        luma_mean = float((ones @ x)[0] @ _LUMA) / (h * w)
        row = out[i].reshape(h, w * 3)
        np.matmul(x, matrix[i], out=row.reshape(h * w, 3))
        row += np.tile((b[i] * (1 - c[i]) * luma_mean - mean) * scale, w)
        np.maximum(row, lo, out=row)
        np.minimum(row, hi, out=row)
    return out


def _gray(x: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, (B, H, W, 1); a one-channel image is its own luma."""
    if x.shape[-1] == 1:
        return x
    return x @ np.asarray([[0.299], [0.587], [0.114]], np.float32)


def train(images: list, u: np.ndarray, size: int, channels: int, normalization: str,
          jitter: float) -> np.ndarray:
    """Recipe "imagenet_inception": the crops, then the colour jitter of strength `jitter` (0:
    none) fused with the normalisation."""
    crops = [imagenet_train_crop(im, ui, size, channels) for im, ui in zip(images, u)]
    if jitter > 0:
        return color_jitter_normalize(crops, u, jitter, normalization)
    return normalize(np.stack(crops), normalization)
