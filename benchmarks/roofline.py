"""The machine's ceilings, measured in the benchmark's own process, and rooflines against them.

- `matmul_rate`: a dense float32 (or bfloat16) matmul's multiply-adds per second through XLA,
  the best any convolution can hope for (the roofline's compute ceiling).
- `copy_bandwidth`: a STREAM-like copy (read one array, write one, in place via donation so no
  fresh pages are touched), bytes per second (the memory ceiling).

A roofline time is max(MACs / matmul rate, unavoidable bytes / bandwidth): the multiply-adds the
layer truly needs (IGC's own count, not a mode's) and the traffic no implementation can avoid:
reading its input and weights and writing its output once (forward), plus reading input and output
gradient and writing the input gradient and the weight gradients (backward). Intermediates such as
the primary conv's output are not counted: a fused kernel keeps them on chip.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Ceilings:
    macs_per_s: float  # dense matmul multiply-adds per second
    bytes_per_s: float  # copy bandwidth (bytes read + written per second)

    def roofline_s(self, macs: float, nbytes: float) -> float:
        return max(macs / self.macs_per_s, nbytes / self.bytes_per_s)


def _best_of(fn, args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def matmul_rate(n: int = 2048, dtype=jnp.float32, reps: int = 5) -> float:
    """Multiply-adds per second of an n×n×n matmul (best of `reps`)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    return n ** 3 / _best_of(jax.jit(jnp.matmul), (a, b), reps)


def copy_bandwidth(nbytes: int = 1 << 28, reps: int = 5) -> float:
    """Bytes moved per second by y = x + 1 over `nbytes` of float32, updated in place."""
    step = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    x = jnp.zeros((nbytes // 4,), jnp.float32)
    x = step(x)
    x.block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        x = step(x)
        x.block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def measure(quick: bool = False, dtype=jnp.float32) -> Ceilings:
    """Both ceilings; `quick` uses small sizes (a dry run, not a measurement)."""
    return Ceilings(macs_per_s=matmul_rate(256 if quick else 2048, dtype, 2 if quick else 5),
                    bytes_per_s=copy_bandwidth(1 << 22 if quick else 1 << 28, 2 if quick else 5))


def igc_layer_macs(N: int, Ho: int, Wo: int, C_in: int, C: int, L: int, M: int, S: int = 9) -> int:
    """IGC's true multiply-adds: primary S·C_in·C/L plus secondary C·C/M per output pixel."""
    return N * Ho * Wo * (S * C_in * C // L + C * C // M)


def layer_bytes(x_elems: int, y_elems: int, w_elems: int, itemsize: int,
                backward: bool) -> int:
    """Unavoidable traffic: x, y, weights once forward; backward adds x, dy, dx, and dW + W."""
    fwd = x_elems + y_elems + w_elems
    bwd = x_elems + y_elems + x_elems + 2 * w_elems if backward else 0
    return (fwd + bwd) * itemsize
