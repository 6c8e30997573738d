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

Layout: `igc/` the layer (kernel algebra, computation modes, their selection, C++ and Pallas
kernels, Flax modules), `models/` the networks, `data/` the input pipeline, `training/` steps,
loop, checkpoints and sharding, `mxnet/` the released models' format and converter, `configs/`
the config schema and recipes; `main`, `evaluate`, `summary`, `sweep`, `report` and
`convert_mxnet` are the command-line tools.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "IGCConv": "igc_jax.igc.layers",
    "igc_apply": "igc_jax.igc.layers",
    "ModeContext": "igc_jax.igc.select",
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


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'igc_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
