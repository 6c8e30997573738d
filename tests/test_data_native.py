"""The C++ resample of the MXNet training crop (igc_jax.data.native) against PIL, its definition.

`affine_bilinear` must equal Pillow's `Image.transform(..., AFFINE, resample=BILINEAR,
fillcolor)` bit for bit: random images of 1, 3 and 4 (RGBX) channels, tiny ones included, boxes
reaching past the image (fill), shrinking and enlarging, flipped or not; `mxnet_train_crop` on
encoded JPEGs equals the PIL path on the same decoded pixels; without the kernel (a failed build)
the crops come from PIL, with one log line.
"""
from __future__ import annotations

import io
import logging
import multiprocessing

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from igc_jax.data import native, randomness
from igc_jax.data.augment import mxnet
from igc_jax.data.jpeg import crop_source, from_pil, to_pil

pytestmark = pytest.mark.skipif(not native.available(),
                                reason=f"no C++ kernel here: {native.build_error()}")


def _pil(image, coefficients, size, fill, channels, flip):
    a0, a2, a4, a5 = coefficients
    out = from_pil(to_pil(image).transform((size[1], size[0]), Image.AFFINE,
                                           (a0, 0.0, a2, 0.0, a4, a5), resample=Image.BILINEAR,
                                           fillcolor=fill), channels)
    return out[:, ::-1] if flip else out


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), c=st.sampled_from([1, 3, 4]),
       h=st.integers(1, 48), w=st.integers(1, 48), oh=st.integers(1, 40), ow=st.integers(1, 40),
       stretch=st.tuples(st.floats(0.05, 4.0), st.floats(0.05, 4.0)),
       shift=st.tuples(st.floats(-0.6, 1.3), st.floats(-0.6, 1.3)),
       integral=st.booleans(), flip=st.booleans())
def test_affine_bilinear_equals_pil_bit_for_bit(seed, c, h, w, oh, ow, stretch, shift, integral,
                                                flip):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    channels = 1 if c == 1 else 3
    fill = int(rng.integers(256)) if channels == 1 else tuple(int(v) for v in
                                                              rng.integers(0, 256, 3))
    left, top = shift[0] * w, shift[1] * h
    if integral:                                     # pixel-aligned offsets: exact-edge cases
        left, top = float(round(left)), float(round(top))
    coefficients = (stretch[0] * w / ow, left, stretch[1] * h / oh, top)
    got = native.affine_bilinear(image, coefficients, (oh, ow), fill, channels, flip)
    np.testing.assert_array_equal(got, _pil(image, coefficients, (oh, ow), fill, channels, flip))


def _jpegs(n: int, seed: int = 0) -> list[bytes]:
    """Smooth gradients with noise at ImageNet-like sizes, JPEG quality 90."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(120, 420, 2)
        yy, xx = np.mgrid[:h, :w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
        image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("recipe", ["imagenet_mxnet", "imagenet_mxnet_igcv3"])
def test_mxnet_train_crop_equals_the_pil_path(channels, recipe):
    params = ({} if recipe == "imagenet_mxnet" else
              dict(max_aspect=mxnet.IGCV3_MAX_ASPECT, fill_rgb=mxnet.IGCV3_FILL,
                   min_img_size=mxnet.IGCV3_MIN_IMG_SIZE))
    max_aspect = params.get("max_aspect", mxnet.MXNET_MAX_ASPECT)
    fill_rgb = params.get("fill_rgb", mxnet.MXNET_FILL)
    min_img_size = params.get("min_img_size", mxnet.MXNET_MIN_IMG_SIZE)
    fill = fill_rgb if channels == 3 else round(float(np.mean(fill_rgb)))
    jpegs = _jpegs(6)
    u = randomness.example_uniforms(1, 0, np.arange(24), randomness.NUM_UNIFORMS)
    for i, ui in enumerate(u):
        for size in (224, 64):
            image = jpegs[i % len(jpegs)]
            pixels, box = crop_source(image, lambda h, w: mxnet.mxnet_crop_box(
                h, w, ui, size, max_aspect, min_img_size), size, channels, padded=True)
            expected = mxnet.pil_train_crop(pixels, box, ui, size, channels, fill)
            got = mxnet.mxnet_train_crop(image, ui, size, channels, **params)
            assert got.shape == (size, size, channels) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, expected)
            # Decoded pixels (3 channels, not RGBX) take the same path.
            np.testing.assert_array_equal(
                mxnet.mxnet_train_crop(pixels[..., :channels], ui, size, channels, **params),
                expected)


def test_a_failed_build_falls_back_to_pil_with_one_log_line(monkeypatch, caplog):
    jpegs = _jpegs(3, seed=2)
    u = randomness.example_uniforms(3, 0, np.arange(6), randomness.NUM_UNIFORMS)
    fast = [mxnet.mxnet_train_crop(jpegs[i % 3], ui, 224) for i, ui in enumerate(u)]

    def fail():
        raise native.NativeUnavailable("compiling augment_kernels.cc failed (test)")
    monkeypatch.setattr(native, "_build", fail)
    native._load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=native.__name__):
            assert not native.available()
            assert "failed (test)" in native.build_error()
            fallback = [mxnet.mxnet_train_crop(jpegs[i % 3], ui, 224) for i, ui in enumerate(u)]
        records = [r for r in caplog.records if r.name == native.__name__]
        assert len(records) == 1 and "PIL" in records[0].getMessage()
        with pytest.raises(native.NativeUnavailable):
            native.affine_bilinear(np.zeros((4, 4, 3), np.uint8), (1, 0, 1, 0), (2, 2),
                                   (0, 0, 0), 3)
    finally:
        monkeypatch.undo()
        native._load.cache_clear()
    for a, b in zip(fast, fallback):
        np.testing.assert_array_equal(a, b)


def _build_in_worker(_) -> str:
    return native.build_error() or "ok"


def test_spawned_workers_build_and_load_one_cached_library(tmp_path, monkeypatch):
    """grain's workers are spawned processes: each loads the kernel, building it at most once
    per process into a shared cache without tearing it (write beside, then rename)."""
    monkeypatch.setenv("IGC_JAX_NATIVE_CACHE", str(tmp_path))      # inherited by the workers
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        assert pool.map(_build_in_worker, range(2)) == ["ok", "ok"]
    assert len(list(tmp_path.glob("augment_kernels-*.so"))) == 1
    assert not list(tmp_path.glob("*.so.tmp*")) and len(list(tmp_path.iterdir())) == 1
