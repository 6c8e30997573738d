"""The paper's networks (spec §2, §3): layouts, layer counts, exact parameter totals, forward
passes.

Expected totals are computed here from the spec's layout and the per-layer formulas
(regular conv k²·C_in/g·C_out, IGC primary 9·C_in/L·C_out + secondary C_out·C_out/M, BN 2C,
dense C·K + K), never by calling the code under test. Shapes come from `jax.eval_shape`; forward
passes use random parameters of those shapes (a real `init` costs a long XLA compile on CPU).
"""
from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from igc_jax import models
from igc_jax.igc import layers, modes
from igc_jax.models import norm

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_models"
SYMBOLS = {
    "ResNet (C=64)": "resnet_d18-symbol.json",
    "ResNet (C=69)": "resnet_d18_w69-symbol.json",
    "IGC-L4M32+Ident.": "resnet_gcwf_noshare_imagenet_d18b4-symbol.json",
    "IGC-L16M16+Ident.": "resnet_gcwf_noshare_imagenet_d18b16-symbol.json",
    "IGC-L100M2+Ident.": "resnet_gcwf_noshare_imagenet_d18b100-symbol.json",
}


# ----------------------------------------------------------------------------- helpers

def abstract_variables(model: nn.Module, image_size: int, batch: int = 1):
    x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def layer_kinds(params) -> dict[str, int]:
    """Number of each kind of layer in a flat parameter tree."""
    kinds = {"conv": 0, "igc": 0, "bn": 0, "dense": 0}
    for sub in params.values():
        if "primary" in sub:
            kinds["igc"] += 1
        elif "scale" in sub:
            kinds["bn"] += 1
        elif sub["kernel"].ndim == 4:
            kinds["conv"] += 1
        else:
            kinds["dense"] += 1
    return kinds


