"""Per-channel normalisation constants and the one normalisation every batch ends with.

The constants are keyed by `config.dataset.normalization`; they also give the channels encoded
images are decoded to and the CIFAR padding colour. uint8 batches are normalised by one table
lookup per pixel.
"""
from __future__ import annotations

import cv2
import numpy as np

# The pipeline runs one image per thread or worker process; OpenCV's own thread pool on top of
# that would only oversubscribe the cores (every OpenCV call of the preprocessing, here and in
# `jpeg` and `augment`, runs after this module is imported: it ends every batch).
cv2.setNumThreads(1)

# Per-channel mean and std on the 0–255 scale, keyed by `config.dataset.normalization`.
# cifar10 / cifar100 / svhn: spec §4. imagenet: the usual ImageNet statistics
# (0.485, 0.456, 0.406) and (0.229, 0.224, 0.225) times 255. digits: the train split of
# scikit-learn's digits (`sources.DIGITS_TRAIN`) scaled from 0–16 to 0–255 (`sources.load_digits`).
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((125.307, 122.950, 113.865), (62.993, 62.089, 66.705)),
    "cifar100": ((129.304, 124.070, 112.434), (68.170, 65.392, 70.418)),
    "svhn": ((111.609, 113.161, 120.565), (50.498, 51.259, 50.244)),
    "imagenet": ((123.675, 116.280, 103.530), (58.395, 57.120, 57.375)),
    "digits": ((77.973,), (95.735,)),
    # The authors' train_imagenet.py default, for their released MXNet weights
    # (igc_jax.convert_mxnet).
    "imagenet_igc_mxnet": ((123.370, 112.757, 99.406), (68.998, 66.093, 68.292)),
    # Mean subtraction only (std 1): the IGCV3 authors' common/data.py default `--rgb-mean`, and
    # CIFAR-10's mean for the CIFAR IGCV3 config (spec §7).
    "imagenet_igcv3_mxnet": ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0)),
    "cifar10_mean_only": ((125.307, 122.950, 113.865), (1.0, 1.0, 1.0)),
}


def normalize(images: np.ndarray, normalization: str) -> np.ndarray:
    """uint8 or float (…, C) on the 0–255 scale → float32 (x − mean) / std per channel.

    uint8 images go through a 256-entry table per channel (OpenCV's LUT), the same float32
    arithmetic done once per value instead of once per pixel."""
    if images.dtype == np.uint8 and images.ndim >= 3 and images.size:
        c = images.shape[-1]
        table = _normalized(np.arange(256, dtype=np.float32)[:, None].repeat(c, 1), normalization)
        flat = images.reshape(-1, images.shape[-2], c)
        return cv2.LUT(flat, table.reshape(1, 256, c)).reshape(images.shape)
    return _normalized(images.astype(np.float32), normalization)


def _normalized(x: np.ndarray, normalization: str) -> np.ndarray:
    """float32 x (…, C), normalised in place."""
    mean, std = NORMALIZATION[normalization]
    x -= np.asarray(mean, np.float32)
    x *= np.float32(1.0) / np.asarray(std, np.float32)
    return x


def fill_colour(normalization: str) -> np.ndarray:
    """The official padding colour: the dataset's mean colour rounded to integers (MXNet
    `ImageRecordIter` `fill_value_r/g/b = round(mean_rgb)` in the authors' scripts), about 0 once
    normalised."""
    return np.round(np.asarray(NORMALIZATION[normalization][0])).astype(np.uint8)
