"""Reference logits from MXNet itself for the MXNet → igc-jax converter (run in an MXNet venv).

MXNet is retired (1.9.1 needs numpy < 1.24), so it is never a dependency of igc-jax; this script
runs in its own environment:

    python -m venv /work/mxnet-venv
    /work/mxnet-venv/bin/pip install mxnet==1.9.1 "numpy<1.24"
    /work/mxnet-venv/bin/python tools/make_mxnet_fixture.py fixtures --out tests/fixtures/mxnet \
        --official ../shared/reference/official_models
    /work/mxnet-venv/bin/python tools/make_mxnet_fixture.py official \
        --symbol ../shared/reference/official_models/resnet_d18-symbol.json --out /tmp/mxnet_full
    /work/mxnet-venv/bin/python tools/make_mxnet_fixture.py official --calibrate 100 \
        --symbol ../shared/reference/official_models/igcv3/igcv3-symbol.json --out /tmp/mxnet_igcv3

A symbol is written in the dialect of the authors' released files (MXNet v0.8 JSON: `param`
attributes, BatchNorm statistics implicit, the custom `Reorder` op). To run it, the script rebuilds
the graph with stock MXNet ops, replacing `Reorder(branch_factor=B)` by reshape (N, B, C/B, H, W) →
transpose (0, 2, 1, 3, 4) → reshape (N, C, H, W): output channel j·B + g takes input channel
g·(C/B) + j, the channel shuffle of spec §1. Weights and BatchNorm statistics (gamma, beta,
moving mean, moving variance) are random; the logits (the classifier output, before softmax) of a
few random inputs are computed in inference mode (BatchNorm uses the moving statistics).

Each model NAME gets NAME-symbol.json, NAME-0000.params (`arg:` / `aux:` names, as
`mx.model.save_checkpoint` writes them) and NAME-logits.npz (`image` uint8 NHWC, its normalised
`data` NCHW float32 with `mean`, `std`, and MXNet's `logits`).
`fixtures` also writes legacy-params.{params,npz}: two arrays in the two pre-1.0 array layouts,
written here byte by byte and checked to load in MXNet as the same arrays.
"""
from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import mxnet as mx
import numpy as np

# Per-channel mean and std (0–255 RGB) of the fixtures' inputs, as igc_jax.data names them.
NORMALIZATION = {
    "cifar10": ((125.307, 122.950, 113.865), (62.993, 62.089, 66.705)),
    "imagenet": ((123.675, 116.280, 103.530), (58.395, 57.120, 57.375)),
}
BN_PARAMS = {"eps": "2e-005", "fix_gamma": "False", "momentum": "0.9", "use_global_stats": "False"}


