"""IGCV3-D (spec §7): the four published parameter counts, the layout of the authors' builder, the
logits of pytorchcv 0.0.74 with the same weights, and what every igc-jax network has (summary,
no IGC layer for `auto` to plan, bad input, initialisation).

The expected totals are computed here from the official (t, c, n, s) table and the per-layer
formulas (1×1 group conv c_in·c_out/2, depthwise 9·c, BN 2c, dense C·K + K), not by the code under
test; the four totals are also pytorchcv's published ones.
"""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igc_jax import models, summary
from igc_jax.igc import kfactor, native
from igc_jax.igc.layers import layer_shapes
from igc_jax.igc.select import ModeContext, decide
from igc_jax.models import igcv3

PUBLISHED = {1.0: 3_491_688, 0.75: 2_638_084, 0.5: 1_985_528, 0.25: 1_534_020}
TABLE = ((1, 16, 1, 1), (6, 24, 4, 2), (6, 32, 6, 2), (6, 64, 8, 2), (6, 96, 6, 1),
         (6, 160, 6, 2), (6, 320, 1, 1))


def expected_params(width: float, num_classes: int = 1000) -> int:
    """pytorchcv's width rule, written out: make_even(int(c·w)) (no change at w = 1)."""
    def scale(c):
        c = int(c * width)
        return c + c % 2
    c_in, total = scale(32), 27 * scale(32) + 2 * scale(32)
    for t, c, n, _ in TABLE:
        c = scale(c)
        for b in range(n):
            mid = c_in * t
            total += c_in * mid // 2 + 2 * mid + 9 * mid + 2 * mid + mid * c // 2 + 2 * c
            c_in = c
    return total + c_in * 1280 + 2 * 1280 + 1280 * num_classes + num_classes


def abstract(model_cfg: dict, size: int = 224, num_classes: int = 1000):
    model = models.build_model(model_cfg, num_classes=num_classes, plan="grouped")
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("width", list(PUBLISHED))
def test_parameter_counts_are_the_published_ones(width):
    params = abstract({"name": "igcv3", "width": width})["params"]
    assert count(params) == PUBLISHED[width] == expected_params(width)
    rows, totals = summary.summarize_model({"name": "igcv3", "width": width}, num_classes=1000,
                                           image_size=224)
    assert totals["params"] == PUBLISHED[width]
    assert sum(r.kind == "conv" for r in rows) == 1 + 3 * 32 + 1
    assert sum(r.kind == "bn" for r in rows) == 1 + 3 * 32 + 1      # the symbol's 98 BatchNorms


def test_layout_of_the_official_symbol():
    """The released igcv3-symbol.json's layers, width 1.0: 32 blocks, expansion kept at t = 1
    (32 → 32), strides and the identity on blocks 2…n of each stage only."""
    lay = igcv3.layout(1.0)
    assert (lay.stem, lay.head) == (32, 1280)
    assert [len(s) for s in lay.stages] == [1, 4, 6, 8, 6, 6, 1]
    first = lay.stages[0][0]
    assert (first.c_in, first.expanded, first.c_out, first.residual) == (32, 32, 16, False)
    assert lay.stages[1][0] == igcv3.Block(16, 96, 24, 2, False)
    assert lay.stages[4][0] == igcv3.Block(64, 384, 96, 1, False)       # stride 1, no identity
    assert all(b.residual == (u > 0) for s in lay.stages for u, b in enumerate(s))
    assert [s[0].stride for s in lay.stages] == [1, 2, 2, 2, 1, 2, 1]
    assert igcv3.layout(1.0, width_quirk=True) == lay


