"""One mesh over every device of every process, with a single `data` axis.

The batch is sharded along `data`, the training state is replicated. Host batches become global
`jax.Array`s with `jax.make_array_from_process_local_data`, so nothing is transferred implicitly.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from igc_jax.errors import UserError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`; the other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "batch_size") -> int:
    """The per-process batch; UserError when the global batch does not split evenly."""
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if global_batch % n_dev:
        raise UserError(f"{what}={global_batch} is not divisible by the {n_dev} devices")
    if global_batch % n_proc:
        raise UserError(f"{what}={global_batch} is not divisible by the {n_proc} processes")
    return global_batch // n_proc


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Per-process numpy batch (a pytree of arrays) → global jax.Arrays sharded along `data`."""
    sharding = batch_sharding(mesh)
    # This is the loop's one deliberate host-to-device copy; multi-process JAX routes it through
    # a path that the transfer guard counts as implicit, so it is allowed here explicitly.
    with jax.transfer_guard_host_to_device("allow"):
        return jax.tree.map(
            lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local)


def broadcast_text(text: str) -> str:
    """Process 0's `text` on every process (the others' argument is ignored): how a decision
    made once, such as the measured IGC modes, reaches every process before anything compiles
    (processes that compiled different programs would hang in their first collective)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils
    data = np.frombuffer(text.encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(data.size, np.int64)))
    buf = np.zeros(size, np.uint8)
    if jax.process_index() == 0:
        buf[:] = data
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode()
