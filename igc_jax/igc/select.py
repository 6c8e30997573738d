"""Which computation mode computes an IGC layer (`auto`), decided from an explicit context.

`ModeContext` says what the run has: the backend it compiles for and whether the C++ kernels of
mode `native` built here. `select_mode(shape, context)` is a pure function of the two, so a run
decides every layer's mode once, when its model is built (`igc_jax.igc.layers.planned_modes`
lists them without compiling), and logs and saves the choice. Nothing here builds C++: only
`detect_context` asks `native.available()`, once per process.

The rules, each from `benchmarks/results/cpu.md` (forward + backward, 2-core CPU; the test
`tests/test_select.py` checks them against that file's measurements):
- GPU/TPU: `grouped`. cuDNN and XLA:TPU compute grouped convolutions natively; each device runs
  them on its own shard of the batch (`igc_jax.training.steps` runs the step under `shard_map`).
- CPU, with the C++ kernels: `native` whenever its primary kernel picks its inputs in registers
  (`native_in_registers`: every CIFAR layer, ImageNet L100M2). For wide groups it gathers every
  input row first and `split` beats it 2.4-3× (L4M32 102 vs 275 ms, L16M16 181 vs 441 ms), except
  on inputs of at most NATIVE_ANY_MAX_PIXELS pixels: there a step of either costs about a
  millisecond, and XLA compiling `split`'s per-group convolutions and their gradients takes
  seconds more (the quick start's L4M16 layers on 4×4 and 2×2 inputs: whole runs with them in
  `native` took 24.6 CPU-seconds, 32.3 with them in `split`, benchmarks/results/quickstart.md;
  tests/test_select.py checks `auto` against that file).
- CPU, without them: `split` (one dense conv per group) for at most SPLIT_MAX_GROUPS groups; for
  more groups (L100M2) `taps` when its fusions have at most TAPS_MAX_TERMS terms (L100M2 stage 1
  273 ms vs `composed` 564; stage 4 65 vs 625), else `composed`.
"""
from __future__ import annotations

import dataclasses
import functools
import logging

log = logging.getLogger(__name__)

BACKENDS = ("cpu", "gpu", "tpu")
# The most groups `split` runs as separate dense convs: the widest measured (IGC-L24M2's layers,
# where it is within 1.4× of the best XLA mode; beyond that its per-group convs get too small).
SPLIT_MAX_GROUPS = 24
# The most terms (kh·kw·C_in/L) of one `taps` fusion: its gradient's accumulator holds that many
# output-sized planes (72 = 3×3 with 8 inputs per group, the largest measured, L24M2 stage 3).
TAPS_MAX_TERMS = 72
# The largest input (H·W pixels) on which `native` computes even wide groups: 4×4. The quick
# start's 4×4 and 2×2 layers are measured (native faster over a whole run); IGC-L4M8's 8×8 stage 3
# is not (split 14.5 vs native 46.8 ms per fwd+bwd, cpu.md).
NATIVE_ANY_MAX_PIXELS = 16


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """What `select_mode` looks at: the layer's groups, widths, kernel and stride."""
    L: int
    M: int
    C_in: int
    C: int
    kernel: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    size: tuple[int, int] | None = None  # the input's (H, W), where known

    def describe(self) -> str:
        s = f", stride {self.strides[0]}" if self.strides != (1, 1) else ""
        return f"{self.C_in}→{self.C} L{self.L} M{self.M} {self.kernel[0]}×{self.kernel[1]}{s}"


@dataclasses.dataclass(frozen=True)
class ModeContext:
    """What `auto` may use: the backend the step compiles for and whether `native` built here."""
    backend: str = "cpu"
    native: bool = False

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.native and self.backend != "cpu":
            raise ValueError("the native C++ kernels are CPU-only")


# For work that only needs shapes (summaries, conversion, eval_shape): builds nothing.
SHAPES_ONLY = ModeContext(backend="cpu", native=False)


@functools.cache
def detect_context(backend: str | None = None) -> ModeContext:
    """This process's context: its backend and, on CPU, whether the C++ kernels build (once).

    A failed build is reported here, once, in one line, with the fallback it causes.
    """
    import jax

    from igc_jax.igc import native

    backend = backend or jax.default_backend()
    has_native = backend == "cpu" and native.available()
    if backend == "cpu" and not has_native:
        log.warning("IGC mode native unavailable (%s); auto uses the XLA modes split/taps/composed",
                    native.build_error())
    return ModeContext(backend=backend, native=has_native)


def native_in_registers(shape: LayerShape) -> bool:
    """Whether the native primary kernel picks its inputs by lane shuffles in registers (no
    gathered expansion): 3×3, C/L dividing 8, C_in/L in 1, 2, 4, 8 and at most 2·C/L."""
    ci, co = shape.C_in // shape.L, shape.C // shape.L
    return (tuple(shape.kernel) == (3, 3) and 8 % co == 0
            and (ci == co or (8 % ci == 0 and ci <= 2 * co)))


def tiny_input(shape: LayerShape) -> bool:
    """Whether the layer's input has at most NATIVE_ANY_MAX_PIXELS pixels (unknown: no)."""
    return shape.size is not None and shape.size[0] * shape.size[1] <= NATIVE_ANY_MAX_PIXELS


def select_mode(shape: LayerShape, context: ModeContext) -> str:
    """The mode `auto` uses for one layer shape in one context (the rules of the module doc)."""
    if context.backend != "cpu":
        return "grouped"
    if context.native and (native_in_registers(shape) or shape.L > SPLIT_MAX_GROUPS
                           or tiny_input(shape)):
        return "native"
    if shape.L <= SPLIT_MAX_GROUPS:
        return "split"
    kh, kw = shape.kernel
    if kh * kw * (shape.C_in // shape.L) <= TAPS_MAX_TERMS:
        return "taps"
    return "composed"
