"""What `--topology` names: a Cloud TPU slice (`v5litepod-8`, `v4-32`, ...: slices.py) or a GPU
target (`h100-8`, `h100-16`, `a100-8`: gpu_targets.py). Pure Python: no JAX."""
from __future__ import annotations

from igc_jax.errors import UserError
from igc_jax.training.gpu_targets import GPU_MODELS, GpuTarget, parse_gpu_target, \
    supported_gpu_names
from igc_jax.training.slices import Slice, generation, parse_slice, split_name, supported_names

Target = Slice | GpuTarget


def parse_target(name: str) -> Target:
    """The TPU slice or GPU target `name` gives; UserError naming every accepted form otherwise."""
    prefix, _ = split_name(name)
    if prefix in GPU_MODELS:
        return parse_gpu_target(name)
    if generation(prefix) is not None:
        return parse_slice(name)
    raise UserError(f"--topology={name!r} is not a TPU accelerator type or a GPU target; give "
                    f"{supported_names()}; or {supported_gpu_names()}")
