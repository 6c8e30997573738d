"""Which computation mode computes each IGC layer: the rules of `auto`, and the plan a network
is built with.

`ModeContext` says what the run has: the backend it compiles for and whether the C++ kernels of
mode `native` built here. `select_mode(shape, context)` is a pure function of the two. A run
decides every layer's mode once, before its network is built: `decide` turns the network's layer
shapes (`igc_jax.igc.layers.layer_shapes`, from shapes alone) into a `ModePlan`, the network is
built with that plan, and the run logs and saves it. Nothing here builds C++: only
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

Depthwise convolutions (IGCV3's 3×3 middle conv, `igc_jax.igc.depthwise`: a primary conv with one
channel per group and no secondary) have two modes, DEPTHWISE_MODES. The rule: `native` on CPU
where the C++ kernels built (one 112²×96 stride-2 layer, batch 8, forward + backward: 45.5 ms
against XLA's grouped convolution's 1,165 ms, benchmarks/results/igcv3.md), else `grouped`.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Iterable, Mapping

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
# The modes of a depthwise conv: XLA's grouped convolution, or the native primary-conv kernel.
DEPTHWISE_MODES = ("grouped", "native")


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """What `select_mode` looks at: the layer's groups, widths, kernel and stride.

    depthwise: a depthwise conv (L = C_in = C groups of one channel, M = 1, no secondary conv),
    not an IGC layer.
    """
    L: int
    M: int
    C_in: int
    C: int
    kernel: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    size: tuple[int, int] | None = None  # the input's (H, W), where known
    depthwise: bool = False

    def describe(self) -> str:
        s = f", stride {self.strides[0]}" if self.strides != (1, 1) else ""
        k = f"{self.kernel[0]}×{self.kernel[1]}"
        if self.depthwise:
            return f"depthwise {self.C} {k}{s}"
        return f"{self.C_in}→{self.C} L{self.L} M{self.M} {k}{s}"


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
    if shape.depthwise:
        return "native" if context.native else "grouped"
    if context.native and (native_in_registers(shape) or shape.L > SPLIT_MAX_GROUPS
                           or tiny_input(shape)):
        return "native"
    if shape.L <= SPLIT_MAX_GROUPS:
        return "split"
    kh, kw = shape.kernel
    if kh * kw * (shape.C_in // shape.L) <= TAPS_MAX_TERMS:
        return "taps"
    return "composed"


@dataclasses.dataclass(frozen=True)
class ModePlan:
    """The computation mode of every IGC layer of a network, decided before it is built.

    `by_shape` lists the layer shapes a run decided one by one; every other shape gets `default`:
    a mode, or `auto`, which the layer resolves itself with `select_mode` in this process's
    context when it is traced (for library use; a run's plan names every layer's mode). Frozen
    and hashable: it is a field of the Flax modules that use it.
    """
    default: str = "auto"
    by_shape: tuple[tuple[LayerShape, str], ...] = ()

    def mode(self, shape: LayerShape) -> str:
        """The mode planned for a layer of this shape."""
        return dict(self.by_shape).get(shape, self.default)

    def to_json(self) -> dict:
        return {"default": self.default,
                "by_shape": [[dataclasses.asdict(s), m] for s, m in self.by_shape]}

    @classmethod
    def from_json(cls, d: Mapping) -> "ModePlan":
        def shape(f: Mapping) -> LayerShape:
            size = f.get("size")
            return LayerShape(**{**f, "kernel": tuple(f["kernel"]),
                                 "strides": tuple(f["strides"]),
                                 "size": tuple(size) if size is not None else None})
        return cls(d["default"], tuple((shape(s), m) for s, m in d["by_shape"]))


def depthwise_mode(conv_mode: str, shape: LayerShape, context: ModeContext) -> str:
    """A depthwise conv's mode under `conv_mode`: the same mode where it is one of
    DEPTHWISE_MODES, else (`auto`, or a mode only IGC layers have) `auto`'s rule."""
    return conv_mode if conv_mode in DEPTHWISE_MODES else select_mode(shape, context)


def decide(shapes: Iterable[LayerShape], conv_mode: str, context: ModeContext) -> ModePlan:
    """The plan for a network with these layer shapes: one mode for every IGC layer (an
    explicit `conv_mode`), or `auto`'s rules applied to each distinct shape in `context`; each
    depthwise conv's shape gets `depthwise_mode`."""
    distinct = dict.fromkeys(shapes)
    if conv_mode != "auto":
        return ModePlan(default=conv_mode, by_shape=tuple(
            (s, depthwise_mode(conv_mode, s, context)) for s in distinct if s.depthwise))
    return ModePlan(default=conv_mode,
                    by_shape=tuple((s, select_mode(s, context)) for s in distinct))


def layer_modes(shapes: Mapping[str, LayerShape], plan: ModePlan) -> dict[str, tuple[str, str]]:
    """{layer path: (its shape, described; its planned mode)}, for logs and status.json."""
    return {path: (shape.describe(), plan.mode(shape)) for path, shape in shapes.items()}
