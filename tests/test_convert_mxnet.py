"""The MXNet converter against MXNet itself; igc-jax's ImageNet nets against the released symbols.

Fixtures (tests/fixtures/mxnet, made by tools/make_mxnet_fixture.py in an MXNet 1.9.1 venv): toy
networks in the released symbols' layout with random weights and BatchNorm statistics, and the
logits MXNet computed for them in inference mode.
"""
from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igc_jax import configs, evaluate, models
from igc_jax import convert_mxnet as convert_cli
from igc_jax.mxnet import convert as convert_mxnet
from igc_jax.mxnet import format as mxnet_format
from igc_jax.mxnet import infer as mxnet_infer
from igc_jax.mxnet import saved as mxnet_saved
from igc_jax.mxnet import symbol as mxnet_symbol
from igc_jax.data import NORMALIZATION
from igc_jax.errors import UserError
from igc_jax.igc.layers import IGCConv, same_padding
from igc_jax.models.norm import BatchNorm

FIXTURES = Path(__file__).parent / "fixtures" / "mxnet"
OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_models"
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# The five released symbol files and the experiments config of each network (spec §3).
RELEASED = {
    "resnet_d18": "imagenet_resnet18_c64.py",
    "resnet_d18_w69": "imagenet_resnet18_c69.py",
    "resnet_gcwf_noshare_imagenet_d18b4": "imagenet_l4m32.py",
    "resnet_gcwf_noshare_imagenet_d18b16": "imagenet_l16m16.py",
    "resnet_gcwf_noshare_imagenet_d18b100": "imagenet_l100m2.py",
}
needs_official = pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f"{OFFICIAL} is absent")


def load_fixture(name: str) -> tuple[dict, dict, dict]:
    symbol = json.loads((FIXTURES / f"{name}-symbol.json").read_text())
    arrays = mxnet_format.load_params(FIXTURES / f"{name}-0000.params")
    with np.load(FIXTURES / f"{name}-logits.npz") as z:
        reference = {k: z[k] for k in z.files}
    return symbol, arrays, reference


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b|: relative to the logits' scale, stable where single logits are ~0."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def experiment_config(filename: str):
    namespace: dict = {}
    exec(compile((EXPERIMENTS / filename).read_text(), filename, "exec"), namespace)
    return namespace["get_config"]()


# ---------------------------------------------------------------- (a) equal to MXNet's logits
@pytest.mark.parametrize("name, conv_mode", [
    ("cifar_igc_l2m4_d8", "auto"), ("cifar_igc_l2m4_d8", "grouped"),
    ("imagenet_igc_tiny", "auto"), ("imagenet_igc_tiny", "grouped"),
    ("imagenet_resnet_tiny", "auto")])
def test_converted_fixture_matches_mxnet_logits(name, conv_mode):
    """`auto` is `composed` on CPU; `grouped` is what accelerators run."""
    symbol, arrays, ref = load_fixture(name)
    variables, converted = convert_mxnet.convert_model(symbol, arrays)
    model = models.build_model(converted.model, num_classes=converted.num_classes,
                               plan=conv_mode)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, jnp.asarray(ref["data"].transpose(0, 2, 3, 1)))
    assert logits.shape == ref["logits"].shape
    assert relative_error(np.asarray(logits), ref["logits"]) < 1e-4


def test_fixture_models_are_the_expected_configs():
    expected = {
        "cifar_igc_l2m4_d8": ({"name": "cifar_igc", "depth": 8, "L": 2, "M": 4, "residual": True,
                               "downsample_quirk": True}, 10, 32),
        "imagenet_igc_tiny": ({"name": "imagenet_igc_resnet18", "stem_width": 8,
                               "widths": [16, 32, 64, 128], "L": [8, 16, 32, 64]}, 10, 64),
        "imagenet_resnet_tiny": ({"name": "imagenet_resnet18", "stem_width": 8,
                                  "widths": [8, 16, 32, 64]}, 10, 64),
    }
    for name, (model, num_classes, size) in expected.items():
        symbol, _, _ = load_fixture(name)
        got = mxnet_infer.model_config(mxnet_symbol.parse_symbol(symbol))
        assert (got.model, got.num_classes, got.image_size) == (model, num_classes, size), name


