"""Image preprocessing of spec §4, as pure functions of the images and per-example uniforms.

All randomness enters as a (B, randomness.NUM_UNIFORMS) array of uniforms
(`randomness.example_uniforms`, a hash of seed, epoch and example index, columns as laid out there).

CIFAR-size work is vectorised over the batch (one gather for pad + crop + flip); ImageNet crops
and resizes go through PIL one image at a time (the images differ in size), then the colour jitter
and normalisation run on the whole batch, as one per-image 3×3 colour matrix (Inception) or as
OpenCV's own 8-bit HLS conversion (MXNet, the authors' library call), then `normalization`.
ImageNet images may arrive encoded: `jpeg` decodes each at the smallest DCT scale its crop box
allows.
"""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
from PIL import Image

from igc_jax.data.jpeg import Encoded, crop_source, decode, dct_reduction, encoded_size
from igc_jax.data.jpeg import from_pil, is_encoded, resize_box, to_pil
from igc_jax.data.normalization import NORMALIZATION, fill_colour, normalize
from igc_jax.data.randomness import CROP_ATTEMPTS, U_FLIP, U_JITTER, U_POS

# Training augmentations, by `config.dataset.augment`: "cifar" pads with the mean colour (official
# code), "cifar_zero_pad" with black; "imagenet_mxnet" is the authors' ImageNet augmentation
# (MXNet scale/aspect/HSL, below), "imagenet_inception" the random-area crop + colour jitter.
IMAGENET_AUGMENTATIONS = ("imagenet_mxnet", "imagenet_inception")
AUGMENTATIONS = ("cifar", "cifar_zero_pad", *IMAGENET_AUGMENTATIONS, "none")

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

CIFAR_PAD = 4
CROP_SCALE = (0.08, 1.0)           # area fraction of the random crop (Inception / ResNet recipe)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
EVAL_RESIZE = 256.0 / 224.0        # short side before the centre crop, relative to image_size
DEFAULT_COLOR_JITTER = 0.4         # brightness, contrast, saturation factors in [1-s, 1+s]


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
    return _maybe_flip(resize_box(pixels, (left, top, left + cw, top + ch), size), u)


def mxnet_crop_box(height: int, width: int, u: np.ndarray,
                   size: int) -> tuple[float, float, float, float]:
    """(top, left, box_h, box_w) in the original image of the MXNet size×size training crop.

    The 480 short-side storage and the random scale/aspect resize compose into one scale per
    axis, so the crop is one resample of this box (which may reach past the image: fill there).
    Draws: u[0] scale, u[1] aspect, u[U_POS:U_POS+2] the crop's integer offset on the canvas.
    """
    f = MXNET_STORED_SHORT_SIDE / min(height, width)
    rows, cols = height * f, width * f
    s = MXNET_SCALE[0] + u[0] * (MXNET_SCALE[1] - MXNET_SCALE[0])
    r = 1.0 + MXNET_MAX_ASPECT * (2.0 * u[1] - 1.0)
    hs = 2.0 * s / (1.0 + r)
    ws = r * hs
    canvas_w, canvas_h = max(MXNET_MIN_IMG_SIZE, s * cols), max(MXNET_MIN_IMG_SIZE, s * rows)
    tx, ty = (canvas_w - hs * cols) / 2, (canvas_h - ws * rows) / 2
    y0 = math.floor(u[U_POS] * (int(canvas_h) - size + 1))
    x0 = math.floor(u[U_POS + 1] * (int(canvas_w) - size + 1))
    return (y0 - ty) / (ws * f), (x0 - tx) / (hs * f), size / (ws * f), size / (hs * f)


def mxnet_train_crop(image: Encoded, u: np.ndarray, size: int, channels: int = 3) -> np.ndarray:
    """uint8 H×W×C (or its encoded file) → the MXNet training crop, size×size, maybe flipped.

    One bilinear affine resample of `mxnet_crop_box` (no antialiasing, as OpenCV's warpAffine),
    MXNET_FILL outside the image; an encoded image is decoded at the largest DCT reduction that
    keeps the box at least size×size.
    """
    pixels, (top, left, bh, bw) = crop_source(
        image, lambda h, w: mxnet_crop_box(h, w, u, size), size, channels, padded=True)
    fill = MXNET_FILL if channels == 3 else round(float(np.mean(MXNET_FILL)))
    out = to_pil(pixels).transform(
        (size, size), Image.AFFINE, (bw / size, 0.0, left, 0.0, bh / size, top),
        resample=Image.BILINEAR, fillcolor=fill)
    return _maybe_flip(from_pil(out, channels), u)


def _maybe_flip(image: np.ndarray, u: np.ndarray) -> np.ndarray:
    """H×W×C mirrored left-right when u[U_FLIP] < 0.5 (OpenCV's flip: a contiguous copy, several
    times faster than numpy copying the reversed view)."""
    if u[U_FLIP] >= 0.5:
        return image
    return cv2.flip(image, 1).reshape(image.shape)


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

    def train(self, images: np.ndarray | list[np.ndarray], u: np.ndarray) -> np.ndarray:
        """A batch of uint8 images (array, or list for ImageNet) → float32 normalised B×S×S×C."""
        if self.augment == "cifar":
            x = pad_crop_flip(images, u, fill=fill_colour(self.normalization))
        elif self.augment == "cifar_zero_pad":
            x = pad_crop_flip(images, u)
        elif self.augment == "imagenet_mxnet":
            crops = np.stack([mxnet_train_crop(im, ui, self.image_size, self.channels)
                              for im, ui in zip(images, u)])
            x = mxnet_hsl_jitter(crops, u) if crops.shape[-1] == 3 else crops
        elif self.augment == "imagenet_inception":
            crops = [imagenet_train_crop(im, ui, self.image_size, self.channels)
                     for im, ui in zip(images, u)]
            if self.color_jitter > 0:
                return color_jitter_normalize(crops, u, self.color_jitter, self.normalization)
            x = np.stack(crops)
        else:
            x = images
        return normalize(x, self.normalization)

    def eval(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Deterministic: ImageNet short-side resize + centre crop, else the images as stored."""
        if self.augment in IMAGENET_AUGMENTATIONS:
            images = np.stack([imagenet_eval_crop(im, self.image_size, self.channels)
                               for im in images])
        return normalize(images, self.normalization)
