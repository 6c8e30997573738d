"""The papers' networks by name (spec §2, §3, §7): network strings and names ↔ model configs.

Pure Python, so experiment files and `igc_jax.configs` load without JAX; `igc_jax.models` builds
the modules from what these return.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import ml_collections

from igc_jax.errors import UserError

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
    # Spec §7: IGCV3-D at the four widths pytorchcv publishes (igcv3_w1, _w3d4, _wd2, _wd4).
    **{f"IGCV3-D {w}": dict(name="igcv3", width=w) for w in (1.0, 0.75, 0.5, 0.25)},
}


# The experiment file of each (the converter reports it; tests check each file builds this model).
IMAGENET_EXPERIMENTS: dict[str, str] = {
    "ResNet (C=64)": "experiments/imagenet_resnet18_c64.py",
    "ResNet (C=69)": "experiments/imagenet_resnet18_c69.py",
    "IGC-L4M32+Ident.": "experiments/imagenet_l4m32.py",
    "IGC-L16M16+Ident.": "experiments/imagenet_l16m16.py",
    "IGC-L100M2+Ident.": "experiments/imagenet_l100m2.py",
    "IGCV3-D 1.0": "experiments/imagenet_igcv3.py",
    "IGCV3-D 0.75": "experiments/imagenet_igcv3.py:0.75",
    "IGCV3-D 0.5": "experiments/imagenet_igcv3.py:0.5",
    "IGCV3-D 0.25": "experiments/imagenet_igcv3.py:0.25",
}


def imagenet_model(network: str) -> ml_collections.ConfigDict:
    """The model config of one of spec §3's networks, by the paper's name."""
    if network not in IMAGENET_NETWORKS:
        raise UserError(f"unknown ImageNet network {network!r}; choose from "
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
        raise UserError("empty CIFAR network string; expected e.g. 'L24M2,D20' or 'W16,D20,ident'")
    net = _NET_TOKEN.match(tokens[0])
    if net is None:
        raise UserError(f"CIFAR network {tokens[0]!r} is neither W<width> nor L<x>M<y>")
    depth, flags = None, set()
    for token in tokens[1:]:
        if (match := _DEPTH_TOKEN.match(token)) is not None:
            depth = int(match["depth"])
        elif token.lower() in _FLAGS:
            flags.add(_FLAGS[token.lower()])
        else:
            raise UserError(f"unknown token {token!r} in CIFAR network string {arg!r}; expected "
                            f"D<depth>, {', '.join(_FLAGS)}")
    if depth is None:
        raise UserError(f"CIFAR network string {arg!r} has no depth token D<depth>")
    residual = "residual" in flags
    if net["width"] is not None:
        if igc_only := sorted(t for t, f in _FLAGS.items() if f in flags and f != "residual"):
            raise UserError(f"{', '.join(igc_only)} only applies to IGC networks (L<x>M<y>), "
                            f"not RegConv ({arg!r})")
        return ml_collections.ConfigDict(dict(name="cifar_regconv", depth=depth,
                                              width=int(net["width"]), residual=residual))
    return ml_collections.ConfigDict(dict(
        name="cifar_igc", depth=depth, L=int(net["L"]), M=int(net["M"]), residual=residual,
        downsample_quirk="no_quirk" not in flags, sum_fusion="sum_fusion" in flags))


# Model-config fields that say how a network starts, not which network it is.
NOT_THE_NETWORK = ("init",)


def network_name(model_cfg: Mapping[str, Any]) -> str:
    """The paper's name of a network, e.g. `IGC-L24M2+Ident. (D=20)`, for tables and logs."""
    name = model_cfg["name"]
    network = {k: v for k, v in model_cfg.items() if k not in NOT_THE_NETWORK}
    for paper_name, fields in IMAGENET_NETWORKS.items():
        if _same_fields(network, fields):
            return paper_name
    if name == "igcv3":
        quirk = ", builder's width quirk" if model_cfg.get("width_quirk") else ""
        return f"IGCV3-D {float(model_cfg.get('width', 1.0))}{quirk}"
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