def test_cli_writes_a_checkpoint_that_loads_back_exactly(tmp_path, capsys):
    name = "cifar_igc_l2m4_d8"
    symbol_path, params_path = FIXTURES / f"{name}-symbol.json", FIXTURES / f"{name}-0000.params"
    convert_cli.main([f"--symbol={symbol_path}", f"--params={params_path}",
                        f"--out={tmp_path}/c"])
    assert "written to" in capsys.readouterr().out
    loaded = mxnet_saved.load_converted(tmp_path / "c")
    direct = convert_mxnet.convert(symbol_path, params_path)
    flat_loaded, flat_direct = (jax.tree_util.tree_leaves_with_path(t) for t in (loaded, direct))
    assert [p for p, _ in flat_loaded] == [p for p, _ in flat_direct]
    for (path, a), (_, b) in zip(flat_loaded, flat_direct):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=str(path))
    info = mxnet_saved.load_converted_info(tmp_path / "c")
    assert info["model"]["name"] == "cifar_igc" and info["image_size"] == 32
    assert info["source"] == {"symbol": symbol_path.name, "params": params_path.name}
    with pytest.raises(SystemExit):  # the output directory is never overwritten
        convert_cli.main([f"--symbol={symbol_path}", f"--params={params_path}",
                            f"--out={tmp_path}/c"])
    assert "already exists" in capsys.readouterr().err


# ---------------------------------------------------------------- the .params reader
def test_reader_reads_the_pre_1_0_array_layouts():
    arrays = mxnet_format.load_params(FIXTURES / "legacy-params.params")
    with np.load(FIXTURES / "legacy-params.npz") as ref:
        assert sorted(arrays) == sorted(ref.files)
        for key in ref.files:
            np.testing.assert_array_equal(arrays[key], ref[key])


def test_reader_rejects_damaged_files():
    blob = (FIXTURES / "imagenet_resnet_tiny-0000.params").read_bytes()
    with pytest.raises(ValueError, match="truncated"):
        mxnet_format.read_ndarray_list(blob[:1000], "cut.params")
    with pytest.raises(ValueError, match="not an MXNet NDArray file"):
        mxnet_format.read_ndarray_list(b"\x00" * 64, "zeros.params")
    with pytest.raises(ValueError, match="unexpected bytes"):
        mxnet_format.read_ndarray_list(blob + b"\x00", "long.params")


# ---------------------------------------------------------------- (c) one-line errors
def conversion_error(symbol: dict, arrays: dict) -> str:
    with pytest.raises(ValueError) as info:
        convert_mxnet.convert_model(symbol, arrays)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_extra_and_misshapen_arrays_are_named():
    symbol, arrays, _ = load_fixture("cifar_igc_l2m4_d8")
    missing = {k: v for k, v in arrays.items() if k != "aux:g2_b1_conv1_bn_moving_var"}
    assert "layer 'g2_b1_conv1_bn': array 'aux:g2_b1_conv1_bn_moving_var' is missing" in \
        conversion_error(symbol, missing)
    extra = {**arrays, "arg:g9_conv_weight": np.zeros((4, 4, 1, 1), np.float32)}
    assert "1 array(s) the symbol does not use: arg:g9_conv_weight" in \
        conversion_error(symbol, extra)
    misshapen = {**arrays, "arg:g3_b1_conv2_conv2_weight": np.zeros((32, 4, 1, 1), np.float32)}
    assert ("layer 'g3_b1_conv2_conv2': array 'arg:g3_b1_conv2_conv2_weight' has shape "
            "(32, 4, 1, 1), the symbol needs (32, 2, 1, 1)") in conversion_error(symbol, misshapen)


def test_symbols_igc_jax_cannot_express_are_named():
    symbol, arrays, _ = load_fixture("imagenet_igc_tiny")
    node = next(n for n in symbol["nodes"] if n["name"] == "g2_b2_conv1_reorder1")
    node["param"]["branch_factor"] = "8"
    assert "IGC layer 'g2_b2_conv1' shuffles with B=8" in conversion_error(symbol, arrays)
    symbol, arrays, _ = load_fixture("imagenet_resnet_tiny")
    node = next(n for n in symbol["nodes"] if n["name"] == "g3_b2_conv2")
    node["param"]["pad"] = "(0,0)"
    assert "'g3_b2_conv2' pads (0, 0)" in conversion_error(symbol, arrays)


