"""A config's real train and eval steps compiled ahead of time for devices that need not be here.

With libtpu installed (the `tpu` extra), `jax.experimental.topologies` gives compile-only devices
of any TPU slice on a machine with no TPU; with JAX's CUDA plugin (the `gpu-compile` extra), of
hosts of NVIDIA GPUs described by XLA's target configs (gpu_targets.py), on a machine with no GPU.
The GPU compiler autotunes nothing without a GPU (cuDNN convolutions get no workspace) and has no
cost analysis: its memory is a lower bound and its FLOPs are unknown (None). The steps are the
trainer's own (`igc_jax.training.steps.compile_steps`, under `shard_map`), the state is abstract
(`steps.abstract_state`: nothing is made or run), and the real compiler reports per-device
memory (`memory_analysis`), FLOPs (`cost_analysis`) and the program (`as_text`, whose collectives
are counted here). `largest_batch` bisects over compiles for the largest global batch that fits.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from igc_jax.errors import UserError
from igc_jax.igc import select
from igc_jax.training import sharding, steps
from igc_jax.training.gpu_targets import GpuTarget
from igc_jax.training.slices import Slice
from igc_jax.training.targets import Target, parse_target

COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")
# Collectives that would move activations: the per-device steps must have none.
ACTIVATION_COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "reduce-scatter")
_ITEMSIZE = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s64": 8, "pred": 1,
             "s8": 1, "u8": 1}
_COLLECTIVE = re.compile(r"= (\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?) "
                         r"(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY = re.compile(r"([a-z0-9]+)\[([0-9,]*)\]")
# XLA:TPU's out-of-memory compile error, e.g. "Used 20.51G of 15.75G hbm."
# XLA:TPU's out-of-memory compile errors: "Used 20.51G of 15.75G hbm." (older libtpu) and
# "the total memory required for HLO temporaries (48.00G) exceeds available HBM (15.75G)".
_OOM = (re.compile(r"Used ([0-9.]+)([KMGT]) of ([0-9.]+)([KMGT]) hbm"),
        re.compile(r"required for HLO temporaries \(([0-9.]+)([KMGT])\) exceeds available HBM "
                   r"\(([0-9.]+)([KMGT])\)"))
_UNIT = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# The learning-rate schedule is a scalar function baked into the step; its boundaries do not
# change the program's memory or collectives, so the compile uses a nominal epoch.
_NOMINAL_STEPS_PER_EPOCH = 1000
# jax's extra that pins the CUDA plugin of the installed jax, and the plugin it installs.
_CUDA_EXTRA, _CUDA_PLUGIN = "cuda13-local", "jax-cuda13-plugin"
_GPU_COMPILE_HINT = "pip install -e \".[gpu-compile]\""


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{op: {"count", "bytes"}} of every collective in a compiled module's HLO text (bytes: the
    result's, i.e. what one device sends into or receives from the collective)."""
    out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
    for shape, op in _COLLECTIVE.findall(hlo_text):
        n = sum(_ITEMSIZE.get(dt, 4) * int(np.prod([int(d) for d in dims.split(",") if d]))
                for dt, dims in _ARRAY.findall(shape))
        out[op]["count"] += 1
        out[op]["bytes"] += n
    return out


def _check_pinned(package: str, extra: str, missing: str, hint: str) -> None:
    """UserError unless `package` is installed at the version jax[extra] pins for this jax."""
    from packaging.requirements import Requirement
    try:
        have = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"{missing}: {hint} (it installs jax[{extra}], the {package} of jax "
                        f"{jax.__version__})") from None
    for text in importlib.metadata.requires("jax") or []:
        req = Requirement(text)
        if (req.name == package and req.marker is not None
                and req.marker.evaluate({"extra": extra})
                and not req.specifier.contains(have, prereleases=True)):
            raise UserError(f"{package} {have} does not match jax {jax.__version__}, which pins "
                            f"{package}{req.specifier}: {hint}")


