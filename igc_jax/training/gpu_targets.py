"""NVIDIA GPU targets by name (`h100-8`, `h100-16`, `a100-8`): hosts of 8 GPUs, compiled for
with no GPU.

JAX's CUDA plugin (the `gpu-compile` extra) gives compile-only devices of any number of hosts of
one GPU model from XLA's description of that GPU (a `GpuTargetConfigProto`, vendored from XLA in
gpu_specs/). `parse_gpu_target(name)` maps a name to the plugin's topology ("<slices>x<hosts>x<GPUs
per host>") and to what a report needs (GPUs, hosts, memory per GPU: the spec's
`device_memory_size`). Pure Python: no JAX.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

from igc_jax.errors import UserError
from igc_jax.training.slices import describe_target, split_name

GPUS_PER_HOST = 8  # the SXM boards (HGX/DGX): 8 GPUs per host, NVLink within it


@dataclasses.dataclass(frozen=True)
class GpuModel:
    """One GPU model: its name in target names and XLA's description of it."""
    name: str     # as in the target name, e.g. "h100"
    spec: Path    # its GpuTargetConfigProto, text format

    @functools.cached_property
    def target_config(self) -> str:
        """The spec's text, as `topologies.get_topology_desc(target_config=...)` takes it."""
        return self.spec.read_text()

    @property
    def memory_bytes(self) -> int:
        """The memory of one GPU: the spec's device_memory_size."""
        m = re.search(r"^\s*device_memory_size:\s*(\d+)", self.target_config, re.M)
        if m is None:
            raise ValueError(f"{self.spec.name} has no device_memory_size")
        return int(m.group(1))


GPU_MODELS = {
    "h100": GpuModel("h100", Path(__file__).parent / "gpu_specs/h100_sxm.txtpb"),
    "a100": GpuModel("a100", Path(__file__).parent / "gpu_specs/a100_sxm_80.txtpb"),
}


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """GPUs of one model on hosts of up to 8: the name as given, the model and the count."""
    name: str
    model: GpuModel
    chips: int  # GPUs (called chips, as a slice's, in the report)
    platform = "gpu"
    unit = "GPU"

    @property
    def gpus_per_host(self) -> int:
        return min(self.chips, GPUS_PER_HOST)

    @property
    def hosts(self) -> int:
        return self.chips // self.gpus_per_host

    @property
    def topology_name(self) -> str:
        return f"1x{self.hosts}x{self.gpus_per_host}"

    @property
    def hbm_bytes(self) -> int:
        return self.model.memory_bytes

    def describe(self) -> str:
        return describe_target(self.name, self.chips, self.unit, self.hosts, self.hbm_bytes)


def supported_gpu_names() -> str:
    """The accepted forms, for error messages."""
    return (f"{'-N, '.join(GPU_MODELS)}-N (N GPUs: 1 to {GPUS_PER_HOST} on one host, or a "
            f"multiple of {GPUS_PER_HOST}: 16, 32, ...)")


def parse_gpu_target(name: str) -> GpuTarget:
    """The GPU target a name gives; UserError naming the accepted forms otherwise."""
    prefix, count = split_name(name)
    model = GPU_MODELS.get(prefix)
    if model is None or not count.isdigit() or int(count) == 0 or (
            int(count) > GPUS_PER_HOST and int(count) % GPUS_PER_HOST):
        raise UserError(f"--topology={name!r} is not a GPU target; give {supported_gpu_names()}")
    return GpuTarget(name=name, model=model, chips=int(count))
