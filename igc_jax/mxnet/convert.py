"""Convert the authors' released MXNet models (`-symbol.json` + `.params`) into igc-jax variables.

    python -m igc_jax.convert_mxnet --symbol=resnet_gcwf_noshare_imagenet_d18b16-symbol.json \\
        --params=resnet_gcwf_noshare_imagenet_d18b16-0095.params --out=converted/l16m16

The symbol graph, not the names in it, decides the mapping: walking back from the classifier it
finds the stem (conv → BN → ReLU [→ max-pool]), the post-activation residual units (a `_Plus` of a
shortcut, identity or 1×1 conv → BN, and conv → BN → ReLU → conv → BN) and, inside each unit, the
layers: a convolution, or an IGC layer conv (L groups) → Reorder(L) → conv (M groups) → Reorder(M).
From that structure it infers the igc-jax model config (`igc_jax.models`), builds the network,
and fills every variable:

    Convolution weight (O, I/groups, kh, kw)  → kernel / primary / secondary (kh, kw, I/groups, O)
                       (MXNet and Flax both put the groups in contiguous channel blocks)
    Reorder(branch_factor=B)                  → the shuffle(B) inside `IGCConv` (checked, no array)
    BatchNorm gamma, beta                     → params scale, bias (gamma is 1 when fix_gamma)
    BatchNorm moving_mean, moving_var         → batch_stats mean, var
    FullyConnected weight (classes, C), bias  → classifier kernel (C, classes), bias

Every array of the params file must be used exactly once with the shape the symbol implies, and
every variable of the network must receive one; anything else is a one-line UserError naming the
layer. Strides, padding, pooling and BatchNorm epsilon are checked against the igc-jax network too.

Output directory layout (`save_converted` / `load_converted`):

    <out>/variables/   orbax PyTree checkpoint (StandardCheckpointer) of
                       {"params": ..., "batch_stats": ...}, float32
    <out>/model.json   {"model": <model config>, "num_classes", "image_size", "experiment":
                        experiments/<file>.py with this model or null, "preprocessing" (the
                        released models' input normalisation, null for other networks),
                        "source": {"symbol", "params"} file names}

The released models were trained (the authors' train_imagenet.py, default `fb_mean=False`) on RGB
inputs normalised with mean (123.370, 112.757, 99.406) and std (68.998, 66.093, 68.292) on the
0–255 scale, evaluated on the centre 224 crop of images resized to short side 256; model.json
records this.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from igc_jax.configs.networks import IMAGENET_EXPERIMENTS, IMAGENET_NETWORKS
from igc_jax.mxnet import format as mxnet_format
from igc_jax.errors import UserError

# The authors' ImageNet input normalisation (train_imagenet.py, fb_mean=False), 0–255 RGB.
RELEASED_PREPROCESSING = {
    "mean": [123.370, 112.757, 99.406],
    "std": [68.998, 66.093, 68.292],
    "eval": "resize the short side to 256, centre crop 224",
    "source": "hellozting/InterleavedGroupConvolutions train_imagenet.py (fb_mean=False)",
}


# ---------------------------------------------------------------- the symbol graph
@dataclasses.dataclass(frozen=True)
class Conv:
    """One MXNet Convolution (no bias)."""
    name: str
    weight: str
    c_in: int
    c_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    groups: int

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.c_out, self.c_in // self.groups, *self.kernel)


@dataclasses.dataclass(frozen=True)
class IGC:
    """primary conv → Reorder(L) → secondary 1×1 conv → Reorder(M): one `IGCConv`."""
    name: str
    primary: Conv
    secondary: Conv
    L: int
    M: int

    @property
    def c_in(self) -> int:
        return self.primary.c_in

    @property
    def c_out(self) -> int:
        return self.secondary.c_out

    @property
    def stride(self) -> tuple[int, int]:
        return self.primary.stride


Layer = Conv | IGC


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    name: str
    gamma: str
    beta: str
    mean: str
    var: str
    channels: int
    eps: float
    fix_gamma: bool


@dataclasses.dataclass(frozen=True)
class Pool:
    name: str
    kind: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    global_pool: bool


@dataclasses.dataclass(frozen=True)
class Dense:
    name: str
    weight: str
    bias: str
    c_in: int
    c_out: int


@dataclasses.dataclass(frozen=True)
class Unit:
    """Post-activation residual unit: ReLU(bn2(layer2(ReLU(bn1(layer1(x))))) + shortcut(x))."""
    name: str
    layer1: Layer
    bn1: BatchNorm
    layer2: Layer
    bn2: BatchNorm
    proj: Conv | None
    proj_bn: BatchNorm | None

    @property
    def c_out(self) -> int:
        return self.layer2.c_out


@dataclasses.dataclass(frozen=True)
class Network:
    stem: Conv
    stem_bn: BatchNorm
    stem_pool: Pool | None
    units: tuple[Unit, ...]
    pool: Pool
    classifier: Dense

    def layers(self) -> Iterator[Conv | IGC | BatchNorm | Dense]:
        """Every layer with arrays, in graph order."""
        yield self.stem
        yield self.stem_bn
        for u in self.units:
            if u.proj is not None:
                yield u.proj
                yield u.proj_bn
            yield from (u.layer1, u.bn1, u.layer2, u.bn2)
        yield self.classifier


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"-?\d+", value))


def _bool(value: str) -> bool:
    return str(value).strip().lower() in ("true", "1")


class _Graph:
    """The nodes of a symbol JSON (any MXNet dialect), with output channel counts."""

    def __init__(self, symbol: dict, in_channels: int):
        try:
            self.nodes = symbol["nodes"]
            self.head = symbol["heads"][0][0]
        except (KeyError, IndexError, TypeError):
            raise UserError("symbol: not an MXNet symbol JSON (needs 'nodes' and 'heads')") \
                from None
        self.channels: list[int | None] = []
        for i, node in enumerate(self.nodes):
            self.channels.append(self._out_channels(i, node, in_channels))

    def _out_channels(self, i: int, node: dict, in_channels: int) -> int | None:
        op = node["op"]
        if op == "null":
            return in_channels if node["name"] == "data" else None
        if op == "Convolution":
            return int(self.attrs(i)["num_filter"])
        if op == "FullyConnected":
            return int(self.attrs(i)["num_hidden"])
        return self.channels[self.inputs(i)[0]]

    def op(self, i: int) -> str:
        return self.nodes[i]["op"]

    def name(self, i: int) -> str:
        return self.nodes[i]["name"]

    def attrs(self, i: int) -> dict:
        node = self.nodes[i]
        return node.get("attrs", node.get("param", node.get("attr", {}))) or {}

    def inputs(self, i: int) -> list[int]:
        return [entry[0] for entry in self.nodes[i]["inputs"]]

    def expect(self, i: int, ops: Sequence[str], what: str) -> int:
        if self.op(i) not in ops:
            raise UserError(f"symbol: {what}: node {self.name(i)!r} is {self.op(i)}, expected "
                            f"{' or '.join(ops)}")
        return i

    def conv(self, i: int) -> Conv:
        self.expect(i, ["Convolution"], "convolution")
        a, ins = self.attrs(i), self.inputs(i)
        name = self.name(i)
        if not _bool(a.get("no_bias", "False")):
            raise UserError(f"symbol: convolution {name!r} has a bias; igc-jax's convs have none")
        if _ints(a.get("dilate", "(1,1)")) not in ((1, 1), (1,), ()):
            raise UserError(f"symbol: convolution {name!r} is dilated ({a['dilate']})")
        c_in = self.channels[ins[0]]
        if c_in is None:
            raise UserError(f"symbol: cannot tell the input channels of convolution {name!r}")
        kernel = _ints(a["kernel"])
        return Conv(name=name, weight=self.name(ins[1]), c_in=c_in, c_out=int(a["num_filter"]),
                    kernel=kernel, stride=_ints(a.get("stride", "(1,1)")) or (1, 1),
                    pad=_ints(a.get("pad", "(0,0)")) or (0, 0), groups=int(a.get("num_group", 1)))

    def batch_norm(self, i: int, what: str) -> BatchNorm:
        self.expect(i, ["BatchNorm"], what)
        a, ins, name = self.attrs(i), self.inputs(i), self.name(i)
        if len(ins) >= 5:  # MXNet ≥ 0.9 lists the statistics as inputs
            mean, var = self.name(ins[3]), self.name(ins[4])
        else:  # the released (v0.8) files leave them implicit, with these names
            mean, var = f"{name}_moving_mean", f"{name}_moving_var"
        return BatchNorm(name=name, gamma=self.name(ins[1]), beta=self.name(ins[2]), mean=mean,
                         var=var, channels=self.channels[i], eps=float(a.get("eps", 1e-3)),
                         fix_gamma=_bool(a.get("fix_gamma", "True")))

    def pool(self, i: int, what: str) -> Pool:
        self.expect(i, ["Pooling"], what)
        a = self.attrs(i)
        return Pool(name=self.name(i), kind=a.get("pool_type", "max"),
                    kernel=_ints(a.get("kernel", "()")), stride=_ints(a.get("stride", "(1,1)")),
                    pad=_ints(a.get("pad", "(0,0)")),
                    global_pool=_bool(a.get("global_pool", "False")))

    def is_relu(self, i: int) -> bool:
        return self.op(i) == "Activation" and self.attrs(i).get("act_type") == "relu"

    def layer(self, i: int, what: str) -> tuple[Layer, int]:
        """The layer ending at node i (a conv, or conv → Reorder → conv → Reorder) and its input."""
        if self.op(i) == "Convolution":
            return self.conv(i), self.inputs(i)[0]
        reorder2 = self.expect(i, ["Reorder", "Convolution"], what)
        secondary_node = self.expect(self.inputs(reorder2)[0], ["Convolution"], what)
        reorder1 = self.expect(self.inputs(secondary_node)[0], ["Reorder"], what)
        primary_node = self.expect(self.inputs(reorder1)[0], ["Convolution"], what)
        primary, secondary = self.conv(primary_node), self.conv(secondary_node)
        L = int(self.attrs(reorder1)["branch_factor"])
        M = int(self.attrs(reorder2)["branch_factor"])
        name = _common_prefix(primary.name, secondary.name)
        if primary.groups != L or secondary.groups != M:
            raise UserError(
                f"symbol: IGC layer {name!r} shuffles with B={L} and B={M} around group convs of "
                f"{primary.groups} and {secondary.groups} groups; igc-jax's IGCConv needs equal "
                f"ones")
        if secondary.kernel != (1, 1) or secondary.stride != (1, 1) or secondary.pad != (0, 0):
            raise UserError(f"symbol: IGC layer {name!r}: secondary conv {secondary.name!r} is "
                            f"not 1×1, stride 1, no padding")
        return IGC(name=name, primary=primary, secondary=secondary, L=L, M=M), \
            self.inputs(primary_node)[0]

    def residual_branch(self, i: int) -> tuple[Layer, BatchNorm, Layer, BatchNorm, int] | None:
        """layer1 → bn1 → ReLU → layer2 → bn2 ending at node i, and its input; None if not one."""
        layer_ops = ("Convolution", "Reorder")
        if self.op(i) != "BatchNorm" or self.op(self.inputs(i)[0]) not in layer_ops:
            return None
        bn2 = self.batch_norm(i, "residual branch")
        layer2, j = self.layer(self.inputs(i)[0], "residual branch")
        if not self.is_relu(j) or self.op(self.inputs(j)[0]) != "BatchNorm":
            return None
        j = self.inputs(j)[0]
        if self.op(self.inputs(j)[0]) not in layer_ops:
            return None
        bn1 = self.batch_norm(j, "residual branch")
        layer1, x = self.layer(self.inputs(j)[0], "residual branch")
        return layer1, bn1, layer2, bn2, x

    def shortcut(self, i: int, x: int) -> tuple[Conv | None, BatchNorm | None] | None:
        """(None, None) when node i is x itself, (proj, bn) when it is BN(conv(x)), else None."""
        if i == x:
            return None, None
        if self.op(i) == "BatchNorm" and self.op(self.inputs(i)[0]) == "Convolution":
            conv_node = self.inputs(i)[0]
            if self.inputs(conv_node)[0] == x:
                return self.conv(conv_node), self.batch_norm(i, "projection shortcut")
        return None

    def unit(self, plus: int) -> tuple[Unit, int]:
        """The residual unit whose sum is node `plus`, and the node of its input."""
        ins = self.inputs(plus)
        for short, branch in ((ins[0], ins[1]), (ins[1], ins[0])):
            parsed = self.residual_branch(branch)
            if parsed is None:
                continue
            layer1, bn1, layer2, bn2, x = parsed
            shortcut = self.shortcut(short, x)
            if shortcut is None:
                continue
            name = _common_prefix(layer1.name, layer2.name)
            return Unit(name, layer1, bn1, layer2, bn2, *shortcut), x
        raise UserError(f"symbol: {self.name(plus)!r} is not the sum of a post-activation "
                        f"residual unit (shortcut + conv → BN → ReLU → conv → BN of one input)")


def parse_symbol(symbol: dict, in_channels: int = 3) -> Network:
    """The network of a symbol JSON: stem, residual units, classifier (see the module docstring)."""
    g = _Graph(symbol, in_channels)
    i = g.head
    if g.op(i) == "SoftmaxOutput":
        i = g.inputs(i)[0]
    fc = g.expect(i, ["FullyConnected"], "classifier")
    a, ins = g.attrs(fc), g.inputs(fc)
    if _bool(a.get("no_bias", "False")) or len(ins) < 3:
        raise UserError(f"symbol: classifier {g.name(fc)!r} has no bias; igc-jax's has one")
    i = ins[0]
    if g.op(i) == "Flatten":
        i = g.inputs(i)[0]
    classifier = Dense(name=g.name(fc), weight=g.name(ins[1]), bias=g.name(ins[2]),
                       c_in=g.channels[i], c_out=int(a["num_hidden"]))
    pool = g.pool(i, "global average pool before the classifier")
    i = g.inputs(i)[0]
    units = []
    while g.is_relu(i) and g.op(g.inputs(i)[0]) == "_Plus":
        unit, i = g.unit(g.inputs(i)[0])
        units.append(unit)
    stem_pool = None
    if g.op(i) == "Pooling":
        stem_pool = g.pool(i, "stem pooling")
        i = g.inputs(i)[0]
    if not g.is_relu(i):
        raise UserError(f"symbol: expected the stem's ReLU, found {g.op(i)} {g.name(i)!r}")
    stem_bn = g.batch_norm(g.inputs(i)[0], "stem")
    stem_node = g.expect(g.inputs(g.inputs(i)[0])[0], ["Convolution"], "stem")
    if g.name(g.inputs(stem_node)[0]) != "data":
        raise UserError(f"symbol: the stem conv {g.name(stem_node)!r} does not read 'data'")
    if not units:
        raise UserError("symbol: no residual unit found; igc-jax converts residual networks only")
    return Network(stem=g.conv(stem_node), stem_bn=stem_bn, stem_pool=stem_pool,
                   units=tuple(reversed(units)), pool=pool, classifier=classifier)


def _common_prefix(a: str, b: str) -> str:
    """The shared stem of two layer names, cut at a '_' ("g1_b1_conv1", "g1_b1_conv2" → "g1_b1")."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    prefix = a[:n]
    if prefix in (a, b) or "_" not in prefix:
        return prefix or a
    return prefix[:prefix.rfind("_")]


