"""C++ kernel for the MXNet recipe's training crop (augment_kernels.cc), built on first use.

`affine_bilinear` is Pillow's `Image.transform(..., AFFINE, resample=BILINEAR, fillcolor)` for an
axis-aligned affine, bit for bit (the same double-precision arithmetic as Pillow's Geometry.c,
compiled without fused multiply-adds), reading the decoded pixels in place (RGB, RGBX or grey)
and writing H×W×C directly, flipped if asked: no PIL image in or out. It is a plain C function
loaded with ctypes, compiled with the system's C++ compiler (`$CXX`, else g++) the first time it
is needed and cached in `$IGC_JAX_NATIVE_CACHE` (default ~/.cache/igc_jax/native) under a name
that hashes the source, compiler, flags and CPU; the library is written beside its final name and
renamed, so grain's worker processes building it at once never load a half-written file.
`available()` is False (with `build_error()` saying why, logged once) when that fails, and the
callers then use PIL, with identical results.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import pathlib

import numpy as np

from igc_jax.igc.native import build
from igc_jax.igc.native.build import NativeUnavailable

log = logging.getLogger(__name__)

SOURCE = pathlib.Path(__file__).with_name("augment_kernels.cc")
# -ffp-contract=off: `a + (b - a) * d` must round twice, as in Pillow's wheels (no FMA).
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off",
         "-fno-fast-math")


def _build() -> pathlib.Path:
    """The kernel's library (cached, `igc_jax.igc.native.build`)."""
    return build.build(SOURCE, FLAGS)


@functools.cache
def _load() -> ctypes.CDLL | str:
    """The loaded library, or why it is not there (logged once per process)."""
    try:
        lib = ctypes.CDLL(str(_build()))
        fn = lib.igc_affine_bilinear
    except (NativeUnavailable, OSError, AttributeError) as e:
        log.warning("MXNet training crops use PIL's resample (the C++ kernel is unavailable: %s)",
                    e)
        return str(e)
    i64, dbl, ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
    fn.argtypes = [ptr, i64, i64, i64, i64, i64, dbl, dbl, dbl, dbl, ptr, ptr, i64, i64,
                   ctypes.c_int]
    fn.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the kernel is built and loaded (builds it on the first call)."""
    return not isinstance(_load(), str)


def build_error() -> str | None:
    """Why `available()` is False, or None."""
    lib = _load()
    return lib if isinstance(lib, str) else None


def affine_bilinear(image: np.ndarray, coefficients: tuple[float, float, float, float],
                    size: tuple[int, int], fill, channels: int, flip: bool = False) -> np.ndarray:
    """uint8 out_h×out_w×channels: Pillow's bilinear AFFINE transform of H×W×C `image` (C = 1, 3
    or 4 with RGB first, as `to_pil` reads it) with data (a0, 0, a2, 0, a4, a5) given as
    `coefficients` = (a0, a2, a4, a5), `fill` (an int or an RGB tuple) where the source point
    falls outside, mirrored left-right when `flip`. Raises NativeUnavailable without the kernel."""
    lib = _load()
    if isinstance(lib, str):
        raise NativeUnavailable(lib)
    if image.ndim != 3 or image.shape[2] < channels or (channels == 1) != (image.shape[2] == 1):
        raise ValueError(f"affine_bilinear: a {image.shape} image for {channels} channels")
    image = np.ascontiguousarray(image, np.uint8)
    out_h, out_w = size
    out = np.empty((out_h, out_w, channels), np.uint8)
    fill_bytes = np.asarray(fill if channels == 3 else [fill], np.uint8).reshape(-1)
    a0, a2, a4, a5 = coefficients
    rc = lib.igc_affine_bilinear(
        image.ctypes.data, image.shape[0], image.shape[1], image.strides[0], image.strides[1],
        channels, a0, a2, a4, a5, fill_bytes.ctypes.data, out.ctypes.data, out_h, out_w,
        int(bool(flip)))
    if rc:
        raise ValueError(f"igc_affine_bilinear: unsupported arguments (code {rc})")
    return out
