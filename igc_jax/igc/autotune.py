"""Choose each IGC layer's computation mode by timing the candidates on the device that runs it.

Which mode is fastest depends on the layer (2 channels per group or 128), the dtype, the
per-device batch and the chip, and nothing but a measurement on that chip decides it. `tune`
times every candidate mode of every distinct layer shape, forward plus backward (the input and
both kernel gradients), on this process's first local device: a compile and a warm-up call each,
then the median of timed calls taken in interleaved rounds, `REPS` at least and more while the
layer's `LAYER_BUDGET_S` lasts (`time_modes`). It keeps the fastest.

Every measurement is cached on disk (`cache_dir()`: `$IGC_JAX_AUTOTUNE_DIR`, else
`~/.cache/igc_jax/autotune`), one JSON file per key: device kind, JAX and jaxlib versions, layer
shape, dtype, per-device batch and candidates. A second run of the same config measures nothing;
an unreadable or damaged entry is measured again, with one warning line. `tune` is a plain
function of this process: a multi-process run calls it on process 0 only and shares the plan
(`igc_jax.training.steps.plan_modes`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from igc_jax.igc import modes, select
from igc_jax.igc.select import LayerShape, ModeContext, ModePlan

log = logging.getLogger(__name__)

# What a config's conv_mode may be: the two ways to decide per layer, or one mode for all.
CONV_MODES = ("auto", "autotune", *modes.MODES)
REPS = 5                 # timed rounds at least, after the warm-ups
MAX_REPS = 100           # timed rounds at most: short layers take more, for a stable median
LAYER_BUDGET_S = 2.0     # a layer's timed rounds (not its compiles and warm-ups)
SPLIT_MAX_GROUPS = 32    # `split` compiles one convolution per group: not for L100M2's 100+
SLOWER = 3.0             # a warm-up this many times the best so far ends a candidate's timing
CACHE_VERSION = 1        # bump when what a timing means changes


def measures(conv_mode: str, backend: str) -> bool:
    """Whether a run measures its layers: `autotune` everywhere, `auto` on GPU and TPU (on CPU
    `auto` is the measured rules of `igc_jax.igc.select`)."""
    return conv_mode == "autotune" or (conv_mode == "auto" and backend != "cpu")


def candidates(shape: LayerShape, context: ModeContext) -> tuple[str, ...]:
    """The modes worth timing for a layer, the rules' choice first: every mode valid on the
    backend, less those whose compile alone would cost more than a layer is worth (`split`
    beyond SPLIT_MAX_GROUPS groups, `taps` beyond select.TAPS_MAX_TERMS terms or off the CPU,
    whose fusions it is written for)."""
    out = ["grouped", "composed", "grouped_mix"]
    if shape.L <= SPLIT_MAX_GROUPS:
        out.append("split")
    kh, kw = shape.kernel
    if context.backend == "cpu" and kh * kw * (shape.C_in // shape.L) <= select.TAPS_MAX_TERMS:
        out.append("taps")
    if context.native:
        out.append("native")
    # The rules' choice first: a candidate far slower than it then stops after its warm-up.
    first = select.select_mode(shape, context)
    return tuple(sorted(out, key=lambda m: m != first))


@dataclasses.dataclass(frozen=True)
class Tuned:
    """One layer shape's measurement: the median milliseconds of each candidate, the choice, and
    whether it came from the cache."""
    shape: LayerShape
    timings_ms: dict[str, float]
    choice: str
    cached: bool

    def describe(self) -> str:
        times = ", ".join(f"{m} {t:.3g}" for m, t in sorted(self.timings_ms.items(),
                                                              key=lambda kv: kv[1]))
        return (f"{self.shape.describe()} on {'x'.join(map(str, self.shape.size or ()))}: "
                f"{self.choice} ({times} ms{', cached' if self.cached else ''})")

    def to_json(self) -> dict[str, Any]:
        return {"shape": dataclasses.asdict(self.shape), "timings_ms": self.timings_ms,
                "choice": self.choice, "cached": self.cached}


def cache_dir() -> Path:
    """Where measurements are kept: $IGC_JAX_AUTOTUNE_DIR, else ~/.cache/igc_jax/autotune."""
    return Path(os.environ.get("IGC_JAX_AUTOTUNE_DIR")
                or Path.home() / ".cache" / "igc_jax" / "autotune")


def cache_key(shape: LayerShape, dtype: str, batch: int, device: Any,
              mode_names: Iterable[str]) -> dict[str, Any]:
    """Everything a timing depends on, as JSON: the chip, the software, the layer and its input."""
    import jaxlib
    return {"version": CACHE_VERSION, "device_kind": device.device_kind,
            "platform": device.platform, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "shape": dataclasses.asdict(shape), "dtype": dtype, "batch": batch,
            "candidates": sorted(mode_names)}


def _entry_path(directory: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return directory / f"{digest}.json"


def read_entry(directory: Path, key: dict[str, Any]) -> dict[str, float] | None:
    """The cached timings for `key`, or None when there are none; a damaged entry (unreadable,
    not JSON, another key, timings missing) is None too, with one warning line."""
    path = _entry_path(directory, key)
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
        timings = {str(m): float(t) for m, t in entry["timings_ms"].items()}
        if entry["key"] != json.loads(json.dumps(key)) or set(timings) != set(key["candidates"]):
            raise ValueError("it is for another layer or other candidates")
        return timings
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("autotune cache entry %s is damaged (%s: %s); measuring that layer again",
                    path, type(e).__name__, e)
        return None


def write_entry(directory: Path, key: dict[str, Any], timings: dict[str, float]) -> None:
    """Save one layer's timings atomically (a reader never sees half a file); a cache that
    cannot be written costs a re-measurement next time, not the run."""
    path = _entry_path(directory, key)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "timings_ms": timings}, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("autotune cache %s not written (%s); the next run measures again",
                    directory, e)


def _layer_step(mode: str, shape: LayerShape) -> Callable:
    """The jitted forward + backward of one layer in `mode`: (x, primary, secondary, dy) ->
    (dx, dprimary, dsecondary), the cotangent an argument so nothing folds it away."""
    fn = modes.MODES[mode]
    kh, kw = shape.kernel
    padding = ((kh // 2, kh // 2), (kw // 2, kw // 2))

    def step(x, primary, secondary, dy):
        _, vjp = jax.vjp(lambda *a: fn(*a, L=shape.L, M=shape.M, strides=shape.strides,
                                       padding=padding), x, primary, secondary)
        return vjp(dy)
    return jax.jit(step)


def _layer_args(shape: LayerShape, dtype: str, batch: int, device: Any) -> tuple:
    """Random inputs, kernels and output cotangent of the layer's shapes, on `device`."""
    kh, kw = shape.kernel
    h, w = shape.size or (32, 32)
    ho, wo = -(-h // shape.strides[0]), -(-w // shape.strides[1])
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s, np.float32) for s in
              ((batch, h, w, shape.C_in), (kh, kw, shape.C_in // shape.L, shape.C),
               (1, 1, shape.C // shape.M, shape.C), (batch, ho, wo, shape.C))]
    return tuple(jax.device_put(jnp.asarray(a, dtype), device) for a in arrays)


def _seconds(step: Callable, args: tuple) -> float:
    t = time.perf_counter()
    jax.block_until_ready(step(*args))
    return time.perf_counter() - t


def time_modes(names: Iterable[str], shape: LayerShape, args: tuple) -> dict[str, float]:
    """Median milliseconds of one call of the layer's forward + backward in each mode.

    Each candidate, in order, is compiled (ahead of time: no call is spent on it) and warmed up
    by one timed call; one whose warm-up
    took SLOWER times the fastest warm-up so far is out, its warm-up its time (on the CPU XLA's
    grouped convolution takes seconds where `native` takes milliseconds). The others then take
    their timed calls in interleaved rounds, so that load from other jobs hits them alike: REPS
    rounds, then more while LAYER_BUDGET_S lasts (up to MAX_REPS: a layer of a millisecond gets
    a median of many calls, one of a second few)."""
    racing: dict[str, Callable] = {}
    warm: dict[str, float] = {}
    for m in names:
        step = _layer_step(m, shape).lower(*args).compile()  # compiled without running
        warm[m] = _seconds(step, args)
        if warm[m] <= SLOWER * min(warm.values()):
            racing[m] = step
    times: dict[str, list[float]] = {m: [] for m in racing}
    deadline = time.perf_counter() + LAYER_BUDGET_S
    for r in range(MAX_REPS):
        if r >= REPS and time.perf_counter() > deadline:
            break
        for m, step in racing.items():
            times[m].append(_seconds(step, args))
    return {m: round(1e3 * (statistics.median(times[m]) if m in times else warm[m]), 4)
            for m in warm}


def tune_layer(shape: LayerShape, dtype: str, batch: int, context: ModeContext,
               directory: Path, device: Any) -> Tuned:
    """One layer shape's timings (from the cache, else measured and cached) and its choice."""
    names = candidates(shape, context)
    key = cache_key(shape, dtype, batch, device, names)
    timings = read_entry(directory, key)
    cached = timings is not None
    if timings is None:
        timings = time_modes(names, shape, _layer_args(shape, dtype, batch, device))
        write_entry(directory, key, timings)
    return Tuned(shape, timings, min(timings, key=timings.get), cached)


def tune(shapes: Iterable[LayerShape], dtype: str, batch: int, context: ModeContext,
         directory: Path | None = None) -> tuple[ModePlan, list[Tuned]]:
    """The plan that runs each distinct layer shape in its fastest measured mode, with the
    measurements; each is logged as it completes. `batch` is the per-device batch."""
    directory = directory or cache_dir()
    device = jax.local_devices()[0]
    found = []
    for shape in dict.fromkeys(shapes):
        found.append(tune_layer(shape, dtype, batch, context, directory, device))
        log.warning("autotune (%s, batch %d per device, %s): %s", device.device_kind, batch,
                    dtype, found[-1].describe())
    return ModePlan(default="auto", by_shape=tuple((t.shape, t.choice) for t in found)), found
