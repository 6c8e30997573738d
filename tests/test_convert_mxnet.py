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
