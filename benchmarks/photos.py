"""Real photographs at ImageNet-like sizes, for the JPEG benchmark and tests (no download).

scikit-learn ships two 427×640 photographs (`load_sample_images`); each sample here is a random
window of one of them (60–100% of its sides) resized to 300–427 × 350–640 and re-encoded at JPEG
quality 90, which is the size and quality range of ImageNet's training JPEGs (smaller on
average: about 50 KB against ImageNet's ~110 KB).
"""
from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=4)
def photo_jpegs(n: int, quality: int = 90, seed: int = 0) -> tuple[bytes, ...]:
    """n JPEG files (bytes) of real photographs, a pure function of (n, quality, seed)."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = images[i % len(images)]
        h, w = int(rng.integers(300, 428)), int(rng.integers(350, 641))
        scale = rng.uniform(0.6, 1.0)
        ch, cw = int(src.shape[0] * scale), int(src.shape[1] * scale)
        top = int(rng.integers(0, src.shape[0] - ch + 1))
        left = int(rng.integers(0, src.shape[1] - cw + 1))
        window = Image.fromarray(src[top:top + ch, left:left + cw]).resize((w, h), Image.BILINEAR)
        buf = io.BytesIO()
        window.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return tuple(out)


def decode_full(jpeg: bytes) -> np.ndarray:
    """The full-resolution decode of today's path (PIL, RGB)."""
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))