def test_width_quirk_is_the_builders_arithmetic():
    """symbols/igcv3.py at multiplier 0.75, by hand: stage widths round(c·0.75) made even (12,
    18, 24, 48, 72, 120, 240); the input width of the next stage's first expansion is
    round(c·0.75) again, made even by c + 1: after 12 it is 9 → 13, so 13·6 = 78 (pytorchcv:
    12·6 = 72); after 18: round(13.5) = 14 → 84; 24 → 18 → 108; 48 → 36 → 216; 72 → 54 → 324;
    120 → 90 → 540. The head stays 1280 below 1.0 and is int(1280·w) + 1 above it."""
    quirk = igcv3.layout(0.75, width_quirk=True)
    plain = igcv3.layout(0.75)
    assert [s[0].c_out for s in quirk.stages] == [12, 18, 24, 48, 72, 120, 240]
    assert [s[0].expanded for s in quirk.stages] == [24, 78, 84, 108, 216, 324, 540]
    assert [s[0].expanded for s in plain.stages] == [24, 72, 108, 144, 288, 432, 720]
    assert [b for s in quirk.stages for b in s[1:]] == [b for s in plain.stages for b in s[1:]]
    assert igcv3.layout(1.5, width_quirk=True).head == 1921
    assert igcv3.layout(1.5).head == 1920


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_every_block_joins_every_channel_pair(width):
    """IGCV3's looser complementary condition: through 1×1 (2 groups) → shuffle(2) → depthwise →
    1×1 (2 groups), every output channel of a block has a path (several) from every input."""
    for b in igcv3.layout(width).blocks():
        chain = [kfactor.Factor(b.expanded, 2, 2), kfactor.Factor(b.expanded, b.expanded),
                 kfactor.Factor(b.c_out, 2)]
        counts = kfactor.path_counts(b.c_in, chain)
        assert kfactor.at_least_one_path(counts) and not kfactor.exactly_one_path(counts)
        # without the shuffle the two halves never meet
        no_shuffle = [kfactor.Factor(b.expanded, 2), *chain[1:]]
        assert not kfactor.at_least_one_path(kfactor.path_counts(b.c_in, no_shuffle))


def test_the_plan_holds_every_depthwise_conv_and_no_igc_layer():
    """IGCV3's layers with a mode are its 32 depthwise convs (one per block); `auto` gives them
    `native` on CPU where the kernels built, `grouped` elsewhere; an IGC-only mode leaves them to
    auto's rule, a mode they have is theirs."""
    model = models.build_model({"name": "igcv3", "width": 0.25}, num_classes=10, plan="grouped")
    shapes = layer_shapes(model, (32, 32, 3))
    assert len(shapes) == len(igcv3.layout(0.25).blocks()) == 32
    assert all(s.depthwise and s.L == s.C_in == s.C and path.endswith("_depthwise")
               for path, s in shapes.items())
    assert shapes["stage2_unit1_depthwise"].strides == (2, 2)
    assert shapes["stage2_unit1_depthwise"].size == (16, 16)
    cases = {("auto", ModeContext("cpu", native=True)): "native",
             ("auto", ModeContext("cpu", native=False)): "grouped",
             ("auto", ModeContext("tpu")): "grouped",
             ("split", ModeContext("cpu", native=True)): "native",
             ("composed", ModeContext("gpu")): "grouped",
             ("grouped", ModeContext("cpu", native=True)): "grouped",
             ("native", ModeContext("cpu", native=True)): "native"}
    for (conv_mode, context), mode in cases.items():
        plan = decide(shapes.values(), conv_mode, context)
        assert {plan.mode(s) for s in shapes.values()} == {mode}, (conv_mode, context)


def test_forward_train_and_eval_and_bfloat16():
    """Train mode updates every running statistic; eval mode is finite; bfloat16 compute gives
    finite float32 logits. (How close they are to float32's is no test here: through 53 layers of
    random weights and BatchNorm over a few pixels, bfloat16's 8-bit rounding moves them by tens of
    percent.)"""
    cfg = {"name": "igcv3", "width": 0.25}
    model = models.build_model(cfg, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)

    def train(m):
        return jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))

    logits, state = train(model)(variables, x)
    assert logits.shape == (4, 10) and logits.dtype == jnp.float32
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           state["batch_stats"], variables["batch_stats"])
    assert all(jax.tree.leaves(changed))
    assert np.isfinite(np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, x))).all()
    low, _ = train(models.build_model(cfg, num_classes=10, dtype="bfloat16"))(variables, x)
    assert low.dtype == jnp.float32 and np.isfinite(np.asarray(low)).all()


def test_mxnet_xavier_draws_every_weight_from_he_normal():
    """MXNet Xavier(gaussian, 'in', magnitude 2): N(0, 2/fan_in) for convs (depthwise: fan_in 9)
    and the classifier; zero bias; BatchNorm γ = 1."""
    model = models.build_model({"name": "igcv3", "width": 0.5}, num_classes=100)
    params = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
        jnp.zeros((1, 32, 32, 3)))["params"]
    for name in ("stem_conv", "stage4_unit3_expand", "stage4_unit3_depthwise",
                 "stage6_unit1_linear", "head_conv", "classifier"):
        w = np.asarray(params[name]["kernel"], np.float64)
        fan_in = int(np.prod(w.shape[:-1]))
        assert abs(w.std() / math.sqrt(2 / fan_in) - 1) < 5 / math.sqrt(2 * w.size) + 0.01, name
    assert not np.asarray(params["classifier"]["bias"]).any()
    assert all(np.all(np.asarray(p["scale"]) == 1) for p in params.values() if "scale" in p)


