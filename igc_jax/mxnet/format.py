"""Read MXNet's binary NDArray list format (`.params` files) with numpy alone.

MXNet is retired and needs numpy < 1.24, so igc-jax reads the released weights without it. The
layout (MXNet `src/ndarray/ndarray.cc`, `NDArray::Save`/`Load`; little-endian):

    uint64 0x112 (kMXAPINDArrayListMagic), uint64 reserved
    uint64 n, then n arrays
    uint64 k (0 or n), then k names, each uint64 length + bytes ("arg:<name>" / "aux:<name>")

One array, in the three layouts MXNet itself still loads:

    V2/V3 (MXNet ≥ 0.11): uint32 magic 0xF993FAC9 / 0xF993FACA, int32 storage type (0 = dense),
                          int32 ndim, int64 dims[ndim], context, int32 dtype flag, data
    V1:                   uint32 magic 0xF993FAC8, int32 ndim, int64 dims[ndim], context, dtype,
                          data
    legacy (≤ 0.10):      uint32 ndim (no magic), uint32 dims[ndim], context, dtype, data

where context is int32 device type + int32 device id, and an array with ndim 0 stops after the
shape (an empty NDArray). Sparse arrays (row_sparse, csr) are refused: no model stores them.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from igc_jax.errors import UserError

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA

# mshadow type flags (mshadow/base.h).
DTYPES = {
    0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
    6: np.int64, 7: np.bool_, 8: np.int16, 9: np.uint16, 10: np.uint32, 11: np.uint64,
}
STORAGE_TYPES = {0: "default", 1: "row_sparse", 2: "csr"}


class _Reader:
    """Sequential little-endian reads that fail with a one-line error at the end of the data."""

    def __init__(self, data: bytes, source: str):
        self.data = data
        self.pos = 0
        self.source = source

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise UserError(f"{self.source}: truncated MXNet NDArray file (needed {n} bytes at "
                            f"offset {self.pos}, file has {len(self.data)})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def _read_shape(r: _Reader, legacy_ndim: int | None) -> tuple[int, ...]:
    if legacy_ndim is not None:  # legacy: the uint32 read as magic was ndim; uint32 dims follow
        return tuple(r.unpack(f"{legacy_ndim}I")) if legacy_ndim else ()
    (ndim,) = r.unpack("i")
    if ndim <= 0:  # 0: empty array; -1: unknown shape (numpy semantics), also empty
        return ()
    return tuple(r.unpack(f"{ndim}q"))


def _read_array(r: _Reader, index: int) -> np.ndarray | None:
    """One NDArray; None for an empty one (MXNet's `NDArray()`)."""
    (magic,) = r.unpack("I")
    if magic in (V2_MAGIC, V3_MAGIC):
        (stype,) = r.unpack("i")
        if stype != 0:
            raise UserError(f"{r.source}: array {index} has storage type "
                            f"{STORAGE_TYPES.get(stype, stype)}; only dense arrays are supported")
        shape = _read_shape(r, None)
    elif magic == V1_MAGIC:
        shape = _read_shape(r, None)
    elif magic < 64:  # legacy layout: the first word is ndim (MXNet allows at most 32 dims)
        shape = _read_shape(r, magic)
    else:
        raise UserError(f"{r.source}: array {index} starts with unknown magic {magic:#x}")
    if not shape:
        return None
    r.unpack("ii")  # context (device type, device id): arrays are loaded on the host anyway
    (flag,) = r.unpack("i")
    if flag not in DTYPES:
        raise UserError(f"{r.source}: array {index} has unknown dtype flag {flag}")
    dtype = np.dtype(DTYPES[flag]).newbyteorder("<")
    count = int(np.prod(shape))
    data = np.frombuffer(r.take(count * dtype.itemsize), dtype=dtype, count=count)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def read_ndarray_list(data: bytes, source: str = "<bytes>") -> dict[str, np.ndarray]:
    """Parse the bytes of an NDArray list file into {name: array}, in file order.

    An unnamed list (MXNet allows one) gets the names "0", "1", ...; empty arrays are dropped.
    """
    r = _Reader(data, source)
    magic, _reserved = r.unpack("QQ")
    if magic != LIST_MAGIC:
        raise UserError(f"{source}: not an MXNet NDArray file (header {magic:#x}, expected "
                        f"{LIST_MAGIC:#x})")
    (n,) = r.unpack("Q")
    arrays = [_read_array(r, i) for i in range(n)]
    (k,) = r.unpack("Q")
    if k not in (0, n):
        raise UserError(f"{source}: {n} arrays but {k} names")
    names = [r.take(r.unpack("Q")[0]).decode("utf-8") for _ in range(k)]
    names = names or [str(i) for i in range(n)]
    if r.pos != len(data):
        raise UserError(f"{source}: {len(data) - r.pos} unexpected bytes after the names")
    if len(set(names)) != len(names):
        raise UserError(f"{source}: duplicate array names")
    return {name: a for name, a in zip(names, arrays) if a is not None}


def load_params(path: str | Path) -> dict[str, np.ndarray]:
    """Read a `.params` file (as `mx.nd.load` would) into {name: numpy array}."""
    path = Path(path)
    return read_ndarray_list(path.read_bytes(), str(path))