# ---------------------------------------------------------------- (b) the five released symbols
def symbol_layers(symbol: dict) -> tuple[Counter, Counter, tuple[int, int], int]:
    """(convs (in, out, kernel, groups, stride, pad), BatchNorms (channels, eps), classifier
    (in, out), trainable parameters) read straight from a symbol JSON."""
    channels: list[int | None] = []
    convs, bns, fc, count = Counter(), Counter(), None, 0
    for node in symbol["nodes"]:
        a = node.get("param") or node.get("attrs") or {}
        c_in = channels[node["inputs"][0][0]] if node["inputs"] else None
        out = c_in
        if node["op"] == "null":
            out = 3 if node["name"] == "data" else None
        elif node["op"] == "Convolution":
            kernel, groups = ast.literal_eval(a["kernel"]), int(a["num_group"])
            out = int(a["num_filter"])
            convs[(c_in, out, kernel, groups, ast.literal_eval(a["stride"]),
                   ast.literal_eval(a["pad"])[0])] += 1
            count += out * c_in // groups * kernel[0] * kernel[1]
        elif node["op"] == "BatchNorm":
            bns[(c_in, float(a["eps"]))] += 1
            count += 2 * c_in
        elif node["op"] == "FullyConnected":
            out = int(a["num_hidden"])
            fc, count = (c_in, out), count + (c_in + 1) * out
        channels.append(out)
    return convs, bns, fc, count


def model_layers(model: nn.Module, image_size: int) -> tuple[Counter, Counter, tuple, int]:
    """The same four things for an igc-jax network, recorded while it is traced (nothing runs)."""
    convs, bns, fc = Counter(), Counter(), []

    def record(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == "__call__":
            c_in = args[0].shape[-1]
            if isinstance(m, nn.Conv):
                convs[(c_in, m.features, tuple(m.kernel_size), m.feature_group_count,
                       tuple(m.strides), m.padding[0][0])] += 1
            elif isinstance(m, IGCConv):
                pad = (m.padding or same_padding(m.kernel_size))[0][0]
                convs[(c_in, m.features, tuple(m.kernel_size), m.L, tuple(m.strides), pad)] += 1
                convs[(m.features, m.features, (1, 1), m.secondary_groups, (1, 1), 0)] += 1
            elif isinstance(m, BatchNorm):
                bns[(c_in, m.epsilon)] += 1
            elif isinstance(m, nn.Dense):
                fc.append((c_in, m.features))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        variables = jax.eval_shape(
            lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)),
                               train=False))
    count = sum(x.size for x in jax.tree.leaves(variables["params"]))
    return convs, bns, fc[0], count


@needs_official
@pytest.mark.parametrize("stem", sorted(RELEASED))
def test_released_symbol_has_exactly_the_igc_jax_layers(stem):
    symbol = json.loads((OFFICIAL / f"{stem}-symbol.json").read_text())
    config = experiment_config(RELEASED[stem])
    model = models.build_model(config.model, num_classes=config.dataset.num_classes)
    want_convs, want_bns, want_fc, want_count = symbol_layers(symbol)
    convs, bns, fc, count = model_layers(model, config.dataset.image_size)
    assert convs == want_convs
    assert bns == want_bns
    assert fc == want_fc == (fc[0], 1000)
    assert count == want_count
    # The converter reads the same network from the symbol and records this experiments file.
    converted = mxnet_infer.model_config(mxnet_symbol.parse_symbol(symbol))
    assert mxnet_infer.matching_experiment(converted) == f"experiments/{RELEASED[stem]}"
    assert converted.image_size == config.dataset.image_size == 224


