"""The authors' ImageNet recipes: MXNet's ImageRecordIter as their train_imagenet.py drives it,
one affine resample per crop (the scale/aspect resize and the canvas crop composed), a random
flip, then OpenCV's own 8-bit HLS conversion for the colour jitter (the authors' library call).
"imagenet_mxnet" is IGCV1's (spec §4), "imagenet_mxnet_igcv3" IGCV3's (spec §7): the same scale
range and HSL jitter, no aspect-ratio jitter (`set_data_aug_level(2)`), fill value 127 and no
minimum canvas size.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from igc_jax.data import native
from igc_jax.data.augment.imagenet import maybe_flip
from igc_jax.data.jpeg import Encoded, crop_source, from_pil, to_pil
from igc_jax.data.normalization import normalize
from igc_jax.data.randomness import U_FLIP, U_JITTER, U_POS

# The authors' train_imagenet.py, through MXNet's ImageRecordIter (spec §4): images stored with
# the short side at 480; a random scale s in MXNET_SCALE and aspect r in 1 ± MXNET_MAX_ASPECT give
# horizontal and vertical factors hs = 2s/(1+r), ws = r·hs; the scaled image is centred on a
# canvas of max(256, s·W) × max(256, s·H) (fill colour where it does not reach); a random
# size×size crop of the canvas; a flip; integer offsets in ±MXNET_HSL added to OpenCV's 8-bit
# H, S, L channels (clipped, not wrapped).
MXNET_STORED_SHORT_SIDE = 480
MXNET_SCALE = (0.533, 1.0)
MXNET_MIN_IMG_SIZE = 256
MXNET_MAX_ASPECT = 0.25
MXNET_HSL = (36, 50, 50)            # random_h, random_s, random_l
MXNET_FILL = (123, 113, 99)         # fill_value_r/g/b
# IGCV3's train_imagenet.py (common/data.py): data-augmentation level 2 (max_random_aspect_ratio 0),
# `fill_value=127`, min_img_size left at ImageRecordIter's default 0.
IGCV3_MAX_ASPECT = 0.0
IGCV3_FILL = (127, 127, 127)
IGCV3_MIN_IMG_SIZE = 0


def mxnet_crop_box(height: int, width: int, u: np.ndarray, size: int,
                   max_aspect: float = MXNET_MAX_ASPECT,
                   min_img_size: int = MXNET_MIN_IMG_SIZE) -> tuple[float, float, float, float]:
    """(top, left, box_h, box_w) in the original image of the MXNet size×size training crop.

    The 480 short-side storage and the random scale/aspect resize compose into one scale per
    axis, so the crop is one resample of this box (which may reach past the image: fill there).
    Draws: u[0] scale, u[1] aspect, u[U_POS:U_POS+2] the crop's integer offset on the canvas.
    """
    f = MXNET_STORED_SHORT_SIDE / min(height, width)
    rows, cols = height * f, width * f
    s = MXNET_SCALE[0] + u[0] * (MXNET_SCALE[1] - MXNET_SCALE[0])
    r = 1.0 + max_aspect * (2.0 * u[1] - 1.0)
    hs = 2.0 * s / (1.0 + r)
    ws = r * hs
    canvas_w, canvas_h = max(min_img_size, s * cols), max(min_img_size, s * rows)
    tx, ty = (canvas_w - hs * cols) / 2, (canvas_h - ws * rows) / 2
    y0 = math.floor(u[U_POS] * (int(canvas_h) - size + 1))
    x0 = math.floor(u[U_POS + 1] * (int(canvas_w) - size + 1))
    return (y0 - ty) / (ws * f), (x0 - tx) / (hs * f), size / (ws * f), size / (hs * f)


def mxnet_train_crop(image: Encoded, u: np.ndarray, size: int, channels: int = 3,
                     max_aspect: float = MXNET_MAX_ASPECT,
                     fill_rgb: tuple[int, int, int] = MXNET_FILL,
                     min_img_size: int = MXNET_MIN_IMG_SIZE) -> np.ndarray:
    """uint8 H×W×C (or its encoded file) → the MXNet training crop, size×size, maybe flipped.

    One bilinear affine resample of `mxnet_crop_box` (no antialiasing, as OpenCV's warpAffine),
    `fill_rgb` outside the image; an encoded image is decoded at the largest DCT reduction that
    keeps the box at least size×size. PIL's `Image.transform` defines the resample; the C++
    kernel of igc_jax.data.native computes it bit for bit (PIL when the kernel is unavailable).
    """
    pixels, (top, left, bh, bw) = crop_source(
        image, lambda h, w: mxnet_crop_box(h, w, u, size, max_aspect, min_img_size), size,
        channels, padded=True)
    fill = fill_rgb if channels == 3 else round(float(np.mean(fill_rgb)))
    if pixels.shape[-1] in ((1,) if channels == 1 else (3, 4)) and native.available():
        return native.affine_bilinear(pixels, (bw / size, left, bh / size, top), (size, size),
                                      fill, channels, flip=u[U_FLIP] < 0.5)
    return pil_train_crop(pixels, (top, left, bh, bw), u, size, channels, fill)


def pil_train_crop(pixels: np.ndarray, box: tuple[float, float, float, float], u: np.ndarray,
                   size: int, channels: int, fill) -> np.ndarray:
    """`mxnet_train_crop`'s resample and flip of decoded pixels by PIL (the definition)."""
    top, left, bh, bw = box
    out = to_pil(pixels).transform(
        (size, size), Image.AFFINE, (bw / size, 0.0, left, 0.0, bh / size, top),
        resample=Image.BILINEAR, fillcolor=fill)
    return maybe_flip(from_pil(out, channels), u)


def mxnet_hsl_offsets(u: np.ndarray) -> np.ndarray:
    """(B, 3) integer (h, s, l) offsets: int(u·2R − R) per channel, truncated toward zero (C++)."""
    r = np.asarray(MXNET_HSL, np.float64)
    return np.trunc(u[:, U_JITTER:U_JITTER + 3] * 2 * r - r).astype(np.int32)


def mxnet_hsl_jitter(images: np.ndarray, u: np.ndarray) -> np.ndarray:
    """uint8 B×H×W×3 → uint8 with each image's HSL offsets added in OpenCV's 8-bit HLS, clipped to
    [0, 180] for H and [0, 255] for L and S (MXNet clips the hue too, it does not wrap it): the
    authors' `cv::cvtColor` to HLS and back, the offsets as one 256-entry table per channel."""
    offsets = mxnet_hsl_offsets(u)
    out = images.copy()
    for i, (dh, ds, dl) in enumerate(offsets):
        if dh or ds or dl:
            hls = cv2.cvtColor(images[i], cv2.COLOR_RGB2HLS)
            out[i] = cv2.cvtColor(cv2.LUT(hls, _hls_offset_table(dh, dl, ds)), cv2.COLOR_HLS2RGB)
    return out


_HLS_VALUES = np.arange(256, dtype=np.int32)[:, None]
_HLS_LIMITS = np.asarray([180, 255, 255], np.int32)


def _hls_offset_table(dh: int, dl: int, ds: int) -> np.ndarray:
    """(1, 256, 3) uint8: value v of channel (H, L, S) → v + offset, clipped to [0, limit]."""
    table = np.clip(_HLS_VALUES + np.asarray([dh, dl, ds], np.int32), 0, _HLS_LIMITS)
    return table.astype(np.uint8)[None]


def train(images: list, u: np.ndarray, size: int, channels: int, normalization: str,
          jitter: float, max_aspect: float = MXNET_MAX_ASPECT,
          fill_rgb: tuple[int, int, int] = MXNET_FILL,
          min_img_size: int = MXNET_MIN_IMG_SIZE) -> np.ndarray:
    """Recipe "imagenet_mxnet": the crops, the HSL jitter (3 channels; its strength is MXNET_HSL,
    `jitter` does not apply), the normalisation."""
    crops = np.stack([mxnet_train_crop(im, ui, size, channels, max_aspect, fill_rgb, min_img_size)
                      for im, ui in zip(images, u)])
    x = mxnet_hsl_jitter(crops, u) if crops.shape[-1] == 3 else crops
    return normalize(x, normalization)


def train_igcv3(images: list, u: np.ndarray, size: int, channels: int, normalization: str,
                jitter: float) -> np.ndarray:
    """Recipe "imagenet_mxnet_igcv3": `train` with IGCV3's parameters (no aspect jitter, fill
    127, no minimum canvas)."""
    return train(images, u, size, channels, normalization, jitter, IGCV3_MAX_ASPECT, IGCV3_FILL,
                 IGCV3_MIN_IMG_SIZE)
