"""The layers of an MXNet `-symbol.json` graph, as typed nodes.

The symbol graph, not the names in it, decides the structure: walking back from the classifier,
`parse_symbol` finds the stem (conv → BN → ReLU [→ max-pool]), the post-activation residual units
(a `_Plus` of a shortcut, identity or 1×1 conv → BN, and conv → BN → ReLU → conv → BN) and, inside
each unit, the layers: a convolution (`Conv`: groups, stride, padding), or an IGC layer (`IGC`:
conv (L groups) → Reorder(L) → conv (M groups) → Reorder(M)). It returns a `Network` naming every
array each layer reads. An IGCV3 graph (ReLU6 as `clip(0, 6)` before the pool) is an
`InvertedNetwork` instead: stem (conv → BN → clip), inverted residual blocks (1×1 conv → BN →
channel shuffle as Reshape → SwapAxis → Reshape → depthwise conv → BN → clip → 1×1 conv → BN,
maybe `elemwise_add`ed to the block's input), head (1×1 conv → BN → clip). What igc-jax builds
from either is `igc_jax.mxnet.infer`'s job. A graph of any other shape is a one-line UserError
naming the node.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterator, Sequence

from igc_jax.errors import UserError


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
    """One MXNet BatchNorm: its four arrays' names, channels, epsilon and fix_gamma."""
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
    """One MXNet Pooling ("max" or "avg"; a global pool ignores kernel, stride and pad)."""
    name: str
    kind: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    global_pool: bool


@dataclasses.dataclass(frozen=True)
class Dense:
    """The classifier: one MXNet FullyConnected with a bias."""
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
    """A whole symbol: stem (conv → BN → ReLU [→ max-pool]), residual units, pool, classifier."""
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


@dataclasses.dataclass(frozen=True)
class InvertedBlock:
    """IGCV3's block: expand (1×1) → BN → shuffle(B) → depthwise → BN → ReLU6 → linear (1×1)
    → BN, plus the block's input when `shortcut`."""
    name: str
    expand: Conv
    expand_bn: BatchNorm
    shuffle: int
    depthwise: Conv
    depthwise_bn: BatchNorm
    linear: Conv
    linear_bn: BatchNorm
    shortcut: bool


@dataclasses.dataclass(frozen=True)
class InvertedNetwork:
    """An IGCV3 symbol: stem conv → BN → ReLU6, blocks, head 1×1 conv → BN → ReLU6, pool,
    classifier."""
    stem: Conv
    stem_bn: BatchNorm
    blocks: tuple[InvertedBlock, ...]
    head: Conv
    head_bn: BatchNorm
    pool: Pool
    classifier: Dense

    def layers(self) -> Iterator[Conv | BatchNorm | Dense]:
        """Every layer with arrays, in graph order."""
        yield self.stem
        yield self.stem_bn
        for b in self.blocks:
            yield from (b.expand, b.expand_bn, b.depthwise, b.depthwise_bn, b.linear,
                        b.linear_bn)
        yield from (self.head, self.head_bn, self.classifier)


def _ints(value: str) -> tuple[int, ...]:
    """An MXNet tuple attribute ("(3, 3)") as ints."""
    return tuple(int(v) for v in re.findall(r"-?\d+", value))