# ---------------------------------------------------------------- the igc-jax model of a network
@dataclasses.dataclass(frozen=True)
class ConvertedModel:
    """What igc-jax builds for a symbol: `build_model(model, num_classes=...)` at image_size."""
    model: dict
    num_classes: int
    image_size: int


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _check_conv(conv: Conv, kernel: int, stride: int) -> None:
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


def _check_batch_norms(network: Network) -> None:
    from igc_jax.models.blocks import BN_EPSILON
    for layer in network.layers():
        if isinstance(layer, BatchNorm):
            _check(abs(layer.eps - BN_EPSILON) <= 1e-12,
                   f"symbol: BatchNorm {layer.name!r} has eps {layer.eps:g}; igc-jax uses "
                   f"{BN_EPSILON:g}")


def _layer_groups(layer: Layer) -> tuple[int | None, int | None]:
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


def model_config(network: Network) -> ConvertedModel:
    """The igc-jax model config (`igc_jax.models`) that has exactly this network's layers."""
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


def _imagenet_config(network: Network, stages, widths, igc: bool, final: int | None):
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


def _cifar_config(network: Network, stages, widths, igc: bool, final: int | None):
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


# ---------------------------------------------------------------- arrays → variables
class _Arrays:
    """The params file's arrays ("arg:<name>" / "aux:<name>"), each handed out once, checked."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.used: set[str] = set()

    def take(self, kind: str, name: str, shape: tuple[int, ...], layer: str) -> np.ndarray:
        key = f"{kind}:{name}"
        if key not in self.arrays:
            raise UserError(f"layer {layer!r}: array {key!r} is missing from the params file")
        if key in self.used:
            raise UserError(f"layer {layer!r}: array {key!r} is used by two layers")
        a = self.arrays[key]
        if tuple(a.shape) != tuple(shape):
            raise UserError(f"layer {layer!r}: array {key!r} has shape {tuple(a.shape)}, "
                            f"the symbol needs {tuple(shape)}")
        self.used.add(key)
        return np.asarray(a, dtype=np.float32)

    def check_all_used(self) -> None:
        unused = [k for k in self.arrays if k not in self.used]
        if unused:
            more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
            raise UserError(f"the params file has {len(unused)} array(s) the symbol does not "
                            f"use: {', '.join(unused[:3])}{more}")


def _hwio(w: np.ndarray) -> np.ndarray:
    """MXNet (O, I/groups, kh, kw) → Flax (kh, kw, I/groups, O); groups stay contiguous blocks."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _unit_prefixes(abstract_params: dict) -> list[str]:
    """The model's residual units (`stage{s}_unit{u}`), in network order."""
    found = {m.group(1): (int(m.group(2)), int(m.group(3)))
             for key in abstract_params
             if (m := re.match(r"^(stage(\d+)_unit(\d+))_", key))}
    return sorted(found, key=found.get)