@needs_official
def test_released_symbols_convert_every_array():
    """Arrays of the shapes each released symbol implies fill every variable of its network."""
    for stem in sorted(RELEASED):
        symbol = json.loads((OFFICIAL / f"{stem}-symbol.json").read_text())
        network = mxnet_symbol.parse_symbol(symbol)
        arrays = {}
        for layer in network.layers():
            convs = ((layer.primary, layer.secondary) if isinstance(layer, mxnet_symbol.IGC)
                     else (layer,) if isinstance(layer, mxnet_symbol.Conv) else ())
            arrays.update({f"arg:{c.weight}": np.zeros(c.weight_shape, np.float32) for c in convs})
            if isinstance(layer, mxnet_symbol.BatchNorm):
                for kind, name in (("arg", layer.gamma), ("arg", layer.beta), ("aux", layer.mean),
                                   ("aux", layer.var)):
                    arrays[f"{kind}:{name}"] = np.zeros(layer.channels, np.float32)
            if isinstance(layer, mxnet_symbol.Dense):
                arrays[f"arg:{layer.weight}"] = np.zeros((layer.c_out, layer.c_in), np.float32)
                arrays[f"arg:{layer.bias}"] = np.zeros(layer.c_out, np.float32)
        variables, converted = convert_mxnet.convert_model(symbol, arrays)
        size = sum(a.size for a in jax.tree.leaves(variables["params"]))
        assert size == symbol_layers(symbol)[3], stem


# ---------------------------------------------------------------- IGCV3's released symbol
IGCV3_SYMBOL = OFFICIAL / "igcv3" / "igcv3-symbol.json"
needs_igcv3 = pytest.mark.skipif(not IGCV3_SYMBOL.is_file(), reason=f"{IGCV3_SYMBOL} is absent")


def _random_arrays(symbol: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """One array per parameter node of the symbol (`arg:` weights, `aux:` BatchNorm moving
    statistics), shaped as the parsed graph implies: N(0, 2/fan_in) kernels, γ ≈ 1, β ≈ 0."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for layer in mxnet_symbol.parse_symbol(symbol).layers():
        if isinstance(layer, mxnet_symbol.Conv):
            fan_in = np.prod(layer.weight_shape[1:])
            arrays[f"arg:{layer.weight}"] = rng.normal(0, np.sqrt(2 / fan_in), layer.weight_shape)
        elif isinstance(layer, mxnet_symbol.BatchNorm):
            c = layer.channels
            arrays.update({f"arg:{layer.gamma}": rng.uniform(0.5, 1.5, c),
                           f"arg:{layer.beta}": rng.normal(0, 0.1, c),
                           f"aux:{layer.mean}": rng.normal(0, 0.1, c),
                           f"aux:{layer.var}": rng.uniform(0.5, 1.5, c)})
        else:
            arrays[f"arg:{layer.weight}"] = rng.normal(0, np.sqrt(1 / layer.c_in),
                                                       (layer.c_out, layer.c_in))
            arrays[f"arg:{layer.bias}"] = rng.normal(0, 0.1, layer.c_out)
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def _mxnet_reshape(shape: tuple[int, ...], codes: tuple[int, ...]) -> tuple[int, ...]:
    """MXNet's Reshape codes, as its documentation defines them: 0 copies an input dimension, -1
    is inferred, -2 copies all remaining ones, -3 merges two, -4 splits one into the next two
    codes (one may be -1)."""
    out, i, k = [], 0, 0
    while k < len(codes):
        c = codes[k]
        if c == 0:
            out.append(shape[i])
            i += 1
        elif c == -2:
            out.extend(shape[i:])
            i = len(shape)
        elif c == -3:
            out.append(shape[i] * shape[i + 1])
            i += 2
        elif c == -4:
            a, b = codes[k + 1], codes[k + 2]
            a, b = (shape[i] // b, b) if a == -1 else (a, shape[i] // a if b == -1 else b)
            out.extend([a, b])
            i += 1
            k += 2
        else:
            out.append(c)
            i += 1
        k += 1
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = int(np.prod(shape)) // known
    return tuple(out)


def _attrs(node: dict) -> dict:
    """A node's attributes: `attrs`, or `attr` / `param` in older MXNet JSON (the released IGCV3
    file has both)."""
    return node.get("attrs", node.get("attr", node.get("param", {}))) or {}


def _run_symbol(symbol: dict, arrays: dict[str, np.ndarray], x: np.ndarray,
                train: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The symbol's graph evaluated node by node with float64 PyTorch ops (NCHW), each op as MXNet
    documents it; nothing of igc-jax. BatchNorm uses the moving statistics (inference), or with
    `train` the batch's, which it also returns under the moving statistics' `aux:` names."""
    import torch
    import torch.nn.functional as F
    ints = mxnet_symbol._ints
    vals: list = []
    batch_stats: dict[str, np.ndarray] = {}
    for node in symbol["nodes"]:
        op, a = node["op"], _attrs(node)
        ins = [vals[i[0]] for i in node["inputs"]]
        if op == "null":
            name = node["name"]
            out = (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) if name == "data" else
                   torch.from_numpy(arrays.get(f"arg:{name}", arrays.get(f"aux:{name}",
                                                                         np.zeros(1)))).double())
            out = out.double()
        elif op == "Convolution":
            out = F.conv2d(ins[0], ins[1], stride=ints(a["stride"]), padding=ints(a["pad"]),
                           groups=int(a["num_group"]))
        elif op == "BatchNorm":
            mean, var = ins[3], ins[4]
            if train:
                mean, var = ins[0].mean(dim=(0, 2, 3)), ins[0].var(dim=(0, 2, 3), unbiased=False)
                names = [symbol["nodes"][i[0]]["name"] for i in node["inputs"][3:5]]
                batch_stats.update({f"aux:{names[0]}": mean.numpy(),
                                    f"aux:{names[1]}": var.numpy()})
            out = F.batch_norm(ins[0], mean, var, ins[1], ins[2], training=False,
                               eps=float(a["eps"]))
        elif op == "clip":
            out = ins[0].clamp(float(a["a_min"]), float(a["a_max"]))
        elif op == "Reshape":
            out = ins[0].reshape(_mxnet_reshape(tuple(ins[0].shape), ints(a["shape"])))
        elif op == "SwapAxis":
            out = ins[0].transpose(int(a["dim1"]), int(a["dim2"]))
        elif op == "elemwise_add":
            out = ins[0] + ins[1]
        elif op == "Pooling":
            assert a["pool_type"] == "avg" and a["global_pool"] == "True"
            out = ins[0].mean(dim=(2, 3), keepdim=True)
        elif op == "Flatten":
            out = ins[0].flatten(1)
        elif op == "FullyConnected":
            out = F.linear(ins[0], ins[1], ins[2])
        elif op == "SoftmaxOutput":
            out = ins[0]                       # the logits
        else:
            raise AssertionError(f"no rule for op {op}")
        vals.append(out)
    return vals[symbol["heads"][0][0]].numpy(), batch_stats


