"""Cloud TPU slices by the names users type into `gcloud` (`v5litepod-8`, `v4-32`, ...).

`parse_slice(name)` maps an accelerator type to what libtpu's compile-only topologies need (the
JAX topology name, the chip configuration and the chips of one host) and to what a report needs
(chips, hosts, HBM per chip). The shapes and host layouts are Cloud TPU's published ones (also in
MaxText's accelerator table); the HBM per chip is from the Cloud TPU system-architecture pages:
v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB. Pure Python: no JAX.
"""
from __future__ import annotations

import dataclasses
import math

from igc_jax.errors import UserError

GIB = 1 << 30

# Slice shapes by chip count: 2D tori (v5e, v6e) and 3D tori (v4, v5p).
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: how its accelerator types count and how its chips are laid out."""
    name: str                 # as in the accelerator type, e.g. "v5e"
    topology_prefix: str      # JAX's topology name prefix, e.g. "v5e" ("v5" for v5p)
    cores_per_chip: int       # the accelerator type counts TensorCores (2 on v4/v5p megacore)
    chip_config: str          # "megacore" (one device per chip of 2 cores) or "default"
    hbm_bytes: int            # HBM per chip
    max_single_host_chips: int  # chips of the largest single-host slice

    def shapes(self) -> dict[int, tuple[int, ...]]:
        return _SHAPES_3D if self.cores_per_chip == 2 else _SHAPES_2D


GENERATIONS = {
    "v4": Generation("v4", "v4", 2, "megacore", 32 * GIB, 4),
    "v5p": Generation("v5p", "v5", 2, "megacore", 95 * GIB, 4),
    "v5e": Generation("v5e", "v5e", 1, "default", 16 * GIB, 8),
    "v6e": Generation("v6e", "v6e", 1, "default", 32 * GIB, 8),
}
# The other names gcloud and users give the same generations.
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice: its name as given, its generation, chips and host layout."""
    name: str
    generation: Generation
    chips: int
    shape: tuple[int, ...]
    chips_per_host: tuple[int, int, int]
    platform = "tpu"
    unit = "chip"

    @property
    def topology_name(self) -> str:
        return f"{self.generation.topology_prefix}:{'x'.join(map(str, self.shape))}"

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.chips_per_host)

    @property
    def hbm_bytes(self) -> int:
        return self.generation.hbm_bytes

    def describe(self) -> str:
        return describe_target(self.name, self.chips, self.unit, self.hosts, self.hbm_bytes)


def describe_target(name: str, chips: int, noun: str, hosts: int, hbm_bytes: int) -> str:
    """'<name> (<chips> <noun>s, <hosts> hosts, <GiB> GiB HBM per <noun>)'."""
    return (f"{name} ({chips} {noun}{'s' * (chips > 1)}, {hosts} host{'s' * (hosts > 1)}, "
            f"{hbm_bytes / GIB:.0f} GiB HBM per {noun})")


def _host_bounds(gen: Generation, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The chips of one host along each axis: the whole slice up to a single host's chips, else
    a 2×2 block of 4 chips (Cloud TPU's multi-host VMs)."""
    padded = (*shape, 1, 1)[:3]
    if math.prod(shape) <= gen.max_single_host_chips:
        return padded  # type: ignore[return-value]
    return (2, 2, 1)


def supported_names() -> str:
    """The accepted forms, for error messages."""
    return ("v4-N, v5p-N (N TensorCores: 8, 16, 32, ...), v5litepod-N or v5e-N, v6e-N "
            "(N chips: 1, 4, 8, 16, ..., 256)")


def split_name(name: str) -> tuple[str, str]:
    """('v5litepod', '8') of 'v5litepod-8': the lower-case kind and the count, as given."""
    prefix, _, count = name.strip().lower().rpartition("-")
    return prefix, count


def generation(prefix: str) -> Generation | None:
    """The TPU generation an accelerator type's prefix names (gcloud's aliases too), or None."""
    return GENERATIONS.get(_ALIASES.get(prefix, prefix))


def parse_slice(name: str) -> Slice:
    """The slice an accelerator type names; UserError naming the accepted forms otherwise."""
    prefix, count = split_name(name)
    gen = generation(prefix)
    if gen is None or not count.isdigit():
        raise UserError(f"--topology={name!r} is not a TPU accelerator type; give "
                        f"{supported_names()}")
    cores = int(count)
    chips, rest = divmod(cores, gen.cores_per_chip)
    shape = gen.shapes().get(chips) if not rest else None
    if shape is None:
        sizes = ", ".join(str(c * gen.cores_per_chip) for c in gen.shapes())
        raise UserError(f"--topology={name!r}: {gen.name} slices come in sizes {sizes}")
    return Slice(name=name, generation=gen, chips=chips, shape=shape,
                 chips_per_host=_host_bounds(gen, shape))
