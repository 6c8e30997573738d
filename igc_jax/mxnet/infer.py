"""From a parsed MXNet network (`igc_jax.mxnet.symbol`) to the igc-jax model that has exactly its
layers: `model_config` infers the model config (`igc_jax.models`), the number of classes and the
input size, and checks strides, padding, pooling, groups and BatchNorm epsilon against the igc-jax
network (a one-line UserError naming the layer otherwise); `matching_experiment` names the paper's
experiments/imagenet_*.py with this model, if any. An IGCV3 symbol (`InvertedNetwork`) is IGCV3-D
at the width whose layout (`igc_jax.models.igcv3.layout`, pytorchcv's rule or the builder's quirk)
has exactly its channels.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from igc_jax.configs.networks import IMAGENET_EXPERIMENTS, IMAGENET_NETWORKS
from igc_jax.errors import UserError
from igc_jax.mxnet.symbol import (IGC, BatchNorm, Conv, InvertedNetwork, Layer, Network, Pool,
                                  Unit)


@dataclasses.dataclass(frozen=True)
class ConvertedModel:
    """What igc-jax builds for a symbol: `build_model(model, num_classes=...)` at image_size."""
    model: dict
    num_classes: int
    image_size: int


def _check(ok: bool, message: str) -> None:
    """A UserError with `message` unless `ok`."""
    if not ok:
        raise UserError(message)


def _check_conv(conv: Conv, kernel: int, stride: int) -> None:
    """The conv is kernel×kernel with this stride and k//2 padding, as igc-jax builds it."""
    _check(conv.kernel == (kernel, kernel),
           f"symbol: {conv.name!r} has kernel {conv.kernel}, igc-jax builds {kernel}×{kernel} here")
    _check(conv.stride == (stride, stride),
           f"symbol: {conv.name!r} has stride {conv.stride}, igc-jax uses {stride} here")
    _check(conv.pad == (kernel // 2, kernel // 2),
           f"symbol: {conv.name!r} pads {conv.pad}; igc-jax pads k//2 = {kernel // 2} on each side")


def _stages(units: Sequence[Unit]) -> list[list[Unit]]:
    """Units grouped into stages: a stage starts with its stride-2 unit (or the first unit)."""
    stages: list[list[Unit]] = []
    for u in units:
        if not stages or u.layer1.stride != (1, 1):
            stages.append([])
        stages[-1].append(u)
    return stages


def _check_units(stages: list[list[Unit]]) -> None:
    """Strides, kernels, padding and shortcuts as igc-jax's residual units have them."""
    for s, stage in enumerate(stages):
        for k, u in enumerate(stage):
            stride = 2 if s > 0 and k == 0 else 1
            for layer, layer_stride in ((u.layer1, stride), (u.layer2, 1)):
                _check_conv(layer.primary if isinstance(layer, IGC) else layer, 3, layer_stride)
            needs_proj = stride != 1 or u.layer1.c_in != u.c_out
            _check(needs_proj == (u.proj is not None),
                   f"symbol: unit {u.name!r} has {'a projection' if u.proj else 'an identity'} "
                   f"shortcut; igc-jax uses {'a projection' if needs_proj else 'the identity'} "
                   f"there")
            if u.proj is not None:
                _check_conv(u.proj, 1, stride)


def _check_batch_norms(network: Network | InvertedNetwork, eps: float | None = None) -> None:
    """Every BatchNorm has igc-jax's epsilon (`eps`, default the IGCV1 networks')."""
    from igc_jax.models.blocks import BN_EPSILON
    eps = BN_EPSILON if eps is None else eps
    for layer in network.layers():
        if isinstance(layer, BatchNorm):
            _check(abs(layer.eps - eps) <= 1e-12,
                   f"symbol: BatchNorm {layer.name!r} has eps {layer.eps:g}; igc-jax uses "
                   f"{eps:g}")


def _layer_groups(layer: Layer) -> tuple[int | None, int | None]:
    """(L, M) of an IGC layer, (None, None) of a plain conv."""
    return (layer.L, layer.M) if isinstance(layer, IGC) else (None, None)


def _final_size(pool: Pool) -> int | None:
    """Side of the last feature map the average pool covers (None: a global pool, any size)."""
    _check(pool.kind == "avg",
           f"symbol: {pool.name!r} is a {pool.kind} pool, expected an average pool")
    if pool.global_pool:
        return None
    _check(pool.kernel[0] == pool.kernel[1] and pool.stride == (1, 1) and pool.pad == (0, 0),
           f"symbol: {pool.name!r} is not a square, stride-1, unpadded (global) average pool")
    return pool.kernel[0]


def model_config(network: Network | InvertedNetwork) -> ConvertedModel:
    """The igc-jax model config (`igc_jax.models`) that has exactly this network's layers."""
    if isinstance(network, InvertedNetwork):
        return _igcv3_config(network)
    stages = _stages(network.units)
    _check_units(stages)
    _check_batch_norms(network)
    widths = [stage[0].c_out for stage in stages]
    igc = isinstance(network.units[0].layer1, IGC)
    for u in network.units:
        for layer in (u.layer1, u.layer2):
            _check(isinstance(layer, IGC) == igc,
                   f"symbol: {layer.name!r} mixes IGC and regular layers; igc-jax nets use one "
                   f"kind")
    final = _final_size(network.pool)
    num_classes = network.classifier.c_out
    if network.stem_pool is not None:
        cfg, image_size = _imagenet_config(network, stages, widths, igc, final)
    else:
        cfg, image_size = _cifar_config(network, stages, widths, igc, final)
    return ConvertedModel(model=cfg, num_classes=num_classes, image_size=image_size)


def _imagenet_config(network: Network, stages: list[list[Unit]], widths: list[int], igc: bool,
                     final: int | None) -> tuple[dict[str, Any], int]:
    """The ImageNet model config (`igc_jax.models.imagenet`) and input size of a network."""
    from igc_jax.models import imagenet
    _check_conv(network.stem, 7, 2)
    p = network.stem_pool
    _check(p.kind == "max" and p.kernel == (3, 3) and p.stride == (2, 2) and p.pad == (1, 1),
           f"symbol: stem pool {p.name!r} is not the 3×3 stride-2 max-pool with padding 1")
    _check(len(stages) == imagenet.NUM_STAGES and
           all(len(st) == imagenet.UNITS_PER_STAGE for st in stages),
           f"symbol: {[len(st) for st in stages]} units per stage; igc-jax's ImageNet nets have "
           f"{imagenet.UNITS_PER_STAGE} in each of {imagenet.NUM_STAGES} stages")
    cfg: dict[str, Any] = {"name": "imagenet_igc_resnet18" if igc else "imagenet_resnet18",
                           "stem_width": network.stem.c_out, "widths": widths}
    if igc:
        cfg["L"] = [stage[0].layer1.L for stage in stages]
        for stage, L, width in zip(stages, cfg["L"], widths):
            for u in stage:
                for layer in (u.layer1, u.layer2):
                    _check(_layer_groups(layer) == (L, width // L),
                           f"symbol: {layer.name!r} has L={layer.L}, M={layer.M}; igc-jax's "
                           f"ImageNet IGC nets use the stage's L={L}, M={width // L}")
                if u.proj is not None:
                    _check(u.proj.groups == L, f"symbol: projection {u.proj.name!r} has "
                           f"{u.proj.groups} groups; igc-jax groups it with the stage's L={L}")
    else:
        _check(all(u.proj is None or u.proj.groups == 1 for u in network.units),
               "symbol: a ResNet projection is grouped; igc-jax's are not")
    return cfg, 32 * final if final else 224


def _cifar_config(network: Network, stages: list[list[Unit]], widths: list[int], igc: bool,
                  final: int | None) -> tuple[dict[str, Any], int]:
    """The CIFAR model config (`igc_jax.models.cifar`) and input size of a network."""
    from igc_jax.models import cifar
    _check_conv(network.stem, 3, 1)
    C = network.stem.c_out
    _check(widths == [C * 2 ** s for s in range(cifar.NUM_STAGES)],
           f"symbol: stage widths {widths}; igc-jax's CIFAR nets have C, 2C, 4C with C={C}")
    B = len(stages[0])
    _check(all(len(st) == B for st in stages),
           f"symbol: {[len(st) for st in stages]} units per stage; igc-jax's CIFAR nets have "
           f"equal ones")
    depth = 6 * B + 2
    if not igc:
        cfg = {"name": "cifar_regconv", "depth": depth, "width": C, "residual": True}
        return cfg, 4 * (final or 8)
    L = network.units[0].layer1.L
    quirk = None
    for s, stage in enumerate(stages):
        for k, u in enumerate(stage):
            c_in = u.layer1.c_in
            # The official CIFAR code's quirk: the first layer has C_in / L secondary groups.
            allowed = ((u.layer1, (c_in // L, u.c_out // L)), (u.layer2, (u.c_out // L,)))
            for layer, groups in allowed:
                _check(layer.L == L and layer.M in groups,
                       f"symbol: {layer.name!r} has L={layer.L}, M={layer.M}; igc-jax's CIFAR "
                       f"IGC nets use L={L}, M={' or '.join(map(str, groups))}")
            if c_in != u.c_out:
                this = u.layer1.M == c_in // L
                _check(quirk in (None, this), f"symbol: unit {u.name!r} applies the downsampling "
                       f"quirk differently from the units before it")
                quirk = this
            if u.proj is not None:
                _check(u.proj.groups == L, f"symbol: projection {u.proj.name!r} has "
                       f"{u.proj.groups} groups; igc-jax groups it with L={L}")
    cfg = {"name": "cifar_igc", "depth": depth, "L": L, "M": C // L, "residual": True,
           "downsample_quirk": True if quirk is None else quirk}
    return cfg, 4 * (final or 8)


def _igcv3_config(network: InvertedNetwork) -> ConvertedModel:
    """IGCV3-D at the width (and width rule) whose layout has exactly this network's layers."""
    from igc_jax.models import igcv3
    _check_batch_norms(network, igcv3.BN_EPSILON)
    _check_conv(network.stem, 3, 2)
    _check_conv(network.head, 1, 1)
    _check(network.head.groups == 1, f"symbol: head conv {network.head.name!r} is grouped")
    blocks = [(b.expand.c_in, b.expand.c_out, b.linear.c_out, b.depthwise.stride[0], b.shortcut)
              for b in network.blocks]
    for b in network.blocks:
        _check_conv(b.expand, 1, 1)
        _check_conv(b.depthwise, 3, b.depthwise.stride[0])
        _check_conv(b.linear, 1, 1)
        groups = (b.expand.groups, b.shuffle, b.linear.groups)
        _check(groups == (igcv3.GROUPS,) * 3 and b.depthwise.groups == b.depthwise.c_in,
               f"symbol: block {b.name!r} has groups {groups} around a "
               f"{b.depthwise.groups}-group 3×3 conv; IGCV3 uses {igcv3.GROUPS} and depthwise")
    final = _final_size(network.pool)
    width = network.blocks[-1].linear.c_out / igcv3.STAGES[-1][1]
    for quirk in (False, True):
        lay = igcv3.layout(width, quirk)
        ours = [(b.c_in, b.expanded, b.c_out, b.stride, b.residual) for b in lay.blocks()]
        if (lay.stem, ours, lay.head) == (network.stem.c_out, blocks, network.head.c_out):
            cfg: dict[str, Any] = {"name": "igcv3", "width": width}
            if quirk:
                cfg["width_quirk"] = True
            return ConvertedModel(model=cfg, num_classes=network.classifier.c_out,
                                  image_size=32 * final if final else 224)
    raise UserError(f"symbol: its widths (stem {network.stem.c_out}, blocks c_in/expanded/c_out "
                    f"{[b[:3] for b in blocks[:3]]}…, head {network.head.c_out}) are IGCV3-D's at "
                    f"no width igc-jax builds (tried {width:g} with both width rules)")


def plain_config(model_cfg: dict) -> dict:
    """The model config with its tuples as lists: the form model.json holds and the networks
    table is compared in."""
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in model_cfg.items()}


def matching_experiment(converted: ConvertedModel) -> str | None:
    """The experiments/imagenet_*.py of the paper's network this one is, if any (a table in
    `igc_jax.configs.networks`, so a non-editable install answers too)."""
    if converted.num_classes != 1000:
        return None
    for name, fields in IMAGENET_NETWORKS.items():
        if plain_config(fields) == plain_config(converted.model):
            return IMAGENET_EXPERIMENTS[name]
    return None