# ---------------------------------------------------------------- symbols in the released dialect
class SymbolWriter:
    """Appends nodes to a v0.8-dialect symbol graph; every method returns the new node's index."""

    def __init__(self):
        self.nodes: list[dict] = []
        self.num_plus = 0
        self.var("data")

    def _node(self, op: str, name: str, param: dict, inputs: list[int]) -> int:
        self.nodes.append({"op": op, "param": param, "name": name,
                           "inputs": [[i, 0] for i in inputs], "backward_source_id": -1})
        return len(self.nodes) - 1

    def var(self, name: str) -> int:
        return self._node("null", name, {}, [])

    def conv(self, x: int, name: str, num_filter: int, kernel: int, stride: int = 1,
             groups: int = 1) -> int:
        weight = self.var(f"{name}_weight")
        pad = kernel // 2
        return self._node("Convolution", name, {
            "cudnn_off": "False", "cudnn_tune": "off", "dilate": "(1,1)",
            "kernel": f"({kernel},{kernel})", "no_bias": "True", "num_filter": str(num_filter),
            "num_group": str(groups), "pad": f"({pad},{pad})", "stride": f"({stride},{stride})",
            "workspace": "1024"}, [x, weight])

    def bn(self, x: int, name: str) -> int:
        gamma, beta = self.var(f"{name}_gamma"), self.var(f"{name}_beta")
        return self._node("BatchNorm", name, dict(BN_PARAMS), [x, gamma, beta])

    def relu(self, x: int, name: str) -> int:
        return self._node("Activation", name, {"act_type": "relu"}, [x])

    def reorder(self, x: int, name: str, branch_factor: int) -> int:
        return self._node("Reorder", name, {"branch_factor": str(branch_factor),
                                            "workspace": "1024"}, [x])

    def plus(self, a: int, b: int) -> int:
        self.num_plus += 1
        return self._node("_Plus", f"_plus{self.num_plus - 1}", {}, [a, b])

    def pool(self, x: int, name: str, kind: str, kernel: int, stride: int, pad: int) -> int:
        return self._node("Pooling", name, {
            "global_pool": "False", "kernel": f"({kernel},{kernel})", "pad": f"({pad},{pad})",
            "pool_type": kind, "stride": f"({stride},{stride})"}, [x])

    def head(self, x: int, num_classes: int) -> int:
        x = self._node("Flatten", "flatten", {}, [x])
        w, b = self.var("fc_score_weight"), self.var("fc_score_bias")
        x = self._node("FullyConnected", "fc_score", {"no_bias": "False",
                                                      "num_hidden": str(num_classes)}, [x, w, b])
        label = self.var("softmax_label")
        return self._node("SoftmaxOutput", "softmax", {
            "grad_scale": "1", "ignore_label": "-1", "multi_output": "False",
            "normalization": "null", "use_ignore": "False"}, [x, label])

    def to_json(self, head: int) -> dict:
        return {"nodes": self.nodes,
                "arg_nodes": [i for i, n in enumerate(self.nodes) if n["op"] == "null"],
                "heads": [[head, 0]]}


def igc_layer(g: SymbolWriter, x: int, name: str, features: int, stride: int, L: int,
              M: int) -> int:
    """The released IGC layer: conv1 (3×3, L groups) → Reorder(L) → conv2 (1×1, M groups) →
    Reorder(M)."""
    x = g.conv(x, f"{name}_conv1", features, 3, stride, groups=L)
    x = g.reorder(x, f"{name}_reorder1", L)
    x = g.conv(x, f"{name}_conv2", features, 1, 1, groups=M)
    return g.reorder(x, f"{name}_reorder2", M)


def residual_unit(g: SymbolWriter, x: int, c_in: int, name: str, features: int, stride: int,
                  L: int | None, first_M: int | None = None) -> int:
    """Post-activation unit in the released symbols' node order (projection first).

    `first_M` overrides the first IGC layer's secondary groups (the official CIFAR code's C_in / L).
    """
    shortcut = x
    if stride != 1 or c_in != features:
        proj = f"{name}_proj_conv" if L else f"{name}_proj"
        shortcut = g.bn(g.conv(x, proj, features, 1, stride, groups=L or 1), f"{name}_proj_bn")
    y = x
    for k in (1, 2):
        layer = f"{name}_conv{k}"
        s = stride if k == 1 else 1
        if L:
            M = first_M if (k == 1 and first_M) else features // L
            y = igc_layer(g, y, layer, features, s, L, M)
        else:
            y = g.conv(y, layer, features, 3, s)
        y = g.bn(y, f"{layer}_bn")
        if k == 1:
            y = g.relu(y, f"{layer}_relu")
    return g.relu(g.plus(shortcut, y), f"{name}_relu")


def imagenet_symbol(stem: int, widths: list[int], L: list[int] | None, num_classes: int,
                    final_size: int, units: int = 2) -> dict:
    """The released ImageNet layout (ResNet-18 or IGC+Ident.), any widths; final avg pool size."""
    g = SymbolWriter()
    name = "g0_conv" if L else "g0"
    x = g.relu(g.bn(g.conv(0, name, stem, 7, 2), "g0_bn"), "g0_relu")
    x = g.pool(x, "g0_pool", "max", 3, 2, 1)
    c = stem
    for s, width in enumerate(widths, start=1):
        for u in range(1, units + 1):
            stride = 2 if s > 1 and u == 1 else 1
            x = residual_unit(g, x, c, f"g{s}_b{u}", width, stride, L[s - 1] if L else None)
            c = width
    x = g.pool(x, "global_pool", "avg", final_size, 1, 0)
    return g.to_json(g.head(x, num_classes))


