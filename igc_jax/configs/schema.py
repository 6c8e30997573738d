"""The config schema: every field declared once, with its default, allowed values and meaning.

`FIELDS` is the one declaration. From it come the defaults (`igc_jax.configs.base_config`), the
per-field checks (`check_field`, run by `igc_jax.training.validate` before anything is built),
`--help`'s field list and the field reference `docs/config.md` (`python -m igc_jax.configs.schema`
writes it; a test keeps it current). Pure Python, no JAX: experiment files load it.

Allowed values owned by a higher layer (the datasets, normalisations and augmentations of
`igc_jax.data`, the computation modes of `igc_jax.igc`) are named here by a vocabulary
(`Vocabulary("datasets")`); the validating layer supplies them, so each list exists once.
`model.*` fields are the network constructor's keyword arguments, checked by
`igc_jax.models.validate_model_config` against the constructor itself.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Union

from igc_jax.errors import UserError

LR_SCHEDULES = ("cifar", "imagenet", "exponential", "constant")
DTYPES = ("float32", "bfloat16")
BATCH_NORMS = ("global", "per_device")
_STEPS_RANGE = re.compile(r"^(\d+):(\d+)$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Allowed values kept by a higher layer, e.g. `Vocabulary("datasets")`."""
    name: str


@dataclasses.dataclass(frozen=True)
class Integer:
    low: int | None = None
    sentinel: int | None = None      # one value below `low` with its own meaning (e.g. -1 = auto)

    def check(self, key: str, v: Any, vocabularies: Mapping[str, tuple[str, ...]]) -> None:
        ok = _is_int(v) and (self.low is None or v >= self.low or v == self.sentinel)
        if not ok:
            raise UserError(f"{key} must be {self.describe(vocabularies)}, got {v!r}")

    def describe(self, vocabularies: Mapping[str, tuple[str, ...]] = {}) -> str:
        if self.low is None:
            return "an integer"
        extra = f" (or {self.sentinel})" if self.sentinel is not None else ""
        return f"an integer >= {self.low}{extra}"


@dataclasses.dataclass(frozen=True)
class Number:
    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def check(self, key: str, v: Any, vocabularies: Mapping[str, tuple[str, ...]]) -> None:
        ok = _is_number(v) and (v > self.low if self.open_low else v >= self.low) and (
            v < self.high if self.open_high else v <= self.high)
        if not ok:
            raise UserError(f"{key} must be {self.describe()}, got {v!r}")

    def describe(self, vocabularies: Mapping[str, tuple[str, ...]] = {}) -> str:
        if self.high == math.inf:
            return f"a finite number {'>' if self.open_low else '>='} {self.low}"
        return (f"a finite number in {'(' if self.open_low else '['}{self.low}, {self.high}"
                f"{')' if self.open_high else ']'}")


