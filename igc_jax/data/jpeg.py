"""Encoded ImageNet images: decoding at a reduced DCT scale, and one resize of a box of pixels.

ImageNet images may arrive as encoded JPEG bytes (TFDS records read without TFDS's decoding): the
crop box is drawn from the stored size (read from the JPEG header, so the same box as for the
decoded image), the JPEG is decoded by libjpeg-turbo (simplejpeg) at the smallest power-of-two DCT
scale (1, 1/2, 1/4, 1/8) at which the box still has at least `size` pixels on each side, and only
the box (plus the resampling filter's margin) is resized. The result stays within a PSNR bound of
the full-resolution path (tests/test_data_jpeg.py); anything simplejpeg cannot decode (CMYK, PNG)
goes through PIL at full resolution. Decoded images (uint8 H×W×C) take the same crop and resize.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Union

import cv2
import numpy as np
import simplejpeg
from PIL import Image

# An ImageNet-style image: decoded uint8 H×W×C, or the encoded file (JPEG, or anything PIL reads).
Encoded = Union[bytes, np.ndarray]
MAX_DCT_REDUCTION = 8              # libjpeg-turbo's scaled IDCT: 1/1, 1/2, 1/4, 1/8


def to_pil(image: np.ndarray) -> Image.Image:
    """A PIL image of H×W×C uint8; H×W×4 (RGB and a padding byte, PIL's own layout for RGB) is
    shared, not converted."""
    if image.shape[-1] == 4:
        h, w = image.shape[:2]
        return Image.frombuffer("RGBX", (w, h), np.ascontiguousarray(image), "raw", "RGBX", 0, 1)
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def from_pil(image: Image.Image, channels: int) -> np.ndarray:
    """uint8 H×W×C of a PIL image (RGBX: the padding byte dropped)."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 4:             # RGBX
        return cv2.cvtColor(a, cv2.COLOR_RGBA2RGB)
    return a[..., None] if channels == 1 else a


def is_encoded(image: Encoded) -> bool:
    """Whether `image` is an encoded file (bytes, a 1-D uint8 array, or a 0-d object array of
    bytes) rather than decoded pixels."""
    return isinstance(image, (bytes, bytearray, memoryview)) or (
        isinstance(image, np.ndarray) and image.ndim == 1 and image.dtype == np.uint8) or (
        isinstance(image, np.ndarray) and image.dtype == object)


def _bytes(image: Encoded) -> bytes:
    if isinstance(image, np.ndarray) and image.dtype == object:
        image = image.item()
    return bytes(image) if not isinstance(image, bytes) else image


def encoded_size(image: Encoded) -> tuple[int, int]:
    """(height, width) of the stored image, from the JPEG header (or PIL's for other formats)."""
    data = _bytes(image)
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        return h, w
    except ValueError:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width


def dct_reduction(box_h: float, box_w: float, size: int) -> int:
    """The largest k in 1, 2, 4, 8 with box_h/k and box_w/k both at least `size` pixels: the
    reduction at which a box still covers a size×size output (no upsampling that full resolution
    would not also do)."""
    k = 1
    while k < MAX_DCT_REDUCTION and min(box_h, box_w) >= 2 * k * size:
        k *= 2
    return k


def decode(image: Encoded, channels: int, reduction: int = 1, padded: bool = False) -> np.ndarray:
    """uint8 H'×W'×C of an encoded image, H' = ceil(H / reduction) (libjpeg-turbo's scaled
    decode); non-JPEG or CMYK files go through PIL at full resolution. `padded` JPEGs of 3
    channels come as H'×W'×4, RGB and a padding byte (for `to_pil`, which then shares them)."""
    data = _bytes(image)
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        out = simplejpeg.decode_jpeg(
            data, colorspace="GRAY" if channels == 1 else ("RGBX" if padded else "RGB"),
            min_height=-(-h // reduction), min_width=-(-w // reduction))
        return out if out.ndim == 3 else out[..., None]
    except ValueError:
        with Image.open(io.BytesIO(data)) as im:
            return from_pil(im.convert("L" if channels == 1 else "RGB"), channels)


def resize_box(image: np.ndarray, box: tuple[float, float, float, float],
               size: int) -> np.ndarray:
    """The (x0, y0, x1, y1) box of `image` (float pixels) resized (bilinear) to size×size.

    Only the box and the filter's support around it go to PIL (crop before resize); PIL's
    antialiased bilinear filter reaches max(1, scale) pixels beyond the box, so a margin of
    scale + 2 gives the result of resizing with the box on the whole image (to ±1: PIL's
    fixed-point weights depend on the box's offset).
    """
    x0, y0, x1, y1 = box
    margin = 2 + math.ceil(max(x1 - x0, y1 - y0) / size)
    top, left = max(int(y0) - margin, 0), max(int(x0) - margin, 0)
    bottom = min(math.ceil(y1) + margin, image.shape[0])
    right = min(math.ceil(x1) + margin, image.shape[1])
    sub = to_pil(np.ascontiguousarray(image[top:bottom, left:right]))
    out = sub.resize((size, size), Image.BILINEAR, box=(x0 - left, y0 - top, x1 - left, y1 - top))
    return from_pil(out, image.shape[-1])


def crop_source(image: Encoded, box_of: Callable[[int, int], tuple], size: int, channels: int,
                padded: bool = False) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """(pixels, (top, left, box_h, box_w) in those pixels) for a crop box `box_of(h, w)` drawn
    from the stored size: an encoded image is decoded (`padded` as `decode`) at the largest DCT
    reduction that keeps the box at least size×size, and the box is scaled to the decoded
    pixels."""
    if not is_encoded(image):
        return image, box_of(image.shape[0], image.shape[1])
    h, w = encoded_size(image)
    top, left, bh, bw = box_of(h, w)
    pixels = decode(image, channels, dct_reduction(bh, bw, size), padded)
    sy, sx = pixels.shape[0] / h, pixels.shape[1] / w
    return pixels, (top * sy, left * sx, bh * sy, bw * sx)