def cifar_igc_symbol(L: int, M: int, units: int, num_classes: int) -> dict:
    """A CIFAR IGC-LxMy+Ident. net (3 stages, C, 2C, 4C, L fixed), official CIFAR quirk included."""
    g = SymbolWriter()
    C = L * M
    x = g.relu(g.bn(g.conv(0, "g0_conv", C, 3, 1), "g0_bn"), "g0_relu")
    c = C
    for s in range(1, 4):
        width = C * 2 ** (s - 1)
        for u in range(1, units + 1):
            stride = 2 if s > 1 and u == 1 else 1
            x = residual_unit(g, x, c, f"g{s}_b{u}", width, stride, L, first_M=c // L)
            c = width
    x = g.pool(x, "global_pool", "avg", 8, 1, 0)
    return g.to_json(g.head(x, num_classes))


# ---------------------------------------------------------------- running a symbol in MXNet
def _params(node: dict) -> dict:
    return node.get("param", node.get("attrs", node.get("attr", {})))


def reorder(x, branch_factor: int, name: str):
    """Stock-op channel shuffle: (N, C, H, W) → (N, B, C/B, H, W) → swap axes 1, 2 → (N, C, H, W).
    """
    y = mx.sym.reshape(x, shape=(0, -4, branch_factor, -1, -2), name=f"{name}_split")
    y = mx.sym.transpose(y, axes=(0, 2, 1, 3, 4), name=f"{name}_swap")
    return mx.sym.reshape(y, shape=(0, -3, -2), name=f"{name}_merge")


def check_reorder(C: int = 12, B: int = 3) -> None:
    """The substitute is the released op: output channel j·B + g takes input channel g·(C/B) + j."""
    x = mx.nd.array(np.arange(C, dtype=np.float32).reshape(1, C, 1, 1))
    out = reorder(mx.sym.Variable("x"), B, "check").eval(ctx=mx.cpu(), x=x)[0].asnumpy().ravel()
    expected = [g * (C // B) + j for j in range(C // B) for g in range(B)]
    if not np.array_equal(out, expected):
        raise SystemExit(f"reshape + transpose is not the Reorder permutation: {out} != {expected}")


def to_mxnet(symbol: dict):
    """Rebuild a released-dialect graph with stock MXNet ops; its output is the classifier's logits.
    """
    built: list = []
    for node in symbol["nodes"]:
        op, name, param = node["op"], node["name"], _params(node)
        inputs = [built[i[0]] for i in node["inputs"]]
        if op == "null":
            out = mx.sym.Variable(name)
        elif op == "Reorder":
            out = reorder(inputs[0], int(param["branch_factor"]), name)
        elif op == "_Plus":
            out = mx.sym.elemwise_add(*inputs, name=name)
        elif op == "SoftmaxOutput":
            out = inputs[0]  # compare logits, not probabilities
        else:
            out = getattr(mx.sym, op)(*inputs, name=name, **param)
        built.append(out)
    head = symbol["heads"][0][0]     # [node, index] or, from MXNet 1.0, [node, index, version]
    return built[head]


def random_weights(sym, data_shape: tuple, rng: np.random.Generator) -> tuple[dict, dict]:
    """He-normal convs, uniform classifier, random biases and non-trivial BatchNorm statistics."""
    arg_shapes, _, aux_shapes = sym.infer_shape(data=data_shape)
    args, aux = {}, {}
    for name, shape in zip(sym.list_arguments(), arg_shapes):
        if name == "data":
            continue
        if name.endswith("_weight") and len(shape) == 4:
            fan_in = np.prod(shape[1:])
            a = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif name.endswith("_weight"):
            a = rng.uniform(-1, 1, shape) * np.sqrt(3.0 / shape[1])
        elif name.endswith("_gamma"):
            a = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("_beta", "_bias")):
            a = rng.normal(0, 0.2, shape)
        else:
            raise ValueError(f"no rule for argument {name}")
        args[name] = mx.nd.array(a.astype(np.float32))
    for name, shape in zip(sym.list_auxiliary_states(), aux_shapes):
        if name.endswith("_moving_mean"):
            a = rng.normal(0, 0.3, shape)
        elif name.endswith("_moving_var"):
            a = rng.uniform(0.5, 2.0, shape)
        else:
            raise ValueError(f"no rule for auxiliary state {name}")
        aux[name] = mx.nd.array(a.astype(np.float32))
    return args, aux


def inference_logits(sym, args: dict, aux: dict, data: np.ndarray) -> np.ndarray:
    exe = sym.bind(mx.cpu(), {**args, "data": mx.nd.array(data)}, aux_states=aux, grad_req="null")
    return exe.forward(is_train=False)[0].asnumpy()


def calibrate(sym, args: dict, aux: dict, data: np.ndarray, passes: int) -> None:
    """Bring every BatchNorm's moving statistics to those of `data` (MXNet's own training-mode
    update, momentum 0.9, repeated `passes` times: 0.9^passes of the random start remains), as a
    trained network's are close to its data's. Random statistics leave the activations of a deep
    network (IGCV3's 98 BatchNorms) unnormalised, and float32 rounding grows with them. MXNet's
    CPU BatchNorm updates them in its backward pass, so each pass runs one (weights untouched)."""
    inputs = {**args, "data": mx.nd.array(data)}
    grads = {k: mx.nd.zeros(v.shape) for k, v in inputs.items()}
    exe = sym.bind(mx.cpu(), inputs, args_grad=grads, aux_states=aux, grad_req="write")
    for _ in range(passes):
        out = exe.forward(is_train=True)[0]
        exe.backward(mx.nd.ones(out.shape))
    mx.nd.waitall()


def write_model(out: Path, name: str, symbol: dict, image_size: int, batch: int, seed: int,
                normalization: str, calibration_passes: int = 0) -> None:
    """NAME-symbol.json (with Reorder), NAME-0000.params and NAME-logits.npz.

    The inputs are random uint8 RGB images (`image`, NHWC) normalised per channel (`mean`, `std`
    on the 0–255 scale) into `data` (NCHW float32), so a test can feed the same images through
    igc-jax's input pipeline.
    """
    rng = np.random.default_rng(seed)
    sym = to_mxnet(symbol)
    shape = (batch, 3, image_size, image_size)
    args, aux = random_weights(sym, shape, rng)
    images = rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION[normalization])
    data = ((images.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
    if calibration_passes:    # on other random images than the compared ones
        other = rng.integers(0, 256, images.shape, dtype=np.uint8).astype(np.float32)
        calibrate(sym, args, aux, ((other - mean) / std).transpose(0, 3, 1, 2),
                  calibration_passes)
    logits = inference_logits(sym, args, aux, data)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-symbol.json").write_text(json.dumps(symbol, indent=1) + "\n")
    arrays = {**{f"arg:{k}": v for k, v in args.items()}, **{f"aux:{k}": v for k, v in aux.items()}}
    mx.nd.save(str(out / f"{name}-0000.params"), arrays)
    np.savez(out / f"{name}-logits.npz", image=images, data=data, logits=logits, mean=mean,
             std=std, normalization=normalization)
    print(f"{name}: {len(args)} arguments, {len(aux)} auxiliary states, logits {logits.shape}, "
          f"|logits| max {np.abs(logits).max():.3g}")


# ---------------------------------------------------------------- pre-1.0 array layouts
def legacy_array_bytes(a: np.ndarray, v1: bool) -> bytes:
    """One float32 array as MXNet ≤ 0.10 wrote it (uint32 ndim, uint32 dims), or as V1 (magic,
    int64 dims)."""
    head = (struct.pack("<Ii", 0xF993FAC8, a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape) if v1
            else struct.pack("<I", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape))
    return head + struct.pack("<iii", 1, 0, 0) + a.astype("<f4").tobytes()


def write_legacy_params(out: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrays = {"arg:legacy_weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
              "aux:v1_moving_var": rng.uniform(0.5, 2, (5,)).astype(np.float32)}
    blob = struct.pack("<QQQ", 0x112, 0, len(arrays))
    blob += legacy_array_bytes(arrays["arg:legacy_weight"], v1=False)
    blob += legacy_array_bytes(arrays["aux:v1_moving_var"], v1=True)
    blob += struct.pack("<Q", len(arrays))
    for name in arrays:
        blob += struct.pack("<Q", len(name)) + name.encode()
    path = out / "legacy-params.params"
    path.write_bytes(blob)
    loaded = mx.nd.load(str(path))
    for name, a in arrays.items():
        if not np.array_equal(loaded[name].asnumpy(), a):
            raise SystemExit(f"MXNet reads {name} of {path} differently")
    np.savez(out / "legacy-params.npz", **arrays)
    print(f"legacy-params: {len(arrays)} arrays, read back by MXNet {mx.__version__} unchanged")


# The five released models as `imagenet_symbol` arguments: it rebuilds their symbol files exactly.
OFFICIAL = {
    "resnet_d18": (64, [64, 128, 256, 512], None),
    "resnet_d18_w69": (69, [69, 138, 276, 552], None),
    "resnet_gcwf_noshare_imagenet_d18b4": (128, [128, 256, 512, 1024], [4] * 4),
    "resnet_gcwf_noshare_imagenet_d18b16": (256, [256, 512, 1024, 2048], [16] * 4),
    "resnet_gcwf_noshare_imagenet_d18b100": (100, [200, 400, 800, 1600], [100, 200, 400, 800]),
}


def check_official_layouts(directory: Path) -> None:
    """The toy fixtures are in the released layout: the same builder reproduces the five files."""
    for name, (stem, widths, L) in OFFICIAL.items():
        released = json.loads((directory / f"{name}-symbol.json").read_text())
        if imagenet_symbol(stem, widths, L, 1000, 7) != released:
            raise SystemExit(f"imagenet_symbol does not rebuild {name}-symbol.json")
    print(f"imagenet_symbol rebuilds the {len(OFFICIAL)} released symbol files node for node")


FIXTURES = {
    # A CIFAR-size IGC-L2M4+Ident. net, one unit per stage (D = 8): identity and projection
    # shortcuts, and the official CIFAR quirk (C_in / L secondary groups) in stages 2 and 3.
    "cifar_igc_l2m4_d8": (lambda: cifar_igc_symbol(L=2, M=4, units=1, num_classes=10), 32,
                          "cifar10"),
    # The released ImageNet layouts at toy widths, 64×64 input (final maps 2×2): an IGC net with
    # M = 2 and a stem narrower than stage 1 (like IGC-L100M2), and a regular ResNet-18.
    "imagenet_igc_tiny": (lambda: imagenet_symbol(8, [16, 32, 64, 128], [8, 16, 32, 64], 10, 2), 64,
                          "imagenet"),
    "imagenet_resnet_tiny": (lambda: imagenet_symbol(8, [8, 16, 32, 64], None, 10, 2), 64,
                             "imagenet"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fx = sub.add_parser("fixtures", help="the small committed fixtures")
    fx.add_argument("--out", type=Path, required=True)
    fx.add_argument("--official", type=Path, help="folder of the released symbol files, to check "
                    "that the fixtures' builder reproduces them")
    off = sub.add_parser("official", help="a released symbol at 224×224 with random weights")
    off.add_argument("--symbol", type=Path, required=True, action="append")
    off.add_argument("--out", type=Path, required=True)
    off.add_argument("--batch", type=int, default=4)
    off.add_argument("--calibrate", type=int, default=0, metavar="PASSES",
                     help="set the BatchNorm moving statistics to other random images' batch "
                     "statistics first (MXNet's training-mode update, this many passes)")
    args = parser.parse_args()
    check_reorder()
    if args.command == "fixtures":
        if args.official:
            check_official_layouts(args.official)
        for seed, (name, (build, size, normalization)) in enumerate(FIXTURES.items()):
            write_model(args.out, name, build(), size, batch=3, seed=seed,
                        normalization=normalization)
        write_legacy_params(args.out, seed=len(FIXTURES))
    else:
        for seed, path in enumerate(args.symbol):
            name = path.name.removesuffix("-symbol.json")
            write_model(args.out, name, json.loads(path.read_text()), 224, args.batch, seed,
                        normalization="imagenet", calibration_passes=args.calibrate)


if __name__ == "__main__":
    main()