@needs_igcv3
def test_igcv3_symbol_is_igcv3_d_1_0_with_every_array_mapped_once():
    """The released IGCV3 graph parses into 32 blocks and converts to `igcv3` at width 1.0 (its
    experiment file); its 492 parameter nodes (296 arguments, 196 BatchNorm moving statistics)
    fill igc-jax's 492 variables one to one, 3,491,688 trainable values."""
    symbol = json.loads(IGCV3_SYMBOL.read_text())
    network = mxnet_symbol.parse_symbol(symbol)
    assert isinstance(network, mxnet_symbol.InvertedNetwork) and len(network.blocks) == 32
    assert [b.shortcut for b in network.blocks].count(True) == 25       # its 25 elemwise_adds
    assert {b.shuffle for b in network.blocks} == {2}
    arrays = _random_arrays(symbol)
    nodes = {n["name"] for n in symbol["nodes"] if n["op"] == "null"} - {"data", "softmax_label"}
    assert {k.split(":", 1)[1] for k in arrays} == nodes and len(arrays) == len(nodes) == 492
    assert sum(k.startswith("aux:") for k in arrays) == 196
    variables, converted = convert_mxnet.convert_model(symbol, arrays)
    assert converted == mxnet_infer.ConvertedModel({"name": "igcv3", "width": 1.0}, 1000, 224)
    assert mxnet_infer.matching_experiment(converted) == "experiments/imagenet_igcv3.py"
    # model.json records IGCV3's own input (mean subtraction only), what its config normalises
    pre = mxnet_saved.released_preprocessing(converted)
    assert (tuple(pre["mean"]), tuple(pre["std"])) == NORMALIZATION["imagenet_igcv3_mxnet"]
    assert len(jax.tree.leaves(variables)) == 492
    assert sum(a.size for a in jax.tree.leaves(variables["params"])) == 3_491_688
    model = models.build_model(converted.model, num_classes=1000, plan="grouped")
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                                 train=False))
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, abstract)
    assert variables["params"]["stage5_unit1_depthwise"]["kernel"].shape == (3, 3, 1, 384)
    np.testing.assert_array_equal(  # seq-4-block0 is stage 5's first block (MXNet counts from 0)
        variables["params"]["stage5_unit1_depthwise"]["kernel"],
        arrays["arg:seq-4-block0-depthwise-conv2d_weight"].transpose(2, 3, 1, 0))


