"""What the ImageNet recipes share: the deterministic eval crop (short side resized to
size·256/224, then the centre size×size crop) and the random flip of a train crop.

Crops and resizes go through PIL one image at a time (the images differ in size); an encoded image
is decoded by `jpeg` at the smallest DCT scale the crop allows.
"""
from __future__ import annotations

import cv2
import numpy as np

from igc_jax.data.jpeg import Encoded, decode, dct_reduction, encoded_size, is_encoded, resize_box
from igc_jax.data.randomness import U_FLIP

EVAL_RESIZE = 256.0 / 224.0        # short side before the centre crop, relative to image_size


def maybe_flip(image: np.ndarray, u: np.ndarray) -> np.ndarray:
    """H×W×C mirrored left-right when u[U_FLIP] < 0.5 (OpenCV's flip: a contiguous copy, several
    times faster than numpy copying the reversed view)."""
    if u[U_FLIP] >= 0.5:
        return image
    return cv2.flip(image, 1).reshape(image.shape)


def eval_resize_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(new_h, new_w): the short side resized to round(size·256/224), the aspect kept."""
    short = round(size * EVAL_RESIZE)
    return (short, max(round(w * short / h), short)) if h <= w else (
        max(round(h * short / w), short), short)


def imagenet_eval_crop(image: Encoded, size: int, channels: int = 3) -> np.ndarray:
    """Resize the short side to round(size·256/224) (bilinear), then the centre size×size crop.

    Done as one resize of the centre box (the crop before the resize, same scale and sample
    positions); an encoded image is decoded at the largest DCT reduction that keeps the short side
    at least round(size·256/224).
    """
    if is_encoded(image):
        h, w = encoded_size(image)
        short = round(size * EVAL_RESIZE)
        pixels = decode(image, channels, dct_reduction(min(h, w), min(h, w), short))
    else:
        pixels = image
        h, w = image.shape[:2]
    new_h, new_w = eval_resize_shape(h, w, size)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    sy, sx = pixels.shape[0] / new_h, pixels.shape[1] / new_w
    return resize_box(pixels, (left * sx, top * sy, (left + size) * sx, (top + size) * sy), size)
