"""The paper's networks by name: `MODELS` maps a config's `model.name` to a constructor.

A model config is flat: `name` plus the constructor's keyword arguments, e.g.
  {"name": "cifar_igc", "depth": 20, "L": 24, "M": 2, "residual": False}
  {"name": "imagenet_igc_resnet18", "stem_width": 100, "widths": (200, 400, 800, 1600),
   "L": (100, 200, 400, 800)}
Every constructor checks its arguments and raises a one-line ValueError, so
`validate_model_config` is "known name, known fields, constructor accepts them", with nothing
traced or compiled.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from igc_jax import ops
from igc_jax.models import cifar, imagenet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cifar_regconv": cifar.regconv,
    "cifar_igc": cifar.igc,
    "imagenet_resnet18": imagenet.resnet18,
    "imagenet_igc_resnet18": imagenet.igc_resnet18,
}

# Arguments every constructor takes from `build_model`, not from the model config.
_BUILD_ARGS = ("num_classes", "dtype", "conv_mode")

# Spec §3's table, keyed by the paper's network names.
IMAGENET_NETWORKS: dict[str, dict[str, Any]] = {
    "ResNet (C=64)": dict(name="imagenet_resnet18", stem_width=64, widths=(64, 128, 256, 512)),
    "ResNet (C=69)": dict(name="imagenet_resnet18", stem_width=69, widths=(69, 138, 276, 552)),
    "IGC-L4M32+Ident.": dict(name="imagenet_igc_resnet18", stem_width=128,
                             widths=(128, 256, 512, 1024), L=(4, 4, 4, 4)),
    "IGC-L16M16+Ident.": dict(name="imagenet_igc_resnet18", stem_width=256,
                              widths=(256, 512, 1024, 2048), L=(16, 16, 16, 16)),
    "IGC-L100M2+Ident.": dict(name="imagenet_igc_resnet18", stem_width=100,
                              widths=(200, 400, 800, 1600), L=(100, 200, 400, 800)),
}


def imagenet_model(network: str) -> ml_collections.ConfigDict:
    """The model config of one of spec §3's networks, by the paper's name."""
    if network not in IMAGENET_NETWORKS:
        raise ValueError(f"unknown ImageNet network {network!r}; choose from "
                         f"{', '.join(IMAGENET_NETWORKS)}")
    return ml_collections.ConfigDict(IMAGENET_NETWORKS[network])


_NET_TOKEN = re.compile(r"^(?:W(?P<width>\d+)|L(?P<L>\d+)M(?P<M>\d+))$", re.IGNORECASE)
_DEPTH_TOKEN = re.compile(r"^D(?P<depth>\d+)$", re.IGNORECASE)
_FLAGS = {"ident": "residual", "sumfusion": "sum_fusion", "noquirk": "no_quirk"}


def cifar_model(arg: str) -> ml_collections.ConfigDict:
    """Parse a CIFAR network string such as `L24M2,D20`, `W16,D20,ident` or `L4M8,D20,sumfusion`.

    Tokens (comma-separated, any case): `W<c>` (RegConv-Wc) or `L<x>M<y>` (IGC-LxMy); `D<depth>`;
    optional `ident` (+Ident.), `sumfusion` (IGC with summation secondary), `noquirk` (residual
    IGC without the official downsampling quirk).
    """
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    if not tokens:
        raise ValueError("empty CIFAR network string; expected e.g. 'L24M2,D20' or 'W16,D20,ident'")
    net = _NET_TOKEN.match(tokens[0])
    if net is None:
        raise ValueError(f"CIFAR network {tokens[0]!r} is neither W<width> nor L<x>M<y>")
    depth, flags = None, set()
    for token in tokens[1:]:
        if (match := _DEPTH_TOKEN.match(token)) is not None:
            depth = int(match["depth"])
        elif token.lower() in _FLAGS:
            flags.add(_FLAGS[token.lower()])
        else:
            raise ValueError(f"unknown token {token!r} in CIFAR network string {arg!r}; expected "
                             f"D<depth>, {', '.join(_FLAGS)}")
    if depth is None:
        raise ValueError(f"CIFAR network string {arg!r} has no depth token D<depth>")
    residual = "residual" in flags
    if net["width"] is not None:
        if igc_only := sorted(t for t, f in _FLAGS.items() if f in flags and f != "residual"):
            raise ValueError(f"{', '.join(igc_only)} only applies to IGC networks (L<x>M<y>), "
                             f"not RegConv ({arg!r})")
        return ml_collections.ConfigDict(dict(name="cifar_regconv", depth=depth,
                                              width=int(net["width"]), residual=residual))
    return ml_collections.ConfigDict(dict(
        name="cifar_igc", depth=depth, L=int(net["L"]), M=int(net["M"]), residual=residual,
        downsample_quirk="no_quirk" not in flags, sum_fusion="sum_fusion" in flags))


def network_name(model_cfg: Mapping[str, Any]) -> str:
    """The paper's name of a network, e.g. `IGC-L24M2+Ident. (D=20)`, for tables and logs."""
    name = model_cfg["name"]
    for paper_name, fields in IMAGENET_NETWORKS.items():
        if _same_fields(model_cfg, fields):
            return paper_name
    if name == "cifar_regconv":
        base = f"RegConv-W{model_cfg['width']}"
    elif name == "cifar_igc":
        base = ("SumFusion-" if model_cfg.get("sum_fusion") else "IGC-") + \
            f"L{model_cfg['L']}M{model_cfg['M']}"
    else:
        return name
    ident = "+Ident." if model_cfg.get("residual") else ""
    no_quirk = ", no quirk" if model_cfg.get("residual") and model_cfg.get("L") and \
        not model_cfg.get("downsample_quirk", True) else ""
    return f"{base}{ident} (D={model_cfg['depth']}{no_quirk})"