def check_libtpu() -> None:
    """UserError unless libtpu is installed and is the version this JAX pins (jax[tpu])."""
    _check_pinned("libtpu", "tpu", "compiling for TPU needs libtpu", "pip install -e \".[tpu]\"")


def check_cuda_plugin() -> None:
    """UserError unless JAX's CUDA plugin is installed at the version this JAX pins."""
    _check_pinned(_CUDA_PLUGIN, _CUDA_EXTRA, "compiling for GPU needs JAX's CUDA plugin",
                  _GPU_COMPILE_HINT)


def check_backend(target: Target) -> None:
    """The compiler for the target's platform is installed, at the version this JAX pins."""
    (check_cuda_plugin if isinstance(target, GpuTarget) else check_libtpu)()


def tpu_devices(slc: Slice) -> list:
    """The compile-only devices of a TPU slice (nothing can run on them)."""
    from jax.experimental import topologies
    # libtpu reads these when it loads; unset on a machine with no TPU, it looks them up in the
    # GCE metadata and prints a page of warnings. They describe this compile-only host.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", slc.name)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # Another process compiling for TPU (pytest -n 2, a benchmark) holds libtpu's lock file.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topology = topologies.get_topology_desc(
        topology_name=slc.topology_name, platform="tpu",
        chip_config_name=slc.generation.chip_config, chips_per_host_bounds=slc.chips_per_host,
        num_slices=1)
    return list(topology.devices)


def gpu_devices(target: GpuTarget) -> list:
    """The compile-only devices of hosts of GPUs, from the model's XLA target config."""
    from jax.experimental import topologies
    try:
        topology = topologies.get_topology_desc(platform="cuda", topology=target.topology_name,
                                                target_config=target.model.target_config)
    except NotImplementedError:  # the plugin started a GPU backend instead (or failed to)
        raise UserError("JAX's CUDA plugin gives compile-only GPU devices only when JAX runs on "
                        f"the CPU: unset JAX_PLATFORMS or set it to 'cpu' (it is "
                        f"{os.environ.get('JAX_PLATFORMS')!r})") from None
    return list(topology.devices)