@dataclasses.dataclass(frozen=True)
class Choice:
    values: Union[tuple[str, ...], Vocabulary]

    def allowed(self, vocabularies: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
        if isinstance(self.values, Vocabulary):
            return tuple(vocabularies[self.values.name])
        return self.values

    def check(self, key: str, v: Any, vocabularies: Mapping[str, tuple[str, ...]]) -> None:
        allowed = self.allowed(vocabularies)
        if v not in allowed:
            raise UserError(f"unknown {key} {v!r}; choose from {', '.join(allowed)}")

    def describe(self, vocabularies: Mapping[str, tuple[str, ...]] = {}) -> str:
        if isinstance(self.values, Vocabulary) and self.values.name not in vocabularies:
            return f"one of the {self.values.name}"
        return "one of " + ", ".join(f"`{v}`" for v in self.allowed(vocabularies))


@dataclasses.dataclass(frozen=True)
class Boolean:
    def check(self, key: str, v: Any, vocabularies: Mapping[str, tuple[str, ...]]) -> None:
        if not isinstance(v, bool):
            raise UserError(f"{key} must be True or False, got {v!r}")

    def describe(self, vocabularies: Mapping[str, tuple[str, ...]] = {}) -> str:
        return "True or False"


@dataclasses.dataclass(frozen=True)
class String:
    def check(self, key: str, v: Any, vocabularies: Mapping[str, tuple[str, ...]]) -> None:
        if not isinstance(v, str):
            raise UserError(f"{key} must be a string, got {v!r}")

    def describe(self, vocabularies: Mapping[str, tuple[str, ...]] = {}) -> str:
        return "a string"


@dataclasses.dataclass(frozen=True)
class StepsRange:
    """Empty, or "START:STOP" with 0 <= START < STOP."""

    def check(self, key: str, v: Any, vocabularies: Mapping[str, tuple[str, ...]]) -> None:
        if v == "":
            return
        m = _STEPS_RANGE.match(v) if isinstance(v, str) else None
        if m is None or int(m.group(1)) >= int(m.group(2)):
            raise UserError(f"{key} must be empty or 'START:STOP' with 0 <= START < STOP, "
                            f"got {v!r}")

    def describe(self, vocabularies: Mapping[str, tuple[str, ...]] = {}) -> str:
        return "`\"\"` or `\"START:STOP\"` with 0 <= START < STOP"


Kind = Union[Integer, Number, Choice, Boolean, String, StepsRange]


@dataclasses.dataclass(frozen=True)
class Field:
    key: str        # dotted path in the config
    default: Any
    kind: Kind
    help: str       # one line: what it means to a user


FIELDS: tuple[Field, ...] = (
    Field("seed", 0, Integer(0),
          "everything random (init, data order, augmentation) derives from it"),
    Field("dataset.name", "cifar10", Choice(Vocabulary("datasets")),
          "TFDS data set, `arrays` (local .npz files) or `digits` (scikit-learn's, bundled)"),
    Field("dataset.data_dir", "", String(),
          "TFDS data dir (default $TFDS_DATA_DIR; local or gs://), or the .npz folder of `arrays`"),
    Field("dataset.num_classes", 10, Integer(1), "classes of the labels"),
    Field("dataset.image_size", 32, Integer(1), "side of the square input the network sees"),
    Field("dataset.normalization", "cifar10", Choice(Vocabulary("normalizations")),
          "name of the per-channel mean/std constants (spec §4)"),
    Field("dataset.augment", "cifar", Choice(Vocabulary("augmentations")),
          "training augmentation: `cifar` (pad 4 with the mean colour, crop, flip: official), "
          "`imagenet_mxnet` (official ImageNet), `imagenet_inception`, ..., `none`"),
    Field("dataset.color_jitter", 0.4, Number(0.0, 1.0),
          "strength of `imagenet_inception`'s colour jitter (0: off)"),
    Field("dataset.num_workers", -1, Integer(0, sentinel=-1),
          "data worker processes: -1 = auto (sized to the CPUs, logged), 0 = threads in this "
          "process"),
    Field("batch_size", 64, Integer(1), "global training batch, divided over processes and "
          "devices"),
    Field("eval_batch_size", 500, Integer(1), "global evaluation batch"),
    Field("num_epochs", 400.0, Number(0.0), "training length in epochs"),
    Field("num_train_steps", -1, Integer(), "training length in steps; wins over num_epochs "
          "when > 0"),
    Field("learning_rate", 0.1, Number(0.0, open_low=True), "peak learning rate of SGD"),
    Field("momentum", 0.9, Number(0.0, 1.0, open_high=True), "SGD momentum"),
    Field("nesterov", True, Boolean(), "Nesterov momentum (spec §4)"),
    Field("weight_decay", 1e-4, Number(0.0), "L2 decay added to the gradient of every "
          "parameter (spec §4)"),
    Field("lr_schedule", "cifar", Choice(LR_SCHEDULES),
          "`cifar`: ×0.1 at 1/2, 3/4, 7/8 of training; `imagenet`: ×0.1 every 30 epochs; "
          "`exponential`: ×`lr_decay_per_epoch` at every epoch boundary (IGCV3); `constant`"),
    Field("lr_decay_per_epoch", 0.98, Number(0.0, 1.0, open_low=True),
          "the `exponential` schedule's factor per epoch (IGCV3's official 0.98)"),
    Field("warmup_epochs", 0.0, Number(0.0), "linear warmup before the schedule"),
    Field("dtype", "float32", Choice(DTYPES),
          "compute dtype (parameters, BatchNorm statistics and logits stay float32)"),
    Field("conv_mode", "auto", Choice(Vocabulary("conv_modes")),
          "how each IGC layer is computed, decided once per layer shape and logged: `auto` "
          "(CPU: the measured rules; GPU/TPU: timed on the device), `autotune` (timed on any "
          "backend, cached in $IGC_JAX_AUTOTUNE_DIR or ~/.cache/igc_jax/autotune), or one mode "
          "of igc_jax.igc.modes for every layer; depthwise convs (IGCV3) take `grouped` or "
          "`native` when named, else auto's rule (native on CPU where built)"),
    Field("log_every_steps", 100, Integer(1), "training metrics every this many steps"),
    Field("eval_every_steps", 0, Integer(0), "test metrics every this many steps (0: every "
          "epoch)"),
    Field("checkpoint_every_steps", 1000, Integer(1), "a checkpoint every this many steps (and "
          "at the end and on preemption)"),
    Field("keep_checkpoints", 3, Integer(1), "the newest this many checkpoints are kept"),
    Field("max_train_seconds", 0.0, Number(0.0), "stop with a checkpoint after this much "
          "training time (0: no limit)"),
    Field("batch_norm", "global", Choice(BATCH_NORMS),
          "BatchNorm statistics over the `global` batch (1 and N devices train the same "
          "network) or `per_device` (the authors' multi-GPU runs)"),
    Field("sigterm_check_every_steps", 10, Integer(1),
          "multi-process runs agree on a SIGTERM every this many steps"),
    Field("profile_steps", "", StepsRange(),
          "\"START:STOP\": a jax.profiler trace of those steps under tensorboard/"),
)
BY_KEY = {f.key: f for f in FIELDS}


def check_field(key: str, value: Any, vocabularies: Mapping[str, tuple[str, ...]]) -> None:
    """UserError naming the field, the value and what is allowed, unless `value` is allowed."""
    BY_KEY[key].kind.check(key, value, vocabularies)


def defaults() -> dict[str, Any]:
    """{dotted key: default} of every field, `model.name` included."""
    return {"model.name": "", **{f.key: f.default for f in FIELDS}}


def reference(vocabularies: Mapping[str, tuple[str, ...]] = {}) -> str:
    """The field reference as a Markdown table (docs/config.md)."""
    rows = ["| field | default | allowed | meaning |", "|---|---|---|---|"]
    for f in FIELDS:
        rows.append(f"| `{f.key}` | `{f.default!r}` | {f.kind.describe(vocabularies)} | "
                    f"{f.help} |")
    rows.append("| `model.*` | | the network constructor's keyword arguments "
                "(`model.name` picks it from `igc_jax.models.MODELS`; `python -m igc_jax.summary "
                "--config=<file>` shows a network's layers) | the network; `model.init`: "
                "`he_normal` (official IGCV1: convs N(0, 2/fan_in)), `torch_default` (torch.nn's "
                "uniform ±sqrt(1/fan_in) kernels and classifier bias) or `mxnet_xavier` "
                "(official IGCV3: convs and classifier N(0, 2/fan_in)) |")
    return "\n".join(rows) + "\n"
