"""Per-layer summary of a network: shapes, kernels, groups, parameters and multiply-adds.

    python -m igc_jax.summary --config=experiments/imagenet_l16m16.py
    python -m igc_jax.summary --config=experiments/cifar10_igc.py:L24M2,D20 --json
    python -m igc_jax.summary --paper

Everything comes from shapes: the model is initialised under `jax.eval_shape` (traced, never
compiled or run) while a method interceptor records each layer's input and output shapes, so even
an ImageNet network takes seconds on a CPU. Multiply-adds (MACs) are per image at the config's
input size and count the convolutions (both the primary and the secondary convolution of an IGC
layer) and the classifier, the convention of the paper's FLOPs column. SumFusion's fixed secondary
is a summation (additions only): no parameters and no multiply-adds.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from igc_jax import models
from igc_jax.cli import parse_absl_flags, reports_user_errors
from igc_jax.errors import fail
from igc_jax.igc.depthwise import DepthwiseConv
from igc_jax.igc.layers import IGCConv
from igc_jax.models.norm import BatchNorm

# Spec §3: the paper's ImageNet table, (#params in millions, FLOPs in G) per network.
PAPER_IMAGENET = {
    "ResNet (C=64)": (11.151, 1.8),
    "ResNet (C=69)": (11.333, 2.1),
    "IGC-L4M32+Ident.": (11.205, 1.9),
    "IGC-L16M16+Ident.": (11.329, 2.2),
    "IGC-L100M2+Ident.": (8.61, 1.3),
}
# The CIFAR networks the paper compares, at D = 20, plain and +Ident. (`models.cifar_model` args).
PAPER_CIFAR = ("W16", "W18", "L24M2", "L4M8", "L4M8,sumfusion")
FLAGS = flags.FLAGS
TOTAL_KEYS = ("params", "conv_params", "classifier_params", "bn_params", "macs")


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer: `kind` is conv | igc | bn | dense; shapes are per image (H, W, C) or (C,)."""
    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: str
    groups: str
    params: int
    macs: int