def convert_arrays(network: Network, arrays: dict[str, np.ndarray], abstract: dict) -> dict:
    """Fill the variables `abstract` describes ({"params", "batch_stats"} of shape structs)."""
    src = _Arrays(arrays)
    out: dict[str, dict] = {"params": {}, "batch_stats": {}}

    def put(collection: str, module: str, leaf: str, value: np.ndarray, layer: str) -> None:
        target = abstract.get(collection, {}).get(module, {}).get(leaf)
        if target is None:
            raise UserError(f"layer {layer!r}: the igc-jax model has no variable "
                            f"{collection}/{module}/{leaf}")
        if tuple(target.shape) != value.shape:
            raise UserError(f"layer {layer!r}: converted to shape {value.shape}, igc-jax's "
                            f"{collection}/{module}/{leaf} has shape {tuple(target.shape)}")
        out[collection].setdefault(module, {})[leaf] = value

    def conv(module: str, c: Conv, leaf: str = "kernel") -> None:
        w = src.take("arg", c.weight, c.weight_shape, c.name)
        put("params", module, leaf, _hwio(w), c.name)

    def layer(module: str, unit_layer: Layer) -> None:
        if isinstance(unit_layer, IGC):
            conv(module, unit_layer.primary, "primary")
            conv(module, unit_layer.secondary, "secondary")
        else:
            conv(module, unit_layer)

    def batch_norm(module: str, b: BatchNorm) -> None:
        shape = (b.channels,)
        gamma = src.take("arg", b.gamma, shape, b.name)
        put("params", module, "scale", np.ones_like(gamma) if b.fix_gamma else gamma, b.name)
        put("params", module, "bias", src.take("arg", b.beta, shape, b.name), b.name)
        put("batch_stats", module, "mean", src.take("aux", b.mean, shape, b.name), b.name)
        put("batch_stats", module, "var", src.take("aux", b.var, shape, b.name), b.name)

    conv("stem_conv", network.stem)
    batch_norm("stem_bn", network.stem_bn)
    prefixes = _unit_prefixes(abstract["params"])
    if len(prefixes) != len(network.units):
        raise UserError(f"the symbol has {len(network.units)} residual units, the igc-jax model "
                        f"{len(prefixes)}")
    for prefix, u in zip(prefixes, network.units):
        for k, (unit_layer, bn) in enumerate(((u.layer1, u.bn1), (u.layer2, u.bn2)), start=1):
            layer(f"{prefix}_{'igc' if isinstance(unit_layer, IGC) else 'conv'}{k}", unit_layer)
            batch_norm(f"{prefix}_bn{k}", bn)
        if u.proj is not None:
            conv(f"{prefix}_proj", u.proj)
            batch_norm(f"{prefix}_proj_bn", u.proj_bn)
    fc = network.classifier
    put("params", "classifier", "kernel",
        np.ascontiguousarray(src.take("arg", fc.weight, (fc.c_out, fc.c_in), fc.name).T), fc.name)
    put("params", "classifier", "bias", src.take("arg", fc.bias, (fc.c_out,), fc.name), fc.name)
    src.check_all_used()
    for collection, modules in abstract.items():
        for module, leaves in modules.items():
            for leaf in leaves:
                if leaf not in out.get(collection, {}).get(module, {}):
                    raise UserError(f"igc-jax variable {collection}/{module}/{leaf} has no array "
                                    f"in the symbol")
    return out