@pytest.mark.parametrize("cfg, message", [
    ({"name": "igcv3", "width": -1.0}, "model.width must be a finite number > 0, got -1.0"),
    ({"name": "igcv3", "width": True}, "model.width must be a finite number > 0, got True"),
    ({"name": "igcv3", "width": 0.02}, "leaves a layer with 0 channels"),
    ({"name": "igcv3", "depth": 20}, "model 'igcv3' has no field(s) depth"),
])
def test_bad_model_configs_fail_with_one_line(cfg, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        models.validate_model_config(cfg, num_classes=10)
    assert "\n" not in str(err.value)


def test_network_names():
    assert models.network_name(models.imagenet_model("IGCV3-D 0.5")) == "IGCV3-D 0.5"
    assert models.network_name({"name": "igcv3", "width": 0.5, "width_quirk": True}) == \
        "IGCV3-D 0.5, builder's width quirk"
    assert models.network_name({"name": "igcv3", "width": 1.0, "init": "he_normal"}) == \
        "IGCV3-D 1.0"


# ----------------------------------------------------------------------------- pytorchcv

def _pytorchcv_missing() -> str | None:
    try:
        import pytorchcv.models.igcv3  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        return f"needs torch and pytorchcv ({e}); pip install -e '.[bench]'"
    return None


needs_pytorchcv = pytest.mark.skipif(_pytorchcv_missing() is not None,
                                     reason=_pytorchcv_missing() or "")


@needs_pytorchcv
@pytest.mark.parametrize("width", list(PUBLISHED))
def test_logits_equal_pytorchcv_with_the_same_weights(width):
    """pytorchcv 0.0.74's igcv3_w1 / w3d4 / wd2 / wd4 holding igc-jax's random weights (every array
    once; running statistics from a calibration batch) give igc-jax's logits in eval mode at
    224², to float32 rounding; at one width also in train mode (batch statistics)."""
    from benchmarks import igcv3 as bench
    from pytorchcv.models import igcv3 as ptcv
    net = bench.to_pytorchcv(bench.random_variables(width), width)
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED[width]
    name = bench.PYTORCHCV[width][0]
    assert sum(p.numel() for p in getattr(ptcv, name)().parameters()) == PUBLISHED[width]
    modes = ("eval", "train") if width == 0.25 else ("eval",)
    errors = bench.logit_errors(width, batch=1, modes=modes)
    assert set(errors) == set(modes)
    assert max(errors.values()) < 2e-5, errors


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_trains_on_two_devices_checkpoints_and_resumes(tmp_path):
    """`python -m igc_jax.main` with IGCV3-D 0.25 and the IGCV3 recipe (exponential schedule,
    mxnet_xavier) on the bundled digits, the batch split over 2 devices (global BatchNorm over
    them): 4 steps with a checkpoint at 2, then on to 6 from the checkpoint at 4. The planned
    modes are the depthwise convs' (no IGC layer)."""
    from run_utils import QUICKSTART, run_main, status, train_losses

    config = tmp_path / "igcv3_digits.py"
    config.write_text(
        "import ml_collections\nfrom igc_jax import configs\n\n\n"
        "def get_config(arg=None):\n"
        f"    c = configs.load_config({str(QUICKSTART)!r})\n"
        "    c.model = ml_collections.ConfigDict(dict(name='igcv3', width=0.25,\n"
        "                                             init='mxnet_xavier'))\n"
        "    c.update(batch_size=32, eval_batch_size=64, learning_rate=0.045, nesterov=False,\n"
        "             weight_decay=4e-5, lr_schedule='exponential', log_every_steps=1,\n"
        "             checkpoint_every_steps=2)\n"
        "    return c\n")
    wd = tmp_path / "run"
    first = run_main(wd, "--config.num_train_steps=4", devices=2, config=config)
    assert first.returncode == 0, first.stderr[-3000:]
    st = status(wd)
    assert st["status"] == "finished" and st["step"] == 4
    modes = st["conv_modes"]["layers"]  # every depthwise conv, by auto's CPU rule
    assert len(modes) == 32 and all(path.endswith("_depthwise") for path in modes)
    assert set(modes.values()) == {"native" if native.available() else "grouped"}
    second = run_main(wd, "--config.num_train_steps=6", devices=2, config=config)
    assert second.returncode == 0, second.stderr[-3000:]
    assert status(wd)["step"] == 6
    losses = train_losses(wd)
    assert len(losses) == 6 and np.isfinite(losses).all()
