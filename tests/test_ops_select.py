"""`auto`'s choice per layer shape (igc_jax.ops.select_mode), and that every chosen mode is exact.

The choices pin the CPU cost model (ops.cpu_costs) to the measurements it was fitted to
(benchmarks/results/cpu.md); the equality checks run each mode `auto` can pick on a small layer of
the same (L, M) family, outputs and all three gradients against `composed`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igc_jax import native, ops
from igc_jax.layers import IGCConv

# (L, M, C_in, C, stride) -> mode `auto` picks on CPU, with the native kernel built.
CPU_CHOICES = {
    (24, 2, 48, 48, 1): "native",      # CIFAR IGC-L24M2 stage 1
    (24, 4, 48, 96, 2): "native",      # its first stride-2 layer (gathered: C_in/L ≠ C/L)
    (24, 2, 48, 96, 2): "native",      # the same layer in the residual net (quirk: M = C_in/L)
    (24, 4, 96, 96, 1): "native",      # stage 2
    (24, 8, 96, 192, 2): "native",     # first layer of stage 3 (stride 2)
    (24, 8, 192, 192, 1): "native",    # stage 3
    (4, 8, 32, 32, 1): "native",       # CIFAR IGC-L4M8 stage 1
    (64, 1, 64, 64, 1): "native",      # Xception-like M = 1
    (8, 8, 64, 64, 1): "native",
    (4, 32, 128, 128, 1): "split",     # ImageNet IGC-L4M32 stage 1: wide groups
    (16, 16, 256, 256, 1): "split",    # ImageNet IGC-L16M16 stage 1
    (100, 2, 200, 200, 1): "native",   # ImageNet IGC-L100M2 stage 1
    (200, 2, 200, 400, 2): "native",   # its first stride-2 layer
    (800, 2, 1600, 1600, 1): "native",  # its last stage: 1600 channels, the sparse secondary
    (1, 48, 48, 48, 1): "composed",    # L = 1: a regular convolution
}
# The same where the C++ kernel cannot be built (no compiler): the pure-XLA modes.
CPU_CHOICES_WITHOUT_NATIVE = {
    (24, 2, 48, 48, 1): "taps",
    (24, 4, 48, 96, 2): "composed",
    (24, 2, 48, 96, 2): "composed",
    (24, 4, 96, 96, 1): "taps",
    (24, 8, 96, 192, 2): "split",
    (24, 8, 192, 192, 1): "split",     # 24 convs of 8 channels at 8×8
    (4, 8, 32, 32, 1): "composed",
    (64, 1, 64, 64, 1): "taps",
    (8, 8, 64, 64, 1): "split",
    (4, 32, 128, 128, 1): "split",
    (16, 16, 256, 256, 1): "split",
    (100, 2, 200, 200, 1): "taps",
    (200, 2, 200, 400, 2): "taps",
    (800, 2, 1600, 1600, 1): "taps",
    (1, 48, 48, 48, 1): "composed",
}
TABLES = {True: CPU_CHOICES, False: CPU_CHOICES_WITHOUT_NATIVE}
PICKED = sorted({(k, m) for table in TABLES.values() for k, m in table.items()})


def _shape(L, M, C_in, C, stride):
    return ops.LayerShape(L=L, M=M, C_in=C_in, C=C, strides=(stride, stride))


@pytest.mark.parametrize("with_native", [True, False])
def test_cpu_choice(with_native):
    got = {k: ops.select_mode("cpu", _shape(*k), with_native) for k in TABLES[with_native]}
    assert got == TABLES[with_native]


def test_other_backends_and_no_shape():
    assert ops.select_mode("gpu", _shape(24, 2, 48, 48, 1)) == "grouped"
    assert ops.select_mode("tpu", _shape(4, 32, 128, 128, 1)) == "grouped"
    assert ops.select_mode("cpu") == "composed"


@pytest.mark.parametrize("with_native", [True, False])
def test_choice_is_cheapest_modelled_mode(with_native):
    for key in TABLES[with_native]:
        costs = ops.cpu_costs(_shape(*key), with_native)
        assert ("native" in costs) == with_native
        assert costs[ops.select_mode("cpu", _shape(*key), with_native)] == min(costs.values())


def test_auto_follows_native_availability(monkeypatch):
    """Without a buildable kernel `auto` falls back to the XLA modes; asking for it says why."""
    monkeypatch.setattr(native, "build_error", lambda: "no C++ compiler found")
    monkeypatch.setattr(native, "available", lambda: False)
    assert ops.select_mode("cpu", _shape(24, 2, 48, 48, 1)) == "taps"
    x = jnp.ones((1, 4, 4, 4))
    with pytest.raises(native.NativeUnavailable, match="'native' is unavailable: no C"):
        ops.igc_apply(x, jnp.ones((3, 3, 2, 4)), jnp.ones((1, 1, 2, 4)), L=2, M=2, mode="native")


def test_auto_keeps_native_to_one_device(monkeypatch):
    """GSPMD would replicate the custom call on every device, so several devices mean XLA modes."""
    monkeypatch.setattr(native, "available", lambda: True)
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert ops.select_mode("cpu", _shape(24, 2, 48, 48, 1)) == "native"
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    assert ops.select_mode("cpu", _shape(24, 2, 48, 48, 1)) == "taps"


def test_native_sparse_secondary_condition():
    assert ops.native_sparse_secondary(_shape(24, 2, 48, 48, 1))      # C/L = 2 = M
    assert ops.native_sparse_secondary(_shape(24, 4, 48, 96, 2))      # C/L = 4 = M
    assert not ops.native_sparse_secondary(_shape(24, 2, 48, 96, 2))  # the quirk: C/L = 4 ≠ M
    assert not ops.native_sparse_secondary(_shape(4, 32, 128, 128, 1))  # M = 32: dense mixing


def test_native_in_registers_condition():
    assert ops.native_in_registers(_shape(24, 2, 48, 48, 1))    # C_in/L = C/L = 2
    assert ops.native_in_registers(_shape(24, 8, 192, 192, 1))
    assert ops.native_in_registers(_shape(24, 4, 48, 96, 2))    # C_in/L = 2, C/L = 4
    assert ops.native_in_registers(_shape(200, 2, 200, 400, 2))  # C_in/L = 1, C/L = 2
    assert not ops.native_in_registers(_shape(16, 16, 256, 256, 1))  # 16 lanes do not fit 8
    assert not ops.native_in_registers(_shape(4, 32, 128, 128, 1))


def test_taps_not_offered_for_wide_groups():
    # 3·3·32 = 288 terms > TAPS_MAX_TERMS: the fusion would be huge.
    assert "taps" not in ops.cpu_costs(_shape(4, 32, 128, 128, 1))


def test_every_chosen_mode_is_registered():
    assert {m for _, m in PICKED} <= set(ops.MODES)


def _small(L, M, C_in, C, stride):
    """(C_in, C) of a smaller layer with the same L and M, to keep the test fast."""
    for d in (8, 4, 2):
        if C_in % (d * L) == 0 and C % (d * L) == 0 and (C // d) % M == 0:
            return C_in // d, C // d
    return C_in, C


@pytest.mark.parametrize("key,mode", PICKED)
def test_chosen_mode_equals_composed(key, mode):
    L, M, C_in, C, stride = key
    if mode == "composed":
        pytest.skip("the reference itself")
    if mode == "native" and not native.available():
        pytest.skip(f"native kernel unavailable: {native.build_error()}")
    C_in, C = _small(L, M, C_in, C, stride)
    k = jax.random.split(jax.random.key(sum(key)), 4)
    x = jax.random.normal(k[0], (2, 7, 6, C_in))
    p = jax.random.normal(k[1], (3, 3, C_in // L, C)) / np.sqrt(9 * C_in / L)
    s = jax.random.normal(k[2], (1, 1, C // M, C)) / np.sqrt(C / M)
    pad = ((1, 1), (1, 1))

    def f(m):
        return lambda x, p, s: ops.MODES[m](x, p, s, L=L, M=M, strides=(stride, stride),
                                            padding=pad)

    ref, got = f("composed")(x, p, s), f(mode)(x, p, s)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    ct = jax.random.normal(k[3], ref.shape)
    g_ref = jax.grad(lambda *a: jnp.sum(f("composed")(*a) * ct), (0, 1, 2))(x, p, s)
    g_got = jax.grad(lambda *a: jnp.sum(f(mode)(*a) * ct), (0, 1, 2))(x, p, s)
    for a, b in zip(g_ref, g_got):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["taps", "split", "native"])
@pytest.mark.parametrize("stride,padding", [((1, 1), ((1, 1), (1, 1))),
                                            ((2, 2), ((1, 1), (1, 1))),
                                            ((2, 1), ((0, 1), (2, 1)))])
def test_new_modes_strides_and_padding(mode, stride, padding):
    """Odd sizes, strides, asymmetric padding and M ≠ C/L (the residual quirk) stay exact."""
    if mode == "native" and not native.available():
        pytest.skip(f"native kernel unavailable: {native.build_error()}")
    L, M, C_in, C = 4, 2, 8, 16
    k = jax.random.split(jax.random.key(3), 4)
    x = jax.random.normal(k[0], (3, 9, 7, C_in))
    p = jax.random.normal(k[1], (3, 3, C_in // L, C))
    s = jax.random.normal(k[2], (1, 1, C // M, C))

    def f(m):
        return lambda x, p, s: ops.MODES[m](x, p, s, L=L, M=M, strides=stride, padding=padding)

    ref = f("composed")(x, p, s)
    np.testing.assert_allclose(f(mode)(x, p, s), ref, rtol=1e-4, atol=1e-4)
    ct = jax.random.normal(k[3], ref.shape)
    g_ref = jax.grad(lambda *a: jnp.sum(f("composed")(*a) * ct), (0, 1, 2))(x, p, s)
    g_got = jax.grad(lambda *a: jnp.sum(f(mode)(*a) * ct), (0, 1, 2))(x, p, s)
    for a, b in zip(g_ref, g_got):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_auto_layer_uses_shape_choice(monkeypatch):
    """IGCConv(mode='auto') calls the mode `select_mode` picks for its own shape."""
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU cost model")
    picked = ops.select_mode("cpu", _shape(24, 2, 48, 48, 1))
    calls = []
    original = ops.MODES[picked]

    def spy(*args, **kwargs):
        calls.append(kwargs["L"])
        return original(*args, **kwargs)

    monkeypatch.setitem(ops.MODES, picked, spy)
    layer = IGCConv(48, L=24, M=2)
    layer.init(jax.random.key(0), jnp.ones((1, 5, 5, 48)))
    assert calls == [24]