@needs_igcv3
def test_igcv3_converted_logits_equal_the_symbol_graph():
    """The converted igc-jax model (float32) against the symbol itself, evaluated op by op
    (float64 PyTorch ops, MXNet's semantics: the Reshape codes of the shuffle, SwapAxis, clip,
    global pool) on two 64×64 images: in inference mode, the moving statistics being the batch
    statistics of four other images (random ones leave 50 layers unnormalised, and any float32
    computation then strays by 1e-3), and in training mode. MXNet 1.9.1 itself at 224²:
    benchmarks/results/mxnet_equivalence_igcv3.md."""
    pytest.importorskip("torch")
    symbol = json.loads(IGCV3_SYMBOL.read_text())
    rng = np.random.default_rng(2)
    x, calibration = (rng.standard_normal((n, 64, 64, 3)).astype(np.float32) for n in (2, 4))
    arrays = _random_arrays(symbol, seed=1)
    arrays.update({k: v.astype(np.float32)
                   for k, v in _run_symbol(symbol, arrays, calibration, train=True)[1].items()})
    variables, converted = convert_mxnet.convert_model(symbol, arrays)
    model = models.build_model(converted.model, num_classes=1000)
    inference = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    training, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    # Training mode normalises the last stages over 2 images × 2×2 pixels: less well conditioned.
    for train, ours, tolerance in ((False, inference, 1e-5), (True, training, 1e-4)):
        ref = _run_symbol(symbol, arrays, x, train)[0]
        assert relative_error(np.asarray(ours), ref) < tolerance, train


def test_mxnet_reshape_codes():
    assert _mxnet_reshape((2, 6, 5, 5), (0, -4, 2, -1, -2)) == (2, 2, 3, 5, 5)
    assert _mxnet_reshape((2, 3, 2, 5, 5), (0, -3, -2)) == (2, 6, 5, 5)


def test_igcv3_symbols_of_other_shapes_fail_with_one_line():
    """A shuffle that is not one, and widths of no IGCV3-D width, are one-line errors."""
    if not IGCV3_SYMBOL.is_file():
        pytest.skip(f"{IGCV3_SYMBOL} is absent")
    symbol = json.loads(IGCV3_SYMBOL.read_text())
    bad = json.loads(json.dumps(symbol))
    for node in bad["nodes"]:
        if node["op"] == "SwapAxis":
            _attrs(node)["dim2"] = "3"
            break
    with pytest.raises(UserError, match="is not a channel shuffle") as err:
        mxnet_symbol.parse_symbol(bad)
    assert "\n" not in str(err.value)
    wide = json.loads(json.dumps(symbol))
    for node in wide["nodes"]:
        if node["name"].startswith("last-1x1-conv-conv2d"):
            _attrs(node)["num_filter"] = "1000"
    with pytest.raises(UserError, match="IGCV3-D's at no width igc-jax builds"):
        mxnet_infer.model_config(mxnet_symbol.parse_symbol(wide))


