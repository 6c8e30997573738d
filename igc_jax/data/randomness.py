"""Counter-based randomness: every random number of the pipeline is a hash of what it is for.

The epoch order is a hash of (seed, epoch, example index) sorted; an example's augmentation
uniforms are a hash of (seed, epoch, example index, column). Nothing depends on which process,
worker or thread computes them, or on what was computed before, so batch k can be rebuilt alone
(resume at step k) and the numbers never change with library versions (no numpy Generator streams).

Augmentation takes all its randomness as one (B, NUM_UNIFORMS) array of these uniforms: an
example's augmentation depends on nothing else, so a batch is the same whichever process, worker or
thread builds it, and a resumed run repeats it. The column layout below is shared by every recipe.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MASK64 = (1 << 64) - 1
_ORDER, _AUGMENT = 1, 2     # domain separation of the two uses

# Columns of the per-example augmentation uniforms: 2 per attempt of the random-area crop
# (Inception; the MXNet recipe reads its scale and aspect from the first two), crop position (2),
# flip, colour jitter (3). The CIFAR pad + crop + flip use the position and flip columns.
CROP_ATTEMPTS = 10
U_POS = 2 * CROP_ATTEMPTS
U_FLIP = U_POS + 2
U_JITTER = U_FLIP + 1
NUM_UNIFORMS = U_JITTER + 3


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a uint64 bijection mixing every input bit into every output bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_words(*words: int | np.ndarray) -> np.ndarray:
    """uint64 hash of a sequence of integer words (arrays broadcast), chained through `_mix64`."""
    h = np.zeros((1,), np.uint64)
    for w in words:
        if isinstance(w, np.ndarray):
            w = w.astype(np.uint64)
        else:
            w = np.uint64(int(w) & _MASK64)
        h = _mix64((h + _GOLDEN) ^ w)
    return h


@functools.lru_cache(maxsize=2)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n examples in `epoch`: argsort of their hashes (once per epoch)."""
    keys = hash_words(_ORDER, seed, epoch, np.arange(n, dtype=np.uint64))
    order = np.argsort(keys, kind="stable")
    order.flags.writeable = False     # shared by every batch of the epoch
    return order


def example_uniforms(seed: int, epoch: int, indices: Sequence[int] | np.ndarray,
                     n: int) -> np.ndarray:
    """(len(indices), n) float64 uniforms in [0, 1), a function of (seed, epoch, index, column)."""
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)[:, None]
    h = hash_words(_AUGMENT, seed, epoch, idx, np.arange(n, dtype=np.uint64)[None, :])
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
