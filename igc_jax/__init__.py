"""igc-jax: Interleaved Group Convolutions (IGCV1, Zhang et al., ICCV 2017) in JAX/Flax.

The public API, loaded on first use (so `igc_jax.configs` and experiment files import no JAX):

    import igc_jax
    layer = igc_jax.IGCConv(features=48, L=24, M=2)              # one IGC layer (Flax linen)
    y = igc_jax.igc_apply(x, primary, secondary, L=24, M=2)      # the same as a function
    net = igc_jax.build_model(igc_jax.cifar_model("L24M2,D20"), num_classes=10)
    net = igc_jax.build_model(igc_jax.imagenet_model("IGC-L16M16+Ident."), num_classes=1000)
    igc_jax.MODELS, igc_jax.IMAGENET_NETWORKS                    # the model names
    pretrained = igc_jax.load_pretrained("converted/l16m16")     # module, variables, preprocessing
    logits = pretrained(images)                                  # 0..255 RGB, 224×224

Layout: `igc/` the layer (kernel algebra, computation modes, the C++ kernels, the rules and the
autotuner that choose a mode, the Flax modules), `models/` the networks, `data/` the input
pipeline, `training/` steps, loop, checkpoints and sharding, `mxnet/` the released models'
format and converter, `configs/` the config schema and recipes; `main`, `evaluate`, `summary`,
`sweep`, `report`, `convert_mxnet` and `compile` are the command-line tools (docs/design.md,
"Modules").

"spec §N", throughout the code, tests and docs, is section N of docs/spec.md: the paper's layer,
networks and training setup as the authors' official code has them.
"""
from __future__ import annotations

import glob
import importlib
import logging
import os

_EXPORTS = {
    "IGCConv": "igc_jax.igc.layers",
    "igc_apply": "igc_jax.igc.layers",
    "ModeContext": "igc_jax.igc.select",
    "ModePlan": "igc_jax.igc.select",
    "build_model": "igc_jax.models",
    "MODELS": "igc_jax.models",
    "cifar_model": "igc_jax.configs.networks",
    "imagenet_model": "igc_jax.configs.networks",
    "network_name": "igc_jax.configs.networks",
    "IMAGENET_NETWORKS": "igc_jax.configs.networks",
    "load_pretrained": "igc_jax.mxnet.pretrained",
    "Pretrained": "igc_jax.mxnet.pretrained",
}
__all__ = sorted(_EXPORTS)
# JAX probes every backend it knows and logs, at INFO, why the TPU one failed (no libtpu, no chip):
# on a CPU-only machine the first line a user would see, about hardware never asked for.
_ABSENT_TPU = "Unable to initialize backend 'tpu'"


def tpu_expected() -> bool:
    """Whether a TPU failure means something here: JAX_PLATFORMS asks for one, or the machine has
    TPU device files (/dev/accel*, /dev/vfio/<group>)."""
    asked = "tpu" in os.environ.get("JAX_PLATFORMS", "").lower()
    return asked or bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


class _AbsentTpuFilter(logging.Filter):
    """Drops only JAX's failed-TPU-probe line, and only where no TPU is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith(_ABSENT_TPU) and not tpu_expected())


logging.getLogger("jax._src.xla_bridge").addFilter(_AbsentTpuFilter())


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'igc_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
