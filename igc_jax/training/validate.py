"""Every check of a run's input, in one place, before anything is built, compiled or written.

`validate(config)` checks each config field (type, range, allowed values) and their
combinations, needing nothing but the config. `preflight(config, workdir, mesh)` then checks what
needs only metadata: the data set's sizes, shapes, classes and labels, the batch split over
devices and processes, the workdir, and the C++ compiler for `conv_mode='native'`.
`check_distributed_flags` checks the multi-process flags before `jax.distributed.initialize`.
All of them raise `UserError` with one line naming the field, the value and what is allowed, so a
mistyped flag costs seconds, not a compile on a pod, and never touches a workdir.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import ml_collections

from igc_jax import data, models
from igc_jax.configs import base_config, schema
from igc_jax.errors import UserError
from igc_jax.igc.autotune import CONV_MODES

# The allowed values the schema names by vocabulary, from the layers that own them.
VOCABULARIES = {"datasets": tuple(data.DATASETS), "normalizations": tuple(data.NORMALIZATION),
                "augmentations": tuple(data.AUGMENTATIONS), "conv_modes": CONV_MODES}


def _flat_keys(d: Any, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, (dict, ml_collections.ConfigDict)) and k != "model":
            out += _flat_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def _get(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise UserError with a one-line message on the first bad field or combination."""
    given = _flat_keys(config)
    known = {f.key for f in schema.FIELDS} | {"model"}
    if unknown := sorted(set(given) - known):
        raise UserError(f"the config has unknown field(s) {', '.join(unknown)}; "
                        f"its fields are those of igc_jax.configs.base_config()")
    if missing := sorted(k for k in _flat_keys(base_config()) if k not in given):
        raise UserError(f"the config lacks field(s) {', '.join(missing)}; start it from "
                        f"igc_jax.configs.base_config()")
    for field in schema.FIELDS:
        schema.check_field(field.key, _get(config, field.key), VOCABULARIES)
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise UserError(f"set num_epochs > 0 or num_train_steps > 0 (got num_epochs="
                        f"{config.num_epochs}, num_train_steps={config.num_train_steps})")
    if config.num_train_steps <= 0 and config.warmup_epochs >= config.num_epochs:
        raise UserError(f"warmup_epochs={config.warmup_epochs} must be less than num_epochs="
                        f"{config.num_epochs}")
    if not isinstance(config.model, (dict, ml_collections.ConfigDict)):
        raise UserError(f"model must be a dict of the network's fields, got {config.model!r}")
    try:  # the constructors' own checks (ValueError), as the user's one line
        models.validate_model_config(config.model, num_classes=config.dataset.num_classes)
    except ValueError as e:
        raise UserError(str(e)) from None


def check_distributed_flags(coordinator_address: str | None, num_processes: int | None,
                            process_id: int | None) -> None:
    """--coordinator_address, --num_processes and --process_id: all three or none, consistent."""
    if not coordinator_address:
        if num_processes is not None or process_id is not None:
            raise UserError("--num_processes and --process_id need --coordinator_address=HOST:PORT"
                            " (Cloud TPU and SLURM runs need none of the three)")
        return
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT "
                        "with a port in 1..65535")
    if num_processes is None or process_id is None:
        raise UserError(f"--coordinator_address={coordinator_address} needs --num_processes=N "
                        "and --process_id=I too")
    if num_processes < 1:
        raise UserError(f"--num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process_id={process_id} must be in [0, --num_processes="
                        f"{num_processes})")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the loop needs from the checks: the data's metadata and the run's length."""

    info: data.DatasetInfo
    steps_per_epoch: int
    num_steps: int
    eval_every: int


def check_workdir(workdir: str, what: str = "workdir") -> None:
    """`workdir` exists as a writable directory, or can be created; nothing is created here.

    (A gs:// path cannot be checked without writing to it; its errors come at the first write.)
    """
    if "://" in workdir:
        return
    if not workdir:
        raise UserError(f"the {what} is empty; give a directory")
    path = os.path.abspath(workdir)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UserError(f"{what} {workdir} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{what} {workdir} is not writable")
        return
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{what} {workdir} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {workdir} cannot be created: {parent} is not writable")


def check_native(conv_mode: str) -> None:
    """conv_mode='native' needs the C++ kernels built (a compiler on this machine, CPU backend)."""
    if conv_mode != "native":
        return
    from igc_jax.igc import native
    if not native.available():
        raise UserError(f"conv_mode='native' is unavailable here: {native.build_error()}; "
                        "use conv_mode='auto' (it picks the pure-XLA modes)")


def check_batch_split(config: ml_collections.ConfigDict, counts: Sequence[tuple[int, str]],
                      keys: Sequence[str] = ("batch_size", "eval_batch_size")) -> None:
    """Each global batch of `keys` divides evenly by every (count, what) of `counts`: the
    devices and processes of this run, or the chips of a slice being compiled for."""
    for key in keys:
        for count, what in counts:
            if config[key] % count:
                raise UserError(f"{key}={config[key]} is not divisible by the {count} {what}; "
                                f"pass --config.{key}=<a multiple of {count}>")


def check_batches(config: ml_collections.ConfigDict, info: data.DatasetInfo, num_devices: int,
                  num_processes: int) -> None:
    """Both batches split evenly over devices and processes; the training split fills a batch."""
    check_batch_split(config, ((num_devices, "devices"), (num_processes, "processes")))
    if config.batch_size > info.num_train:
        raise UserError(f"batch_size={config.batch_size} exceeds the {info.num_train} training "
                        f"examples of {info.name}")


def preflight(config: ml_collections.ConfigDict, workdir: str, mesh: Any) -> Plan:
    """The metadata checks (after `validate`), in the order a user fixes them; the run's Plan."""
    import jax
    info = data.dataset_info(config.dataset)
    data.check_labels(config.dataset)
    check_batches(config, info, mesh.devices.size, jax.process_count())
    steps_per_epoch = max(info.num_train // config.batch_size, 1)
    num_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(math.ceil(config.num_epochs * steps_per_epoch)))
    if config.profile_steps and int(config.profile_steps.split(":")[0]) >= num_steps:
        raise UserError(f"profile_steps={config.profile_steps!r} starts after the run's "
                        f"{num_steps} steps")
    check_native(config.conv_mode)
    check_workdir(workdir)
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    return Plan(info, steps_per_epoch, num_steps, eval_every)