def target_devices(target: Target) -> list:
    """The compile-only devices of a TPU slice or a GPU target."""
    return gpu_devices(target) if isinstance(target, GpuTarget) else tpu_devices(target)


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The image shape the network sees: the config's size, RGB (scikit-learn's digits: grey)."""
    size = config.dataset.image_size
    return (size, size, 1 if config.dataset.name == "digits" else 3)


def check_batch(config: ml_collections.ConfigDict, target: Target) -> None:
    """Both global batches split evenly over the slice's chips (the target's GPUs) and hosts."""
    from igc_jax.training.validate import check_batch_split
    check_batch_split(config, ((target.chips, f"{target.unit}s of {target.name}"),
                               (target.hosts, f"hosts of {target.name}")))


def check_mode(conv_mode: str, target: Target) -> None:
    """Mode `native` is C++ for the CPU: a TPU or GPU program cannot contain it; `autotune`
    times each mode on the device, and compile-only devices run nothing."""
    if conv_mode == "autotune":
        raise UserError("conv_mode='autotune' times the modes on the device that trains, and "
                        "compile-only devices run nothing; compile with conv_mode='auto' (its "
                        "rules' choice) or the mode the tuner chose")
    if conv_mode == "native":
        raise UserError("conv_mode='native' is the CPU's C++ kernels and cannot compile for "
                        f"{target.platform.upper()}; use conv_mode='auto' or an XLA mode (grouped, "
                        "composed, split, ...)")


def plan(config: ml_collections.ConfigDict, topology: str) -> Target:
    """Every check before anything compiles: the config, the TPU slice or GPU target, the batch
    split, the mode, the compiler (libtpu or the CUDA plugin); the slice or target."""
    from igc_jax.training.validate import validate
    validate(config)
    target = parse_target(topology)
    check_batch(config, target)
    check_mode(config.conv_mode, target)
    check_backend(target)
    return target


@dataclasses.dataclass(frozen=True)
class StepReport:
    """What the compiler says of one step on one chip."""
    memory: dict[str, int]          # arguments, outputs, aliased, temporaries, code, total
    flops: float | None             # None: the compiler has no cost analysis (XLA:GPU)
    bytes_accessed: float | None
    collectives: dict[str, dict[str, int]]
    compile_s: float
    oom: str = ""                   # the compiler's out-of-memory message, if it refused

    @property
    def total(self) -> int:
        return self.memory["total"]


def _memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
           "code": m.generated_code_size_in_bytes}
    out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
                    + out["code"])
    return {k: int(v) for k, v in out.items()}


def cost(compiled) -> dict[str, float | None]:
    """FLOPs and bytes accessed per device; None where the compiler has no cost analysis (the
    CUDA plugin's compile-only executables return None)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis:
        return {"flops": None, "bytes_accessed": None}
    return {"flops": float(analysis.get("flops", 0.0)),
            "bytes_accessed": float(analysis.get("bytes accessed", 0.0))}


def oom_report(message: str, compile_s: float) -> StepReport:
    """A step the compiler refused for lack of HBM: the bytes it says it needed ("total", 0 if it
    does not say) and the HBM it says a chip has for the program ("available")."""
    m = next((m for m in (p.search(message) for p in _OOM) if m), None)
    memory = {"total": 0}
    if m:
        memory = {"total": int(float(m.group(1)) * _UNIT[m.group(2)]),
                  "available": int(float(m.group(3)) * _UNIT[m.group(4)])}
    line = next((ln.strip() for ln in message.splitlines() if "memory" in ln.lower()), message)
    return StepReport(memory=memory, flops=0.0, bytes_accessed=0.0,
                      collectives={}, compile_s=compile_s, oom=line[:300])


def _is_oom(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def compile_report(traced) -> StepReport:
    """Lower and compile a traced step; its memory, cost and collectives (or its OOM)."""
    t = time.perf_counter()
    try:
        compiled = traced.lower().compile()
    except Exception as e:  # XLA's runtime error type differs across jaxlib versions
        if "No PTX compilation provider" in str(e):  # XLA:GPU found no ptxas
            raise UserError(f"compiling for GPU needs ptxas (CUDA's PTX assembler), found neither "
                            f"in the nvidia-cuda-nvcc package nor in /usr/local/cuda: "
                            f"{_GPU_COMPILE_HINT}") from None
        if not _is_oom(e):
            raise
        return oom_report(str(e), time.perf_counter() - t)
    seconds = time.perf_counter() - t
    analysis = cost(compiled)
    return StepReport(memory=_memory(compiled), flops=analysis["flops"],
                      bytes_accessed=analysis["bytes_accessed"],
                      collectives=collectives(compiled.as_text()), compile_s=seconds)


@dataclasses.dataclass
class Program:
    """The config's model, optimizer and jitted steps on a mesh, with its abstract state."""
    config: ml_collections.ConfigDict
    mesh: Any
    state: Any
    train: Callable
    evaluate: Callable
    conv_modes: dict[str, tuple[str, str]]

    @property
    def num_params(self) -> int:
        return sum(math.prod(a.shape) for a in jax.tree.leaves(self.state.params))

    def _batch(self, size: int, *, mask: bool) -> dict:
        bs = sharding.batch_sharding(self.mesh)
        shape = input_shape(self.config)
        batch = {"image": jax.ShapeDtypeStruct((size, *shape), jnp.float32, sharding=bs),
                 "label": jax.ShapeDtypeStruct((size,), jnp.int32, sharding=bs)}
        if mask:
            batch["mask"] = jax.ShapeDtypeStruct((size,), jnp.float32, sharding=bs)
        return batch

    def trace_train(self, batch_size: int):
        """The train step traced at a global batch (`.lower().compile()` compiles it)."""
        return self.train.trace(self.state, self._batch(batch_size, mask=False))

    def train_report(self, batch_size: int) -> StepReport:
        return compile_report(self.trace_train(batch_size))

    def eval_report(self, batch_size: int) -> StepReport:
        return compile_report(self.evaluate.trace(self.state, self._batch(batch_size, mask=True)))


def build_program(config: ml_collections.ConfigDict, devices: list,
                  context: select.ModeContext) -> Program:
    """The trainer's steps for `config` on `devices`, with `auto` deciding in `context`."""
    mesh = sharding.make_mesh(devices)
    # Compile-only devices run nothing: `auto` takes its rules' choice there, which a run on
    # the device replaces with measurements (igc_jax.igc.autotune).
    planned = steps.plan_modes(config, input_shape(config), context, can_measure=False)
    model = steps.make_model(config, planned.plan)
    epochs = config.num_epochs if config.num_train_steps <= 0 else 1
    schedule = steps.learning_rate_schedule(
        config, _NOMINAL_STEPS_PER_EPOCH, max(int(math.ceil(epochs * _NOMINAL_STEPS_PER_EPOCH)),
                                              config.num_train_steps))
    tx = steps.make_optimizer(config, schedule)
    state, shardings = steps.abstract_state(model, tx, input_shape(config), mesh)
    train, evaluate, _ = steps.compile_steps(
        model, tx, schedule, shardings, mesh,
        average_batch_stats=config.batch_norm == "per_device")
    return Program(config, mesh, state, train, evaluate, planned.layers)


@dataclasses.dataclass(frozen=True)
class BatchSearch:
    """The largest global batch that fits, the compiles it took and the smallest that did not."""
    largest: int | None
    smallest_not_fitting: int | None
    per_batch_bytes: dict[int, int]
    budget: int       # the bytes per chip a step may take: the compiler's, once it said
    compiles: int     # this search's, not the prior's


def _line(points: list[tuple[int, int]]) -> tuple[float, float] | None:
    """(intercept, slope) of the least-squares line through (batch, bytes); None if undefined."""
    if len({b for b, _ in points}) < 2:
        return None
    n = len(points)
    mb, mt = sum(b for b, _ in points) / n, sum(t for _, t in points) / n
    var = sum((b - mb) ** 2 for b, _ in points)
    slope = sum((b - mb) * (t - mt) for b, t in points) / var
    return mt - slope * mb, slope


def _next_candidate(known: dict[int, int], lo: int | None, hi: int | None,
                    capacity: int, bisect: bool = False) -> int:
    """The next per-device batch to compile. Unbracketed (nothing too big yet): a little past
    where the least-squares line through the measured totals reaches `capacity`, so that the
    next compile brackets the boundary (near its budget the compiler trades speed for memory and
    the totals flatten, so a line aimed exactly at the budget creeps up on it from below).
    Bracketed (lo fits, hi does not): the secant through the bracket's two ends, or its midpoint
    when `bisect` (the caller's safeguard when a secant step did not halve the bracket) or when
    the totals have flattened (`_flattening`: then they do not predict the boundary). Without
    a rising line (one point, or totals the compiler did not make monotonic): a proportional
    step, else a quarter above the largest batch that fits."""
    if lo is not None and hi is not None:
        t_lo, t_hi = known[lo], known[hi]
        secant = not (bisect or t_hi <= t_lo or _flattening(known, lo, capacity))
        guess = (lo + (capacity - t_lo) * (hi - lo) / (t_hi - t_lo) if secant
                 else (lo + hi) / 2)
        return min(max(int(math.floor(guess)), lo + 1), hi - 1)
    points = sorted((b, t) for b, t in known.items() if t > 0)
    line = _line(points)
    if line is not None and line[1] > 0:
        guess = (capacity - line[0]) / line[1]
    elif len(points) == 1:
        guess = points[0][0] * capacity / points[0][1]
    else:
        guess = 1.25 * (lo or 1)
    low = (lo or 0) + 1
    if lo is not None and _flattening(known, lo, capacity):
        # Near its budget the compiler rematerialises: the totals flatten and no line predicts
        # where it gives up, so gallop until a batch does not fit.
        return max(int(math.floor(GALLOP * lo)), low)
    guess = max(guess, low) * (OVERSHOOT if len(points) > 1 else 1.0)
    return max(int(math.floor(guess)), low)


OVERSHOOT = 1.03  # the unbracketed step's margin past the line's crossing
NEAR = 0.9        # totals this close to the budget ...
FLAT = 0.5        # ... rising less than this fraction as steeply as before: rematerialising
GALLOP = 1.25     # the unbracketed step from there


def _flattening(known: dict[int, int], lo: int, capacity: int) -> bool:
    """Whether the totals of the largest batches that fit are near the budget and rose less than
    FLAT times as steeply over the last step as over the steepest step before it (the compiler
    trading recomputation for memory; a linear growth never flattens)."""
    fits = sorted((b, t) for b, t in known.items() if b <= lo and t > 0)
    slopes = [(t2 - t1) / (b2 - b1) for (b1, t1), (b2, t2) in zip(fits, fits[1:])]
    return (len(slopes) >= 2 and fits[-1][1] >= NEAR * capacity
            and slopes[-1] < FLAT * max(slopes[:-1]))


def largest_batch(measure: Callable[[int], StepReport], num_devices: int, capacity: int,
                  start: int, max_compiles: int = 8,
                  prior: dict[int, int] | None = None, tolerance: float = 0.0) -> BatchSearch:
    """Bisection over compiles, each step guided by a line through the measured totals, for the
    largest per-device batch whose step fits `capacity` bytes per chip; reported as global
    batches. `start` is a per-device batch. `prior` ({global batch: bytes per chip} of an
    earlier search of the same program, `capacity` being the compiler's budget it learned) lets
    a search go on where that one stopped; `max_compiles` counts the new compiles only. It stops
    when the bracket is one example per device wide, or `tolerance` (a fraction) of the largest
    batch that fits."""

    def done(lo: int | None, hi: int | None) -> bool:
        return lo is not None and hi is not None and hi - lo <= max(1, tolerance * lo)

    known: dict[int, int] = {g // num_devices: t for g, t in (prior or {}).items()}
    lo = max((b for b, t in known.items() if t <= capacity), default=None)
    hi = min((b for b, t in known.items() if t > capacity), default=None)
    if lo is not None:
        b = _next_candidate(known, lo, hi, capacity)
    else:
        b = max(hi // 2, 1) if hi is not None else max(start, 1)
    compiles, width = 0, None
    while compiles < max_compiles and b not in known and not done(lo, hi):
        report = measure(b * num_devices)
        compiles += 1
        known[b] = report.total
        # The compiler's own HBM budget for a program (a little under the chip's HBM), once an
        # out-of-memory message has said it.
        capacity = min(capacity, report.memory.get("available", capacity))
        if report.oom or report.total > capacity:
            hi = b if hi is None else min(hi, b)
        else:
            lo = b if lo is None else max(lo, b)
        if done(lo, hi) or (hi is not None and lo is None and b == 1):
            break
        new_width = hi - lo if lo is not None and hi is not None else None
        bisect = width is not None and new_width is not None and 2 * new_width > width
        width = new_width
        b = _next_candidate(known, lo, hi, capacity, bisect) if lo is not None else max(b // 2, 1)
    return BatchSearch(largest=lo * num_devices if lo else None,
                       smallest_not_fitting=hi * num_devices if hi else None,
                       per_batch_bytes={k * num_devices: v for k, v in sorted(known.items())},
                       budget=capacity, compiles=compiles)