def _bool(value: str) -> bool:
    """An MXNet boolean attribute ("True", "1", ...)."""
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

    def is_relu6(self, i: int) -> bool:
        """`clip(0, 6)`: the official IGCV3 code's ReLU6."""
        if self.op(i) != "clip":
            return False
        a = self.attrs(i)
        return float(a.get("a_min", "nan")) == 0.0 and float(a.get("a_max", "nan")) == 6.0

    def relu6_input(self, i: int, what: str) -> int:
        if not self.is_relu6(i):
            raise UserError(f"symbol: {what}: node {self.name(i)!r} is {self.op(i)}, expected "
                            f"clip(0, 6) (ReLU6)")
        return self.inputs(i)[0]

    def conv_bn(self, i: int, what: str) -> tuple[Conv, BatchNorm, int]:
        """conv → BN ending at node i (the BN): both, and the conv's input."""
        bn = self.batch_norm(i, what)
        conv_node = self.expect(self.inputs(i)[0], ["Convolution"], what)
        return self.conv(conv_node), bn, self.inputs(conv_node)[0]

    def shuffle(self, i: int, what: str) -> tuple[int, int]:
        """Reshape (0, -4, B, -1, -2) → SwapAxis(1, 2) → Reshape (0, -3, -2) ending at node i: the
        channel shuffle with B groups (`kernels.shuffle`), and its input."""
        merge = self.expect(i, ["Reshape"], what)
        swap = self.expect(self.inputs(merge)[0], ["SwapAxis"], what)
        split = self.expect(self.inputs(swap)[0], ["Reshape"], what)
        shape = _ints(self.attrs(split).get("shape", ""))
        dims = _ints(self.attrs(swap).get("dim1", "")) + _ints(self.attrs(swap).get("dim2", ""))
        if (len(shape) != 5 or shape[:2] != (0, -4) or shape[3:] != (-1, -2) or shape[2] < 1
                or sorted(dims) != [1, 2]
                or _ints(self.attrs(merge).get("shape", "")) != (0, -3, -2)):
            raise UserError(f"symbol: {what}: {self.name(split)!r} → {self.name(swap)!r} → "
                            f"{self.name(merge)!r} is not a channel shuffle (reshape (0, -4, B, "
                            f"-1, -2), swap axes 1 and 2, reshape (0, -3, -2))")
        return shape[2], self.inputs(split)[0]

    def inverted_branch(self, i: int) -> tuple[InvertedBlock, int]:
        """expand → BN → shuffle → depthwise → BN → ReLU6 → linear → BN ending at node i (the
        last BN), as a block without shortcut, and its input."""
        what = "IGCV3 block"
        linear, linear_bn, j = self.conv_bn(i, what)
        depthwise, depthwise_bn, j = self.conv_bn(self.relu6_input(j, what), what)
        groups, j = self.shuffle(j, what)
        expand, expand_bn, block_in = self.conv_bn(j, what)
        name = _common_prefix(expand.name, linear.name).rstrip("-")
        return InvertedBlock(name, expand, expand_bn, groups, depthwise, depthwise_bn, linear,
                             linear_bn, shortcut=False), block_in

    def inverted_block(self, i: int) -> tuple[InvertedBlock, int]:
        """The IGCV3 block ending at node i (its last BN, or the sum of that and its input)."""
        if self.op(i) not in ("elemwise_add", "_Plus"):
            return self.inverted_branch(i)
        a, b = self.inputs(i)[:2]
        for branch, x in ((b, a), (a, b)):      # elemwise_add(data_in, data_residual)
            if self.op(branch) == "BatchNorm":
                try:
                    block, block_in = self.inverted_branch(branch)
                except UserError:
                    continue
                if block_in == x:
                    return dataclasses.replace(block, shortcut=True), x
        raise UserError(f"symbol: {self.name(i)!r} is not the sum of an IGCV3 block and that "
                        f"block's input")

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


def parse_symbol(symbol: dict, in_channels: int = 3) -> Network | InvertedNetwork:
    """The network of a symbol JSON: stem, residual units (or IGCV3 blocks), classifier (see the
    module docstring)."""
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
    if g.is_relu6(i):
        return _parse_inverted(g, i, pool, classifier)
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


def _parse_inverted(g: _Graph, i: int, pool: Pool, classifier: Dense) -> InvertedNetwork:
    """The IGCV3 network whose head's ReLU6 is node i (see the module docstring)."""
    head, head_bn, i = g.conv_bn(g.relu6_input(i, "head"), "head")
    blocks = []
    while not g.is_relu6(i):
        block, i = g.inverted_block(i)
        blocks.append(block)
    stem, stem_bn, data = g.conv_bn(g.relu6_input(i, "stem"), "stem")
    if g.name(data) != "data":
        raise UserError(f"symbol: the stem conv {stem.name!r} does not read 'data'")
    if not blocks:
        raise UserError("symbol: no IGCV3 block between the stem and the head")
    return InvertedNetwork(stem=stem, stem_bn=stem_bn, blocks=tuple(reversed(blocks)), head=head,
                           head_bn=head_bn, pool=pool, classifier=classifier)


def _common_prefix(a: str, b: str) -> str:
    """The shared stem of two layer names, cut at a '_' ("g1_b1_conv1", "g1_b1_conv2" → "g1_b1")."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    prefix = a[:n]
    if prefix in (a, b) or "_" not in prefix:
        return prefix or a
    return prefix[:prefix.rfind("_")]