def abstract_variables(converted: ConvertedModel) -> dict:
    """Shapes of the igc-jax network's variables, without computing anything."""
    import jax
    import jax.numpy as jnp

    from igc_jax import models
    from igc_jax.igc.select import SHAPES_ONLY

    # Shapes only: no mode needs the C++ kernels built.
    model = models.build_model(converted.model, num_classes=converted.num_classes,
                               context=SHAPES_ONLY)
    x = jax.ShapeDtypeStruct((1, converted.image_size, converted.image_size, 3), jnp.float32)
    return jax.eval_shape(lambda rng, x: model.init(rng, x, train=False), jax.random.PRNGKey(0), x)


def convert_model(symbol: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, ConvertedModel]:
    """(variables, the igc-jax model they belong to) from a parsed symbol JSON and its arrays."""
    network = parse_symbol(symbol)
    converted = model_config(network)
    return convert_arrays(network, arrays, abstract_variables(converted)), converted


def convert(symbol_path: str | Path, params_path: str | Path) -> dict:
    """{"params", "batch_stats"} (numpy float32) of the igc-jax network of an MXNet model."""
    variables, _ = convert_model(json.loads(Path(symbol_path).read_text()),
                                 mxnet_format.load_params(params_path))
    return variables


# ---------------------------------------------------------------- experiments and files
def _normalized(model_cfg: dict) -> dict:
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in model_cfg.items()}