# ---------------------------------------------------------------- evaluation entry point
def test_evaluate_reproduces_mxnet_top1_and_top5(tmp_path):
    """Labels chosen from MXNet's logits: image 0 top-1, image 1 only top-5, image 2 neither."""
    name = "imagenet_igc_tiny"
    _, _, ref = load_fixture(name)
    mean, std = NORMALIZATION["imagenet"]
    np.testing.assert_allclose(ref["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(ref["std"], std, rtol=1e-6)
    order = np.argsort(-ref["logits"], axis=1)
    labels = np.array([order[0, 0], order[1, 3], order[2, -1]], np.int64)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "test.npz", image=ref["image"], label=labels)
    np.savez(tmp_path / "data" / "train.npz", image=ref["image"], label=labels)
    convert_cli.main([f"--symbol={FIXTURES / f'{name}-symbol.json'}",
                        f"--params={FIXTURES / f'{name}-0000.params'}", f"--out={tmp_path}/ckpt"])
    config = configs.base_config()
    config.model = mxnet_saved.load_converted_info(tmp_path / "ckpt")["model"]
    config.dataset.update(name="arrays", data_dir=str(tmp_path / "data"), num_classes=10,
                          image_size=64, normalization="imagenet", augment="none")
    config.eval_batch_size = 2  # two batches, the second padded: padding must not count
    result = evaluate.evaluate_checkpoint(config, str(tmp_path / "ckpt"))
    assert result["count"] == 3
    assert result["top1"] == pytest.approx(1 / 3) and result["top5"] == pytest.approx(2 / 3)


def test_evaluate_refuses_a_checkpoint_of_another_network(tmp_path):
    name = "imagenet_resnet_tiny"
    convert_cli.main([f"--symbol={FIXTURES / f'{name}-symbol.json'}",
                        f"--params={FIXTURES / f'{name}-0000.params'}", f"--out={tmp_path}/ckpt"])
    config = configs.base_config()
    config.model = {"name": "imagenet_resnet18", "stem_width": 8, "widths": (8, 16, 32, 128)}
    config.dataset.update(name="arrays", data_dir=str(tmp_path), num_classes=10, image_size=64)
    with pytest.raises(ValueError, match="does not fit the config.s model: .*stage4_unit1_"):
        evaluate.evaluate_checkpoint(config, str(tmp_path / "ckpt"))


def test_evaluate_warns_when_the_config_normalises_otherwise_than_training(capsys):
    config = configs.base_config()
    config.dataset.normalization = "imagenet"
    evaluate.warn_normalization(config, {"preprocessing": mxnet_saved.RELEASED_PREPROCESSING})
    assert "trained on inputs normalised with mean [123.37, 112.757, 99.406]" in \
        capsys.readouterr().err
    evaluate.warn_normalization(config, {"preprocessing": None})
    assert capsys.readouterr().err == ""


def test_load_pretrained_applies_the_recorded_preprocessing(tmp_path):
    """igc_jax.load_pretrained: module, variables and the model.json normalisation in one call;
    on the fixture's raw 0..255 images it gives the logits MXNet computed on normalised ones."""
    import igc_jax

    name = "imagenet_igc_tiny"
    _, _, ref = load_fixture(name)
    convert_cli.main([f"--symbol={FIXTURES / f'{name}-symbol.json'}",
                      f"--params={FIXTURES / f'{name}-0000.params'}", f"--out={tmp_path}/c"])
    with pytest.raises(ValueError, match="records no preprocessing"):
        igc_jax.load_pretrained(str(tmp_path / "c"))  # not a released model: inputs unknown
    info_path = tmp_path / "c" / "model.json"
    info = json.loads(info_path.read_text())
    info["preprocessing"] = {"mean": ref["mean"].tolist(), "std": ref["std"].tolist()}
    info_path.write_text(json.dumps(info))
    net = igc_jax.load_pretrained(str(tmp_path / "c"))
    assert (net.image_size, net.num_classes) == (64, 10)
    assert relative_error(np.asarray(net(ref["image"])), ref["logits"]) < 1e-4


def test_matching_experiment_table_names_the_files_that_build_those_models():
    from igc_jax.configs.networks import IMAGENET_EXPERIMENTS, IMAGENET_NETWORKS

    for network, path in IMAGENET_EXPERIMENTS.items():
        config = configs.load_config(EXPERIMENTS.parent / path)
        converted = mxnet_infer.ConvertedModel(model=dict(IMAGENET_NETWORKS[network]),
                                               num_classes=1000, image_size=224)
        model = config.model.to_dict()
        official_init = "mxnet_xavier" if model["name"] == "igcv3" else "he_normal"
        assert model.pop("init") == official_init, path      # how a run starts, not the network
        assert model == IMAGENET_NETWORKS[network], path
        assert mxnet_infer.matching_experiment(converted) == path