def _size(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _kernel(kernel_size, strides) -> str:
    """`3×3`, or `3×3/2` for a strided kernel."""
    text = "×".join(map(str, kernel_size))
    if max(strides) > 1:
        text += "/" + ("×".join(map(str, strides)) if len(set(strides)) > 1 else str(strides[0]))
    return text


def _row(module: nn.Module, in_shape, out_shape, params) -> Row | None:
    """The summary row of one recorded call, or None for modules that are not layers."""
    name = "/".join(module.path)
    pixels = math.prod(out_shape[:-1])  # output positions per image (1 for the classifier)
    n = _size(params)
    if isinstance(module, IGCConv):
        C, M = out_shape[-1], module.secondary_groups
        primary = math.prod(params["primary"].shape)
        secondary = 0 if module.sum_fusion else C * (C // M)
        return Row(name, "igc", in_shape, out_shape,
                   f"{_kernel(module.kernel_size, module.strides)} + 1×1",
                   f"L={module.L}, M={M}" + (" (sum)" if module.sum_fusion else ""), n,
                   (primary + secondary) * pixels)
    if isinstance(module, DepthwiseConv):
        return Row(name, "conv", in_shape, out_shape, _kernel(module.kernel_size, module.strides),
                   str(out_shape[-1]), n, math.prod(params["kernel"].shape) * pixels)
    if isinstance(module, nn.Conv):
        return Row(name, "conv", in_shape, out_shape, _kernel(module.kernel_size, module.strides),
                   str(module.feature_group_count), n, math.prod(params["kernel"].shape) * pixels)
    if isinstance(module, nn.Dense):
        return Row(name, "dense", in_shape, out_shape, "", "", n,
                   math.prod(params["kernel"].shape) * pixels)
    if isinstance(module, BatchNorm):
        return Row(name, "bn", in_shape, out_shape, "", "", n, 0)
    return None


def layer_rows(model: nn.Module, image_size: int) -> list[Row]:
    """Rows of every conv, IGC, BatchNorm and dense layer, in call order, from shapes only."""
    calls = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            calls.append((context.module, tuple(args[0].shape[1:]), tuple(out.shape[1:])))
        return out

    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    params = variables["params"]
    rows = []
    for module, in_shape, out_shape in calls:
        if module.path and (row := _row(module, in_shape, out_shape,
                                        _subtree(params, module.path))) is not None:
            rows.append(row)
    counted = sum(r.params for r in rows)
    if counted != _size(params):
        raise ValueError(f"summary counted {counted} of {_size(params)} parameters: a layer kind "
                         "is missing from igc_jax.summary")
    return rows


def _subtree(params: Mapping[str, Any], path: tuple[str, ...]):
    for key in path:
        params = params.get(key, {})
    return params


def totals(rows: list[Row]) -> dict[str, int]:
    """Trainable parameters, split into conv / classifier / BatchNorm; MACs of conv + classifier."""
    def by_kind(*kinds: str) -> int:
        return sum(r.params for r in rows if r.kind in kinds)

    return {
        "params": sum(r.params for r in rows),
        "conv_params": by_kind("conv", "igc"),
        "classifier_params": by_kind("dense"),
        "bn_params": by_kind("bn"),
        "macs": sum(r.macs for r in rows),
    }


def summarize_model(model_cfg: Mapping[str, Any], *, num_classes: int,
                    image_size: int) -> tuple[list[Row], dict[str, int]]:
    """(rows, totals) of a model config at a square input of `image_size` pixels."""
    model = models.build_model(model_cfg, num_classes=num_classes, plan="grouped")
    rows = layer_rows(model, image_size)
    return rows, totals(rows)


def summarize(config: ml_collections.ConfigDict) -> tuple[list[Row], dict[str, int]]:
    """(rows, totals) of an experiment config, at its dataset's classes and input size."""
    return summarize_model(config.model, num_classes=config.dataset.num_classes,
                           image_size=config.dataset.image_size)


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def format_table(rows: list[Row], total: dict[str, int], title: str = "") -> str:
    """The per-layer table and the totals as plain text."""
    header = ("layer", "input → output", "kernel", "groups", "params", "MACs")
    body = [(r.name, f"{_shape(r.in_shape)} → {_shape(r.out_shape)}", r.kernel, r.groups,
             f"{r.params:,}", f"{r.macs:,}") for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = {4, 5}

    def fmt(line):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    lines = ([title] if title else []) + [fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(line) for line in body]
    lines += [
        "",
        f"trainable parameters      {total['params']:>15,}",
        f"  conv only               {total['conv_params']:>15,}",
        f"  conv + classifier       {total['conv_params'] + total['classifier_params']:>15,}",
        f"  BatchNorm (scale, bias) {total['bn_params']:>15,}",
        f"multiply-adds per image   {total['macs']:>15,}  (conv + classifier)",
    ]
    return "\n".join(lines)


def _markdown(header: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(line) + " |" for line in body]


def paper_table() -> str:
    """Our counts beside the paper's #params and FLOPs (ImageNet), and the CIFAR nets at D = 20."""
    def m(n: int) -> str:
        return f"{n / 1e6:.3f}M"

    body = []
    for network, (paper_params, paper_flops) in PAPER_IMAGENET.items():
        _, t = summarize_model(models.imagenet_model(network), num_classes=1000, image_size=224)
        body.append((network, m(t["params"]), m(t["conv_params"]),
                     m(t["conv_params"] + t["classifier_params"]), m(t["bn_params"]),
                     f"{paper_params:.3f}M", f"{t['macs'] / 1e9:.3f}G", f"{paper_flops:.1f}G",
                     f"{t['macs'] / 1e9 - paper_flops:+.3f}G"))
    lines = ["ImageNet, 224×224, 1000 classes (paper: spec §3; its #params column follows no "
             "single counting convention)", ""]
    lines += _markdown(("network", "params", "conv", "conv+cls", "BN", "paper #params", "MACs",
                        "paper FLOPs", "MACs − paper"), body)

    cifar = []
    for arg in PAPER_CIFAR:
        for ident in ("", ",ident"):
            cfg = models.cifar_model(f"{arg},D20{ident}")
            cifar.append((models.network_name(cfg),
                          summarize_model(cfg, num_classes=10, image_size=32)[1]))
    ref = cifar[0][1]  # RegConv-W16, plain
    body = [(name, m(t["params"]), m(t["conv_params"]),
             m(t["conv_params"] + t["classifier_params"]), m(t["bn_params"]),
             f"{t['macs'] / 1e6:.2f}M", f"{t['params'] / ref['params']:.2f}",
             f"{t['macs'] / ref['macs']:.2f}") for name, t in cifar]
    lines += ["", "CIFAR-10, 32×32, D = 20 (the spec quotes no CIFAR #params/FLOPs; ratios are to "
              "plain RegConv-W16, the paper's baseline)", ""]
    lines += _markdown(("network", "params", "conv", "conv+cls", "BN", "MACs", "params / W16",
                        "MACs / W16"), body)
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    if FLAGS.paper:
        print(paper_table())
        return
    if FLAGS.config is None:
        fail("give --config=<experiment file>[:arg] or --paper")
    from igc_jax.training.validate import validate
    validate(FLAGS.config)  # a bad field is the user's one line, before any model is built
    rows, total = summarize(FLAGS.config)
    if FLAGS.json:
        print(json.dumps(total))
    else:
        print(format_table(rows, total, title=models.network_name(FLAGS.config.model)))


def _define_flags() -> None:
    """Command-line flags, defined only when run as a script (importers keep their own flags)."""
    config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]")
    flags.DEFINE_bool("json", False, "print only the totals, as one JSON object")
    flags.DEFINE_bool("paper", False, "print our counts beside the paper's for its networks")


if __name__ == "__main__":
    _define_flags()
    app.run(reports_user_errors(main), flags_parser=parse_absl_flags)
