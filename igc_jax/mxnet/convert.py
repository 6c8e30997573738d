"""Convert the authors' released MXNet models (`-symbol.json` + `.params`) into igc-jax variables.

    python -m igc_jax.convert_mxnet --symbol=resnet_gcwf_noshare_imagenet_d18b16-symbol.json \\
        --params=resnet_gcwf_noshare_imagenet_d18b16-0095.params --out=converted/l16m16

`igc_jax.mxnet.symbol` parses the graph into layers, `igc_jax.mxnet.infer` finds the igc-jax model
that has them; this module builds that network's variables (shapes only) and fills every one from
the params file (`igc_jax.mxnet.format`):

    Convolution weight (O, I/groups, kh, kw)  → kernel / primary / secondary (kh, kw, I/groups, O)
                       (MXNet and Flax both put the groups in contiguous channel blocks)
    Reorder(branch_factor=B)                  → the shuffle(B) inside `IGCConv` (checked, no array)
    BatchNorm gamma, beta                     → params scale, bias (gamma is 1 when fix_gamma)
    BatchNorm moving_mean, moving_var         → batch_stats mean, var
    FullyConnected weight (classes, C), bias  → classifier kernel (C, classes), bias
    IGCV3 (Reshape → SwapAxis → Reshape)      → the shuffle(2) inside each block (checked, no
                                                array); block k of the symbol's stage s (a stage
                                                starts at a block without shortcut) →
                                                stage{s}_unit{k}_{expand,depthwise,linear}[_bn]

Every array of the params file must be used exactly once with the shape the symbol implies, and
every variable of the network must receive one; anything else is a one-line UserError naming the
layer. `igc_jax.mxnet.saved` writes the result to disk.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from igc_jax.errors import UserError
from igc_jax.mxnet import format as mxnet_format
from igc_jax.mxnet.infer import ConvertedModel, model_config
from igc_jax.mxnet.symbol import (IGC, BatchNorm, Conv, InvertedNetwork, Layer, Network,
                                  parse_symbol)


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


def convert_arrays(network: Network | InvertedNetwork, arrays: dict[str, np.ndarray],
                   abstract: dict) -> dict:
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
    if isinstance(network, InvertedNetwork):
        stage = unit = 0
        for b in network.blocks:
            stage, unit = (stage, unit + 1) if b.shortcut else (stage + 1, 1)
            for part, c, bn in (("expand", b.expand, b.expand_bn),
                                ("depthwise", b.depthwise, b.depthwise_bn),
                                ("linear", b.linear, b.linear_bn)):
                conv(f"stage{stage}_unit{unit}_{part}", c)
                batch_norm(f"stage{stage}_unit{unit}_{part}_bn", bn)
        conv("head_conv", network.head)
        batch_norm("head_bn", network.head_bn)
    else:
        prefixes = _unit_prefixes(abstract["params"])
        if len(prefixes) != len(network.units):
            raise UserError(f"the symbol has {len(network.units)} residual units, the igc-jax "
                            f"model {len(prefixes)}")
        for prefix, u in zip(prefixes, network.units):
            for k, (unit_layer, bn) in enumerate(((u.layer1, u.bn1), (u.layer2, u.bn2)), start=1):
                kind = "igc" if isinstance(unit_layer, IGC) else "conv"
                layer(f"{prefix}_{kind}{k}", unit_layer)
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

    # Shapes only: an explicit mode decides nothing and builds no C++ kernel.
    model = models.build_model(converted.model, num_classes=converted.num_classes,
                               plan="grouped")
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