def random_variables(abstract, seed: int = 0):
    """Parameters of the right shapes: He-normal kernels, BN (1, 0), running stats (0, 1)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("kernel", "primary", "secondary"):
            fan_in = math.prod(leaf.shape[:-1])
            return jnp.asarray(rng.normal(0, math.sqrt(2 / fan_in), leaf.shape), jnp.float32)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, jnp.float32)
        return jnp.zeros(leaf.shape, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def conv_p(c_in, c_out, k=3, groups=1):
    return k * k * (c_in // groups) * c_out


def igc_p(c_in, c_out, L, M, k=3, sum_fusion=False):
    return k * k * (c_in // L) * c_out + (0 if sum_fusion else c_out * (c_out // M))


def cifar_expected(depth, *, width=None, L=None, M=None, residual=False, quirk=True,
                   sum_fusion=False, classes=10):
    """(total params, layer kinds) of a CIFAR net from spec §2's layout."""
    C = width if L is None else L * M
    total, kinds = conv_p(3, C) + 2 * C, {"conv": 1, "igc": 0, "bn": 1, "dense": 1}
    B = (depth - 2) // (6 if residual else 3)
    c_in = C
    kind = "conv" if L is None else "igc"

    def layer(cin, cout, secondary_groups):
        kinds[kind] += 1
        kinds["bn"] += 1
        if L is None:
            return conv_p(cin, cout) + 2 * cout
        return igc_p(cin, cout, L, secondary_groups, sum_fusion=sum_fusion) + 2 * cout

    for s in range(3):
        c_out = C * 2 ** s
        for _ in range(B):
            if residual:
                total += layer(c_in, c_out, (c_in if quirk else c_out) // (L or 1))
                total += layer(c_out, c_out, c_out // (L or 1))
                if c_in != c_out:
                    total += conv_p(c_in, c_out, k=1, groups=L or 1) + 2 * c_out
                    kinds["conv"] += 1
                    kinds["bn"] += 1
            else:
                total += layer(c_in, c_out, c_out // (L or 1))
            c_in = c_out
    return total + 4 * C * classes + classes, kinds


def imagenet_expected(stem, widths, L=None, classes=1000):
    """(total params, layer kinds) of a ResNet-18-layout net from spec §3's table."""
    total = conv_p(3, stem, k=7) + 2 * stem
    kinds = {"conv": 1, "igc": 0, "bn": 1, "dense": 1}
    c_in = stem
    for s, c_out in enumerate(widths):
        for u in range(2):
            for cin in (c_in, c_out):
                if L is None:
                    total += conv_p(cin, c_out)
                    kinds["conv"] += 1
                else:
                    total += igc_p(cin, c_out, L[s], c_out // L[s])
                    kinds["igc"] += 1
                total += 2 * c_out
                kinds["bn"] += 1
            if c_in != c_out:
                total += conv_p(c_in, c_out, k=1, groups=1 if L is None else L[s]) + 2 * c_out
                kinds["conv"] += 1
                kinds["bn"] += 1
            c_in = c_out
    return total + widths[-1] * classes + classes, kinds


CIFAR_CASES = {
    "W16,D20": dict(depth=20, width=16),
    "W18,D26,ident": dict(depth=26, width=18, residual=True),
    "W16,D8,ident": dict(depth=8, width=16, residual=True),
    "L24M2,D20": dict(depth=20, L=24, M=2),
    "L24M2,D8": dict(depth=8, L=24, M=2),
    "L24M2,D20,ident": dict(depth=20, L=24, M=2, residual=True),
    "L24M2,D20,ident,noquirk": dict(depth=20, L=24, M=2, residual=True, quirk=False),
    "L4M8,D26": dict(depth=26, L=4, M=8),
    "L4M8,D20,sumfusion": dict(depth=20, L=4, M=8, sum_fusion=True),
    "L4M8,D20,ident,sumfusion": dict(depth=20, L=4, M=8, residual=True, sum_fusion=True),
}

IMAGENET_LAYOUTS = {  # spec §3's table, typed in again here
    "ResNet (C=64)": (64, (64, 128, 256, 512), None),
    "ResNet (C=69)": (69, (69, 138, 276, 552), None),
    "IGC-L4M32+Ident.": (128, (128, 256, 512, 1024), (4, 4, 4, 4)),
    "IGC-L16M16+Ident.": (256, (256, 512, 1024, 2048), (16, 16, 16, 16)),
    "IGC-L100M2+Ident.": (100, (200, 400, 800, 1600), (100, 200, 400, 800)),
}


# ----------------------------------------------------------------------------- shapes and counts

@pytest.mark.parametrize("arg, classes", [(arg, 10) for arg in CIFAR_CASES] +
                         [("L24M2,D20,ident", 100), ("W16,D20", 100)])
def test_cifar_totals_layer_counts_and_output_shape(arg, classes):
    model = models.build_model(models.cifar_model(arg), num_classes=classes)
    variables = abstract_variables(model, 32, batch=2)
    total, kinds = cifar_expected(**CIFAR_CASES[arg], classes=classes)
    assert count(variables["params"]) == total
    assert layer_kinds(variables["params"]) == kinds
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                         jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert (out.shape, out.dtype) == ((2, classes), jnp.float32)


@pytest.mark.parametrize("network", list(IMAGENET_LAYOUTS))
def test_imagenet_totals_layer_counts_and_output_shape(network):
    model = models.build_model(models.imagenet_model(network), num_classes=1000)
    variables = abstract_variables(model, 224)
    total, kinds = imagenet_expected(*IMAGENET_LAYOUTS[network])
    assert count(variables["params"]) == total
    assert layer_kinds(variables["params"]) == kinds
    # Feature maps 112 (stem) → 56 (max-pool, stage 1) → 28 → 14 → 7, as the MXNet models.
    last = [k for k in variables["params"] if k.startswith("stage4_unit2_bn2")][0]
    assert variables["batch_stats"][last]["mean"].shape == (IMAGENET_LAYOUTS[network][1][-1],)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                         jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert (out.shape, out.dtype) == ((1, 1000), jnp.float32)


def test_resnet18_matches_the_standard_count():
    """ResNet-18 (C=64, 1000 classes) has 11,689,512 parameters in every framework's model zoo."""
    model = models.build_model(models.imagenet_model("ResNet (C=64)"), num_classes=1000)
    assert count(abstract_variables(model, 224)["params"]) == 11_689_512


def test_downsampling_quirk_changes_only_the_first_igc_layer_of_stages_2_and_3():
    quirk, plain = (abstract_variables(models.build_model(models.cifar_model(a), num_classes=10),
                                       32)["params"]
                    for a in ("L24M2,D20,ident", "L24M2,D20,ident,noquirk"))
    differing = sorted(k for k in quirk if jax.tree.map(lambda a: a.shape, quirk[k])
                       != jax.tree.map(lambda a: a.shape, plain[k]))
    assert differing == ["stage2_unit1_igc1", "stage3_unit1_igc1"]
    # Stage 2 (C_in 48, C_out 96, L 24): secondary groups C_in/L = 2 (48 channels each), not 4.
    assert quirk["stage2_unit1_igc1"]["secondary"].shape == (1, 1, 48, 96)
    assert plain["stage2_unit1_igc1"]["secondary"].shape == (1, 1, 24, 96)


def test_sum_fusion_has_no_secondary_parameters():
    params = abstract_variables(models.build_model(models.cifar_model("L4M8,D8,sumfusion"),
                                                   num_classes=10), 32)["params"]
    igc = [v for v in params.values() if "primary" in v]
    assert igc and all(set(v) == {"primary"} for v in igc)


# ----------------------------------------------------------------------------- against MXNet

def _mxnet_layers(symbol: dict):
    """{node name: (op, attrs, input channels)} of the symbol's Convolution/BN/FC/Reorder nodes."""
    nodes, channels, out = symbol["nodes"], {}, {}
    for i, node in enumerate(nodes):
        attrs = node.get("attrs") or node.get("attr") or node.get("param") or {}
        ins = [j for j, *_ in node["inputs"] if nodes[j]["op"] != "null"]
        c_in = channels[ins[0]] if ins else 3
        if node["op"] == "Convolution":
            channels[i] = int(attrs["num_filter"])
        elif node["op"] == "FullyConnected":
            channels[i] = int(attrs["num_hidden"])
        else:
            channels[i] = c_in
        if node["op"] in ("Convolution", "BatchNorm", "FullyConnected", "Reorder"):
            out[node["name"]] = (node["op"], attrs, c_in)
    return out


def _ours(mx_name: str) -> tuple[str, str | None]:
    """MXNet layer name → (our module name, IGC part or None)."""
    if mx_name in ("g0", "g0_conv"):
        return "stem_conv", None
    if mx_name == "g0_bn":
        return "stem_bn", None
    if mx_name == "fc_score":
        return "classifier", None
    m = re.match(r"^g(\d)_b(\d)_(conv(\d)|proj)(_conv(\d)|_conv|_bn|_reorder(\d))?$", mx_name)
    assert m, mx_name
    unit = f"stage{m[1]}_unit{m[2]}"
    if m[3] == "proj":
        return (f"{unit}_proj_bn" if m[5] == "_bn" else f"{unit}_proj"), None
    k = m[4]
    if m[5] == "_bn":
        return f"{unit}_bn{k}", None
    if m[6]:
        return f"{unit}_igc{k}", ("primary", "secondary")[int(m[6]) - 1]
    if m[7]:
        return f"{unit}_igc{k}", f"reorder{m[7]}"
    return f"{unit}_conv{k}", None


def _modules(model: nn.Module, image_size: int) -> dict[str, nn.Module]:
    found = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.path:
            found["/".join(context.module.path)] = context.module
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        abstract_variables(model, image_size)
    return found


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="official MXNet symbol files not present")
@pytest.mark.parametrize("network", list(SYMBOLS))
def test_imagenet_layout_matches_the_released_mxnet_symbol(network):
    """Every conv (filters, groups, kernel, stride, pad), shuffle, BN (eps, momentum) and the
    classifier of the released model, and nothing else, with identical parameter shapes."""
    layers_mx = _mxnet_layers(json.loads((OFFICIAL / SYMBOLS[network]).read_text()))
    model = models.build_model(models.imagenet_model(network), num_classes=1000)
    params = abstract_variables(model, 224)["params"]
    modules = _modules(model, 224)
    covered = set()
    mx_params = 0
    for mx_name, (op, attrs, c_in) in layers_mx.items():
        name, part = _ours(mx_name)
        module = modules[name]
        covered.add(name)
        if op == "Convolution":
            kh, kw = ast.literal_eval(attrs["kernel"])
            stride, pad = ast.literal_eval(attrs["stride"]), ast.literal_eval(attrs["pad"])
            groups, filters = int(attrs["num_group"]), int(attrs["num_filter"])
            shape = (kh, kw, c_in // groups, filters)
            mx_params += math.prod(shape)
            if part is None:
                assert isinstance(module, nn.Conv) and params[name]["kernel"].shape == shape
                assert (module.feature_group_count, tuple(module.strides)) == (groups, stride)
                assert tuple(map(tuple, module.padding)) == ((pad[0],) * 2, (pad[1],) * 2)
            else:
                assert isinstance(module, layers.IGCConv) and params[name][part].shape == shape
                if part == "primary":
                    assert (module.L, tuple(module.strides)) == (groups, stride)
                    assert module.padding is None and pad == (kh // 2, kw // 2)
                else:
                    assert module.secondary_groups == groups and (kh, kw) == (1, 1)
        elif op == "Reorder":
            B = int(attrs["branch_factor"])
            assert B == (module.L if part == "reorder1" else module.secondary_groups)
        elif op == "BatchNorm":
            assert isinstance(module, norm.BatchNorm) and params[name]["scale"].shape == (c_in,)
            assert (module.epsilon, module.momentum) == (float(attrs["eps"]),
                                                         float(attrs["momentum"]))
            assert attrs["fix_gamma"] == "False"
            mx_params += 2 * c_in
        else:
            assert params[name]["kernel"].shape == (c_in, int(attrs["num_hidden"]))
            mx_params += (c_in + 1) * int(attrs["num_hidden"])
    assert covered == set(params)
    assert mx_params == count(params)


# ----------------------------------------------------------------------------- forward passes

def _forward(model, image_size, batch=2, seed=0):
    """Train-mode forward (batch statistics, updated running stats) with random parameters."""
    variables = random_variables(abstract_variables(model, image_size, batch))
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(batch, image_size, image_size, 3)),
                    jnp.float32)
    fn = jax.jit(lambda v, x: model.apply(
        v, x, train=True, mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda m, _: m.name == "stem_conv"))
    logits, state = fn(variables, x)
    return x, variables, logits, state


@pytest.mark.parametrize("arg, momentum", [
    ("W16,D8", 0.99), ("W16,D8,ident", 0.9), ("L24M2,D8", 0.99), ("L24M2,D8,ident", 0.9),
    ("L24M2,D8,ident,noquirk", 0.9), ("L4M8,D8,sumfusion", 0.99), ("L4M8,D8,ident,sumfusion", 0.9)])
def test_cifar_forward_and_batchnorm_momentum(arg, momentum):
    """Runs; logits (N, classes) float32, finite, differ between images; BN running mean moves by
    (1 − momentum)·batch mean (plain nets 0.99, residual 0.9, spec §2)."""
    model = models.build_model(models.cifar_model(arg), num_classes=10, plan="grouped")
    _, variables, logits, state = _forward(model, 32)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all() and not np.allclose(logits[0], logits[1])
    stem = state["intermediates"]["stem_conv"]["__call__"][0]
    np.testing.assert_allclose(state["batch_stats"]["stem_bn"]["mean"],
                               (1 - momentum) * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    assert set(state["batch_stats"]) == set(variables["batch_stats"])


@pytest.mark.parametrize("network", list(IMAGENET_LAYOUTS))
def test_imagenet_forward_on_a_small_input(network):
    """32×32 input (1×1 after stage 4); the stem pads 3 on every side as MXNet, not XLA 'SAME'."""
    model = models.build_model(models.imagenet_model(network), num_classes=1000,
                               plan="grouped")
    x, variables, logits, state = _forward(model, 32)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all() and not np.allclose(logits[0], logits[1])
    stem = state["intermediates"]["stem_conv"]["__call__"][0]
    kernel = variables["params"]["stem_conv"]["kernel"]
    symmetric = modes.conv(x, kernel, (2, 2), ((3, 3), (3, 3)))
    np.testing.assert_allclose(stem, symmetric, rtol=1e-5, atol=1e-5)
    same = lax.conv_general_dilated(x, kernel, (2, 2), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert same.shape == stem.shape and not np.allclose(same, stem, atol=1e-3)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = models.build_model(models.cifar_model("L24M2,D8,ident"), num_classes=10,
                               dtype="bfloat16", plan="grouped")
    abstract = abstract_variables(model, 32, batch=2)
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
    variables = random_variables(abstract)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
    low = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    full = models.build_model(models.cifar_model("L24M2,D8,ident"), num_classes=10,
                              plan="grouped")
    ref = jax.jit(lambda v, x: full.apply(v, x, train=False))(variables, x)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, ref, rtol=0.1, atol=0.1 * float(np.abs(ref).max()))


# ----------------------------------------------------------------------------- init and errors

# What each `model.init` must give, stated independently of the code: the std (and bound) of
# every kernel from its fan_in = kh·kw·C_in/groups (Flax HWIO: the product of all but the last
# axis), and the classifier bias.
#   he_normal (official MXNet): convs N(0, 2/fan_in); classifier U(±sqrt(1/fan_in)); bias 0.
#   torch_default (torch.nn.Conv2d / Linear reset_parameters: kaiming_uniform_(a=√5)):
#     every kernel U(±sqrt(1/fan_in)), std sqrt(1/(3·fan_in)); classifier bias U(±sqrt(1/fan_in)).
#   mxnet_xavier (official IGCV3, Xavier gaussian, factor 'in', magnitude 2): every kernel
#     N(0, 2/fan_in), classifier included; bias 0.
EXPECTED_INIT = {
    "he_normal": lambda fan_in, conv: (math.sqrt(2 / fan_in) if conv
                                       else math.sqrt(1 / (3 * fan_in))),
    "torch_default": lambda fan_in, conv: math.sqrt(1 / (3 * fan_in)),
    "mxnet_xavier": lambda fan_in, conv: math.sqrt(2 / fan_in),
}
UNIFORM = {"he_normal": ("classifier",), "torch_default": ("conv", "classifier"),
           "mxnet_xavier": ()}


@pytest.mark.parametrize("init", sorted(EXPECTED_INIT))
@pytest.mark.parametrize("arg", ["L24M2,D8", "W16,D8,ident", "L4M8,D8,ident"])
def test_initialisation_gives_each_layer_its_standard_deviation(init, arg):
    cfg = dict(models.cifar_model(arg), init=init)
    model = models.build_model(cfg, num_classes=10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    kernels = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v, np.float64)
               for path, v in jax.tree_util.tree_leaves_with_path(params)
               if v.ndim >= 2}
    assert len(kernels) >= 8
    for name, w in kernels.items():
        fan_in = int(np.prod(w.shape[:-1]))
        conv = not name.startswith("classifier")
        expected = EXPECTED_INIT[init](fan_in, conv)
        tol = 5 / math.sqrt(2 * w.size) + 0.01           # ~5 sigma of a sample std
        assert abs(w.std() / expected - 1) < tol, (name, w.shape, w.std(), expected)
        assert abs(w.mean()) < 6 * expected / math.sqrt(w.size), name
        if ("conv" if conv else "classifier") in UNIFORM[init]:  # bounded by sqrt(3)·std
            assert np.abs(w).max() <= math.sqrt(1 / fan_in) * (1 + 1e-6), name
    bias = np.asarray(params["classifier"]["bias"])
    fan_in = params["classifier"]["kernel"].shape[0]
    if init != "torch_default":
        assert not bias.any()
    else:
        assert bias.any() and np.abs(bias).max() <= math.sqrt(1 / fan_in)
    scales = [np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(params)
              if getattr(path[-1], "key", "") == "scale"]
    assert scales and all(np.all(s == 1) for s in scales)    # BatchNorm γ = 1 in both


def test_unknown_init_fails_with_one_line():
    with pytest.raises(ValueError, match="model.init must be one of he_normal, torch_default"):
        models.validate_model_config(dict(models.cifar_model("L24M2,D8"), init="xavier"),
                                     num_classes=10)


@pytest.mark.parametrize("cfg, message", [
    (dict(name="resnet50"), "unknown model name 'resnet50'"),
    (dict(name="cifar_igc", depth=20, L=24), "needs field(s) M"),
    (dict(name="cifar_igc", depth=20, L=24, M=2, width=48), "has no field(s) width"),
    (dict(name="cifar_igc", depth=21, L=24, M=2), "depth 21 is not of the form 3B+2"),
    (dict(name="cifar_igc", depth=11, L=24, M=2, residual=True), "not of the form 6B+2"),
    (dict(name="cifar_regconv", depth=20, width=0), "model.width must be a positive integer"),
    (dict(name="imagenet_igc_resnet18", stem_width=128, widths=(128, 256, 512, 1024),
          L=(3, 4, 4, 4)), "stage 1: input 128 channels are not divisible by L=3"),
    (dict(name="imagenet_igc_resnet18", stem_width=100, widths=(200, 400, 800, 1600),
          L=(100, 200, 400)), "model.L must be 4 positive integers"),
    (dict(name="imagenet_resnet18", stem_width=64, widths=(64, 128)), "model.widths must be 4"),
])
def test_bad_model_configs_fail_with_one_line(cfg, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        models.validate_model_config(cfg, num_classes=10)
    assert "\n" not in str(err.value)


def test_bad_build_arguments_fail_with_one_line():
    cfg = models.cifar_model("L24M2,D20")
    with pytest.raises(ValueError, match="unknown IGC computation mode 'fast'"):
        models.build_model(cfg, num_classes=10, plan="fast")
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        models.build_model(cfg, num_classes=0)


@pytest.mark.parametrize("arg, message", [
    ("", "empty CIFAR network string"),
    ("L24M2", "has no depth token"),
    ("Q24,D20", "neither W<width> nor L<x>M<y>"),
    ("L24M2,D20,wide", "unknown token 'wide'"),
    ("W16,D20,sumfusion", "sumfusion only applies to IGC networks"),
])
def test_bad_cifar_network_strings(arg, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        models.cifar_model(arg)


def test_network_names_follow_the_paper():
    assert models.network_name(models.cifar_model("L24M2,D20,ident")) == "IGC-L24M2+Ident. (D=20)"
    assert models.network_name(models.cifar_model("W18,D8")) == "RegConv-W18 (D=8)"
    assert models.network_name(models.cifar_model("L4M8,D26,sumfusion")) == \
        "SumFusion-L4M8 (D=26)"
    for network in IMAGENET_LAYOUTS:
        assert models.network_name(models.imagenet_model(network)) == network
