"""Augmentation and normalisation properties (spec §4), and the counter-based randomness."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from igc_jax.data.augment import (AUGMENTATIONS, IMAGENET_AUGMENTATIONS, RECIPES, cifar,
                                  imagenet, inception, mxnet)
from igc_jax.data.normalization import NORMALIZATION, fill_colour, normalize
from igc_jax.data.preprocess import Preprocessing
from igc_jax.data import randomness
from igc_jax.data.randomness import U_FLIP, U_JITTER, U_POS

PAD = cifar.CIFAR_PAD


def _uniforms(n: int, seed: int = 0) -> np.ndarray:
    return randomness.example_uniforms(seed, 0, np.arange(n), randomness.NUM_UNIFORMS)


def _with(u: np.ndarray, **columns: float) -> np.ndarray:
    """u with the crop position / flip columns set (values in [0, 1))."""
    u = u.copy()
    names = {"dy": U_POS, "dx": U_POS + 1, "flip": U_FLIP}
    for name, value in columns.items():
        u[:, names[name]] = value
    return u


def test_cifar_crops_are_windows_of_the_padded_image():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (200, 32, 32, 3), dtype=np.uint8)    # no zeros: padding shows
    u = _uniforms(200)
    out = cifar.pad_crop_flip(images, u)
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    offsets = set()
    for i in range(len(images)):
        matches = [(dy, dx, f) for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1)
                   for f in (False, True)
                   if np.array_equal(out[i], (lambda w: w[:, ::-1] if f else w)(
                       padded[i, dy:dy + 32, dx:dx + 32]))]
        assert len(matches) == 1           # exactly one window inside the padded image
        offsets.add(matches[0])
    # Every offset and both flips occur: the crop ranges over the whole padded image.
    assert {dy for dy, _, _ in offsets} == set(range(2 * PAD + 1))
    assert {dx for _, dx, _ in offsets} == set(range(2 * PAD + 1))
    assert {f for _, _, f in offsets} == {False, True}


def test_flip_is_exact_and_centre_crop_is_identity():
    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    centre = (PAD + 0.5) / (2 * PAD + 1)        # maps to offset PAD
    u = _with(_uniforms(5), dy=centre, dx=centre, flip=0.9)
    assert np.array_equal(cifar.pad_crop_flip(images, u), images)
    assert np.array_equal(cifar.pad_crop_flip(images, _with(u, flip=0.1)), images[:, :, ::-1])
    top_left = cifar.pad_crop_flip(images, _with(u, dy=0.0, dx=0.0))
    assert np.all(top_left[:, :PAD] == 0) and np.all(top_left[:, :, :PAD] == 0)
    assert np.array_equal(top_left[:, PAD:, PAD:], images[:, :-PAD, :-PAD])


# The authors' train_model.py: ImageRecordIter(pad=4, fill_value=round(mean_rgb)) (spec §4).
OFFICIAL_CIFAR_FILL = {"cifar10": (125, 123, 114), "cifar100": (129, 124, 112)}


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_CIFAR_FILL))
def test_cifar_border_is_the_official_mean_colour(dataset):
    """The default 'cifar' augmentation fills the border with the rounded mean colour; after
    normalisation a border pixel is within 0.5/std of zero. 'cifar_zero_pad' keeps black."""
    images = np.full((3, 32, 32, 3), 7, np.uint8)
    u = _with(_uniforms(3), dy=0.0, dx=0.0, flip=0.9)            # offset 0: PAD-wide border
    prep = Preprocessing(augment="cifar", normalization=dataset, image_size=32)
    raw = cifar.pad_crop_flip(images, u, fill=fill_colour(dataset))
    assert np.all(raw[:, :PAD] == OFFICIAL_CIFAR_FILL[dataset])
    assert np.all(raw[:, :, :PAD] == OFFICIAL_CIFAR_FILL[dataset])
    assert np.all(raw[:, PAD:, PAD:] == 7)
    x = prep.train(images, u)
    std = np.asarray(NORMALIZATION[dataset][1])
    assert np.all(np.abs(x[:, :PAD]) <= 0.5 / std + 1e-6)
    zero = Preprocessing(augment="cifar_zero_pad", normalization=dataset, image_size=32)
    black = -np.asarray(NORMALIZATION[dataset][0]) / std
    np.testing.assert_allclose(zero.train(images, u)[:, :PAD], np.broadcast_to(
        black, (3, PAD, 32, 3)), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(NORMALIZATION))
def test_normalising_a_constant_image(name):
    mean, std = NORMALIZATION[name]
    for value in (0, 128, 255):
        image = np.full((2, 4, 4, len(mean)), value, np.uint8)
        out = normalize(image, name)
        assert out.dtype == np.float32
        expected = (value - np.asarray(mean)) / np.asarray(std)
        np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-6, atol=1e-6)


def test_spec_constants():
    assert NORMALIZATION["cifar10"] == ((125.307, 122.950, 113.865), (62.993, 62.089, 66.705))
    assert NORMALIZATION["cifar100"] == ((129.304, 124.070, 112.434), (68.170, 65.392, 70.418))
    assert NORMALIZATION["svhn"] == ((111.609, 113.161, 120.565), (50.498, 51.259, 50.244))


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 600), w=st.integers(1, 600), seed=st.integers(0, 2**32 - 1))
def test_random_crop_box_inside_the_image(h, w, seed):
    u = randomness.example_uniforms(seed, 0, [0], randomness.NUM_UNIFORMS)[0]
    top, left, ch, cw = inception.random_crop_box(h, w, u)
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0


def test_random_crop_box_scale_and_aspect():
    u = randomness.example_uniforms(3, 0, np.arange(2000), randomness.NUM_UNIFORMS)
    boxes = np.array([inception.random_crop_box(375, 500, ui) for ui in u])
    area = boxes[:, 2] * boxes[:, 3] / (375 * 500)
    aspect = boxes[:, 3] / boxes[:, 2]
    assert area.min() >= 0.075 and area.max() <= 1.0 and area.min() < 0.15
    assert aspect.min() >= 0.74 and aspect.max() <= 1.35


def test_imagenet_train_crop_flip_and_shape():
    image = np.random.default_rng(2).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    u = _uniforms(1)[0]
    u[U_FLIP] = 0.9
    plain = inception.imagenet_train_crop(image, u, 64)
    u[U_FLIP] = 0.1
    flipped = inception.imagenet_train_crop(image, u, 64)
    assert plain.shape == (64, 64, 3) and plain.dtype == np.uint8
    assert np.array_equal(flipped, plain[:, ::-1])


def test_imagenet_eval_is_short_side_resize_then_centre_crop():
    size = 56
    short = round(size * 256 / 224)              # 64
    image = np.random.default_rng(3).integers(0, 256, (short, 100, 3), dtype=np.uint8)
    out = imagenet.imagenet_eval_crop(image, size)   # short side already right: a centre crop
    top, left = (short - size) // 2, (100 - size) // 2
    assert np.array_equal(out, image[top:top + size, left:left + size])
    tall = np.random.default_rng(4).integers(0, 256, (300, 200, 1), dtype=np.uint8)
    assert imagenet.imagenet_eval_crop(tall, size).shape == (size, size, 1)


def test_eval_preprocessing_is_deterministic():
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (rng.integers(40, 90), rng.integers(40, 90), 3), dtype=np.uint8)
              for _ in range(4)]
    prep = Preprocessing("imagenet_inception", "imagenet", 32)
    first, second = prep.eval(images), prep.eval(images)
    assert first.shape == (4, 32, 32, 3) and np.array_equal(first, second)
    cifar_prep = Preprocessing("cifar", "cifar10", 32)
    batch = np.stack([im[:32, :32] for im in images])
    assert np.array_equal(cifar_prep.eval(batch), normalize(batch, "cifar10"))


def test_color_jitter_neutral_factors_and_range():
    images = np.random.default_rng(6).integers(0, 256, (3, 8, 8, 3)).astype(np.float32)
    u = _uniforms(3)
    neutral = u.copy()
    neutral[:, U_JITTER:U_JITTER + 3] = 0.5          # every factor exactly 1
    np.testing.assert_allclose(inception.color_jitter(images, neutral, 0.4), images, atol=1e-3)
    out = inception.color_jitter(images, u, 0.4)
    assert out.min() >= 0 and out.max() <= 255 and not np.allclose(out, images)
    grey = np.full((3, 8, 8, 3), 100.0, np.float32)        # contrast and saturation keep grey
    bright = inception.color_jitter(grey, u, 0.4)
    factors = 1 + 0.4 * (2 * u[:, U_JITTER] - 1)
    np.testing.assert_allclose(bright, grey * factors[:, None, None, None], rtol=1e-5)


def test_train_transform_of_a_constant_image_without_padding():
    prep = Preprocessing("none", "svhn", 32)
    image = np.full((2, 32, 32, 3), 111, np.uint8)
    out = prep.train(image, _uniforms(2))
    mean, std = NORMALIZATION["svhn"]
    np.testing.assert_allclose(out, np.broadcast_to((111 - np.asarray(mean)) / np.asarray(std),
                                                    out.shape), atol=1e-6)



def test_the_registry_names_every_recipe_once():
    assert AUGMENTATIONS == ("cifar", "cifar_zero_pad", "imagenet_mxnet", "imagenet_mxnet_igcv3",
                             "imagenet_inception", "none")
    assert IMAGENET_AUGMENTATIONS == ("imagenet_mxnet", "imagenet_mxnet_igcv3",
                                      "imagenet_inception")


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_every_recipe_trains_and_evaluates_a_batch(augment):
    rng = np.random.default_rng(11)
    if RECIPES[augment].imagenet:       # any size: cropped and resized to image_size
        images = [rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8) for i in range(3)]
    else:
        images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    prep = Preprocessing(augment, "cifar10", 32)
    for out in (prep.train(images, _uniforms(3)), prep.eval(images)):
        assert out.shape == (3, 32, 32, 3) and out.dtype == np.float32

def test_example_uniforms_are_keyed_and_uniform():
    u = randomness.example_uniforms(7, 2, np.arange(5000), 4)
    assert u.shape == (5000, 4) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003
    assert np.array_equal(u[10:20], randomness.example_uniforms(7, 2, np.arange(10, 20), 4))
    for other in [(8, 2), (7, 3)]:
        assert not np.allclose(u[:5], randomness.example_uniforms(*other, np.arange(5), 4))
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05


def test_epoch_permutation():
    a = randomness.epoch_permutation(0, 0, 1000)
    assert sorted(a.tolist()) == list(range(1000))
    assert not np.array_equal(a, randomness.epoch_permutation(0, 1, 1000))
    assert not np.array_equal(a, randomness.epoch_permutation(1, 0, 1000))
    assert np.array_equal(a, randomness.epoch_permutation(0, 0, 1000))
    # Pinned: the order must not change with numpy versions (a resumed run must see the same).
    assert randomness.epoch_permutation(0, 0, 10).tolist() == [0, 5, 3, 1, 8, 6, 2, 9, 7, 4]


# ----------------------------------------------------------------------------- MXNet ImageNet
# The authors' train_imagenet.py → MXNet ImageRecordIter (spec §4), stated here independently:
# stored short side 480; scale s ∈ [0.533, 1] (short side 256–480); aspect jitter r ∈ [0.75, 1.25]
# with horizontal / vertical factors 2s/(1+r) and 2sr/(1+r); canvas max(256, s·side); fill
# (123, 113, 99); random 224 crop; integer HSL offsets within ±36 (H), ±50 (S, L).

def _mxnet_u(n: int, seed: int = 0) -> np.ndarray:
    return randomness.example_uniforms(seed, 0, np.arange(n), randomness.NUM_UNIFORMS)


def test_mxnet_crop_scale_and_aspect_ranges_over_many_draws():
    rng = np.random.default_rng(0)
    scales, aspects = [], []
    for i, u in enumerate(_mxnet_u(4000)):
        h, w = (int(v) for v in rng.integers(100, 900, 2))
        top, left, bh, bw = mxnet.mxnet_crop_box(h, w, u, 224)
        f = 480 / min(h, w)                        # original → stored (short side 480)
        hs, ws = 224 / (bw * f), 224 / (bh * f)    # stored → crop, per axis
        scales.append((hs + ws) / 2)
        aspects.append(ws / hs)
        canvas_w, canvas_h = max(256, scales[-1] * w * f), max(256, scales[-1] * h * f)
        # The crop lies on the canvas (its offset in canvas pixels is in [0, canvas − 224]).
        x0 = left * hs * f + (canvas_w - hs * w * f) / 2
        y0 = top * ws * f + (canvas_h - ws * h * f) / 2
        assert -1e-6 <= x0 <= int(canvas_w) - 224 + 1e-6
        assert -1e-6 <= y0 <= int(canvas_h) - 224 + 1e-6
    scales, aspects = np.asarray(scales), np.asarray(aspects)
    assert scales.min() >= 0.533 - 1e-9 and scales.max() <= 1.0 + 1e-9
    assert scales.min() < 0.54 and scales.max() > 0.99           # the whole range is drawn
    assert aspects.min() >= 0.75 - 1e-9 and aspects.max() <= 1.25 + 1e-9
    assert aspects.min() < 0.76 and aspects.max() > 1.24
    assert abs(np.mean(scales * 480) - (256 + 480) / 2) < 4      # short side uniform in 256–480


def test_mxnet_crop_fills_where_the_scaled_image_does_not_reach():
    """480×640, s = 0.533, r = 1.25 (worked by hand): horizontal factor 2·0.533/2.25 = 0.4738, the
    image spans 303.2 px of a max(256, 0.533·640) = 341.1 px canvas, 18.96 px of fill on each
    side; vertically 0.5922·480 = 284.3 px on a 256 px canvas, no fill. A crop at offset (0, 0)."""
    image = np.empty((480, 640, 3), np.uint8)
    image[...] = (200, 50, 10)
    u = _mxnet_u(1)[0].copy()
    u[0], u[1] = 0.0, 1.0 - 1e-9
    u[U_POS], u[U_POS + 1], u[U_FLIP] = 0.0, 0.0, 0.9
    out = mxnet.mxnet_train_crop(image, u, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert np.all(out[:, :18] == (123, 113, 99))
    assert np.all(out[:, 20:] == (200, 50, 10))
    flipped = mxnet.mxnet_train_crop(image, np.where(np.arange(len(u)) == U_FLIP, 0.1, u), 224)
    assert np.array_equal(flipped, out[:, ::-1])


def test_mxnet_hsl_offsets_are_integers_in_range():
    offsets = mxnet.mxnet_hsl_offsets(_mxnet_u(20000))
    assert offsets.dtype.kind == "i"
    for column, bound in zip(offsets.T, (36, 50, 50)):
        assert column.min() >= -bound and column.max() <= bound
        assert column.min() <= -bound + 1 and column.max() >= bound - 1
        # int() truncates toward zero, so 0 collects (−1, 1): twice any other value's share.
        share = np.mean(column == 0) / np.mean(column == 1)
        assert 1.6 < share < 2.5


def test_mxnet_hsl_jitter_moves_hue_saturation_lightness_by_the_offsets():
    """Measured with the standard library's colorsys (independent of the implementation): hue by
    2·dh degrees (OpenCV's 8-bit hue is degrees / 2), lightness and saturation by dl/255, ds/255,
    to within the 8-bit quantisation; hue is clipped at 180 (360°), not wrapped."""
    import colorsys
    colour = np.asarray([170, 110, 80], np.uint8)           # h 20°, l 0.49, s 0.36
    images = np.broadcast_to(colour, (4, 2, 2, 3)).copy()
    u = _mxnet_u(4)
    u[:, U_JITTER:U_JITTER + 3] = [[0.5, 0.5, 0.5], [0.75, 0.5, 0.5],
                                          [0.5, 0.8, 0.5], [0.5, 0.5, 0.2]]
    dh, ds, dl = mxnet.mxnet_hsl_offsets(u).T
    assert list(dh) == [0, 18, 0, 0] and list(ds) == [0, 0, 30, 0] and list(dl) == [0, 0, 0, -30]
    out = mxnet.mxnet_hsl_jitter(images, u)
    h0, l0, s0 = colorsys.rgb_to_hls(*(colour / 255))
    for i in range(4):
        h, light, s = colorsys.rgb_to_hls(*(out[i, 0, 0] / 255))
        assert abs(h * 360 - (h0 * 360 + 2 * dh[i])) < 3, i
        assert abs(light - (l0 + dl[i] / 255)) < 2.5 / 255, i
        assert abs(s - (s0 + ds[i] / 255)) < 4 / 255, i
    magenta = np.broadcast_to(np.asarray([250, 20, 60], np.uint8), (1, 1, 1, 3)).copy()  # 350°
    uh = _mxnet_u(1)
    uh[:, U_JITTER:U_JITTER + 3] = [1.0 - 1e-9, 0.5, 0.5]                 # dh = +35
    h, _, _ = colorsys.rgb_to_hls(*(mxnet.mxnet_hsl_jitter(magenta, uh)[0, 0, 0] / 255))
    assert h * 360 > 355 or h * 360 < 1                    # clipped to red, not wrapped to 60°


def test_mxnet_lightness_offsets_move_greys_exactly_and_keep_white_white():
    """A grey (v, v, v) is L = v, S = 0 in 8-bit HLS: an offset dl alone makes it exactly
    (v + dl clipped) on every channel, white included (255 is L 255: 510 − (max + min) = 0 must
    not be divided by)."""
    greys = np.arange(256, dtype=np.uint8)[:, None, None].repeat(3, 2)[None]      # 1×256×1×3
    for dl, u_l in [(-30, 0.2), (30, 0.8)]:
        u = _mxnet_u(1)
        u[:, U_JITTER:U_JITTER + 3] = [0.5, 0.5, u_l]
        assert mxnet.mxnet_hsl_offsets(u).tolist() == [[0, 0, dl]]
        out = mxnet.mxnet_hsl_jitter(greys, u)
        expected = np.clip(np.arange(256) + dl, 0, 255)[:, None, None].repeat(3, 2)
        np.testing.assert_array_equal(out[0], expected)


def test_mxnet_preprocessing_uses_the_authors_constants_and_eval_crop():
    assert NORMALIZATION["imagenet_igc_mxnet"] == ((123.370, 112.757, 99.406),
                                                     (68.998, 66.093, 68.292))
    assert mxnet.MXNET_FILL == (123, 113, 99)
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 256, (int(rng.integers(300, 500)), int(rng.integers(300, 500)), 3),
                           dtype=np.uint8) for _ in range(3)]
    prep = Preprocessing("imagenet_mxnet", "imagenet_igc_mxnet", 224)
    expected = np.stack([imagenet.imagenet_eval_crop(im, 224) for im in images])
    np.testing.assert_array_equal(prep.eval(images), normalize(expected, "imagenet_igc_mxnet"))
    u = _mxnet_u(3)
    first, second = prep.train(images, u), prep.train(images, u)
    assert first.shape == (3, 224, 224, 3) and np.array_equal(first, second)


# IGCV3's train_imagenet.py (spec §7), stated independently: the same scale range and HSL jitter,
# augmentation level 2 (no aspect-ratio jitter), fill value 127, mean subtraction only.

def test_igcv3_crop_has_no_aspect_jitter_and_fills_127():
    rng = np.random.default_rng(1)
    scales = []
    for u in _mxnet_u(500, seed=3):
        h, w = (int(v) for v in rng.integers(100, 900, 2))
        _, _, bh, bw = mxnet.mxnet_crop_box(h, w, u, 224, mxnet.IGCV3_MAX_ASPECT,
                                            mxnet.IGCV3_MIN_IMG_SIZE)
        assert abs(bh / bw - 1) < 1e-12                     # square boxes: aspect 1 always
        scales.append(224 / (bw * 480 / min(h, w)))         # stored image → crop
    assert 0.533 - 1e-9 <= min(scales) < 0.54 and 0.99 < max(scales) <= 1 + 1e-9
    # 480×640 at s = 0.533: the image is 255.8 px tall; with no 256 px minimum canvas nothing is
    # filled, and a crop at offset (0, 0) lies on the image.
    u = _mxnet_u(1)[0].copy()
    u[0], u[U_POS], u[U_POS + 1], u[U_FLIP] = 0.0, 0.0, 0.0, 0.9
    args = (224, 3, mxnet.IGCV3_MAX_ASPECT, mxnet.IGCV3_FILL, mxnet.IGCV3_MIN_IMG_SIZE)
    assert np.all(mxnet.mxnet_train_crop(np.full((480, 640, 3), (200, 50, 10), np.uint8), u,
                                         *args) == (200, 50, 10))
    top, left, bh, bw = mxnet.mxnet_crop_box(480, 640, u, 224, 0.0, 0)
    assert top >= 0 and left >= 0
    assert mxnet.IGCV3_FILL == (127, 127, 127)


def test_igcv3_normalisation_subtracts_the_mean_only():
    assert NORMALIZATION["imagenet_igcv3_mxnet"] == ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0))
    assert NORMALIZATION["cifar10_mean_only"][0] == NORMALIZATION["cifar10"][0]
    x = np.full((1, 2, 2, 3), 200, np.uint8)
    np.testing.assert_allclose(normalize(x, "imagenet_igcv3_mxnet")[0, 0, 0],
                               200 - np.asarray((123.68, 116.779, 103.939)), rtol=1e-6)
    prep = Preprocessing("imagenet_mxnet_igcv3", "imagenet_igcv3_mxnet", 224)
    images = [np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)]
    expected = normalize(np.stack([imagenet.imagenet_eval_crop(images[0], 224)]),
                         "imagenet_igcv3_mxnet")
    np.testing.assert_array_equal(prep.eval(images), expected)