def _same_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal field by field, a list and a tuple of the same items counting as equal."""
    def norm(m):
        return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in m.items()}
    return norm(a) == norm(b)


def _constructor_fields(constructor: Callable) -> tuple[set[str], set[str]]:
    """(all, required) model-config fields of a constructor: its keyword arguments minus build's."""
    params = inspect.signature(constructor).parameters
    fields = {k for k in params if k not in _BUILD_ARGS}
    required = {k for k in fields if params[k].default is inspect.Parameter.empty}
    return fields, required


def _make(model_cfg: Mapping[str, Any], *, num_classes: int, dtype: Any,
          conv_mode: str) -> nn.Module:
    name = model_cfg.get("name", "")
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; choose from {', '.join(MODELS)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if conv_mode != "auto" and conv_mode not in ops.MODES:
        raise ValueError(f"unknown IGC computation mode {conv_mode!r}; choose from auto, "
                         f"{', '.join(ops.MODES)}")
    fields, required = _constructor_fields(MODELS[name])
    given = {k: v for k, v in dict(model_cfg).items() if k != "name"}
    if unknown := sorted(set(given) - fields):
        raise ValueError(f"model {name!r} has no field(s) {', '.join(unknown)}; "
                         f"its fields are {', '.join(sorted(fields))}")
    if missing := sorted(required - set(given)):
        raise ValueError(f"model {name!r} needs field(s) {', '.join(missing)}")
    return MODELS[name](**given, num_classes=num_classes, dtype=dtype, conv_mode=conv_mode)


def validate_model_config(model_cfg: Mapping[str, Any], *, num_classes: int) -> None:
    """Raise a one-line ValueError if `build_model` would reject this model config."""
    _make(model_cfg, num_classes=num_classes, dtype=jnp.float32, conv_mode="auto")


def build_model(model_cfg: Mapping[str, Any], *, num_classes: int, dtype: Any = jnp.float32,
                conv_mode: str = "auto") -> nn.Module:
    """The Flax module of a model config; `__call__(x, train)` maps NHWC images to float32 logits.

    `dtype` is the compute dtype (a jnp dtype or its name); parameters, BatchNorm statistics and
    the logits stay float32.
    """
    return _make(model_cfg, num_classes=num_classes, dtype=jnp.dtype(dtype), conv_mode=conv_mode)