def matching_experiment(converted: ConvertedModel) -> str | None:
    """The experiments/imagenet_*.py of the paper's network this one is, if any (a table in
    `igc_jax.configs.networks`, so a non-editable install answers too)."""
    if converted.num_classes != 1000:
        return None
    for name, fields in IMAGENET_NETWORKS.items():
        if _normalized(fields) == _normalized(converted.model):
            return IMAGENET_EXPERIMENTS[name]
    return None


def save_converted(out_dir: str | Path, variables: dict, converted: ConvertedModel,
                   source: dict | None = None) -> Path:
    """Write <out>/variables (orbax PyTree checkpoint) and <out>/model.json; returns <out>."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).resolve()
    if (out / "variables").exists():
        raise UserError(f"{out / 'variables'} already exists; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "variables", variables)
    checkpointer.wait_until_finished()
    checkpointer.close()
    experiment = matching_experiment(converted)
    info = {"model": _normalized(converted.model), "num_classes": converted.num_classes,
            "image_size": converted.image_size, "experiment": experiment,
            # The released networks' training inputs; unknown for any other network.
            "preprocessing": RELEASED_PREPROCESSING if experiment else None,
            "source": source or {}}
    (out / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def load_converted_info(directory: str | Path) -> dict:
    path = Path(directory) / "model.json"
    if not path.is_file():
        raise UserError(f"{directory} is not a converted model (no model.json)")
    return json.loads(path.read_text())


def load_converted(directory: str | Path) -> dict:
    """The {"params", "batch_stats"} a `save_converted` directory holds (numpy float32)."""
    import orbax.checkpoint as ocp

    path = Path(directory).resolve() / "variables"
    if not path.is_dir():
        raise UserError(f"{directory} is not a converted model (no variables/ checkpoint)")
    checkpointer = ocp.StandardCheckpointer()
    variables = checkpointer.restore(path)
    checkpointer.close()
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
