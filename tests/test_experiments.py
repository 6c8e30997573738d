"""Every config in `experiments/` loads, validates and builds its model (shapes only), with the
training setup of spec §4; bad config-string arguments fail with one line before anything compiles.
"""
from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from igc_jax import configs, models
from igc_jax.training.validate import validate

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CIFAR_FILES = ("cifar10_igc.py", "cifar100_igc.py", "svhn_igc.py")
IMAGENET_FILES = ("imagenet_resnet18_c64.py", "imagenet_resnet18_c69.py", "imagenet_l4m32.py",
                  "imagenet_l16m16.py", "imagenet_l100m2.py")
IGCV3_FILES = ("imagenet_igcv3.py", "cifar10_igcv3.py")


def load(name: str):
    return configs.load_config_module(EXPERIMENTS / name)


def config_cases():
    """(file, arg) for every plain config file (sweep files are tested with the sweeps) and every
    argument it documents in CONFIG_ARGS (None when it takes none)."""
    for path in sorted(EXPERIMENTS.glob("*.py")):
        module = load(path.name)
        if hasattr(module, "get_config") and not hasattr(module, "get_sweep"):
            for arg in getattr(module, "CONFIG_ARGS", (None,)):
                yield path.name, arg


def test_the_papers_networks_all_have_a_config():
    names = {p.name for p in EXPERIMENTS.glob("*.py")}
    assert set(CIFAR_FILES + IMAGENET_FILES + IGCV3_FILES) <= names
    for name in IGCV3_FILES:       # IGCV3-D at pytorchcv's four widths
        assert load(name).CONFIG_ARGS == ("1.0", "0.75", "0.5", "0.25")
    args = set(load("cifar10_igc.py").CONFIG_ARGS)
    for net in ("W16", "W18", "L24M2", "L4M8", "L4M8,sumfusion"):
        for depth in (8, 20, 26):
            assert {f"{net},D{depth}", f"{net},D{depth},ident"} <= args


@pytest.mark.parametrize("name, arg", list(config_cases()))
def test_config_loads_validates_and_builds(name, arg):
    config = load(name).get_config(arg)
    validate(config)
    model = models.build_model(config.model, num_classes=config.dataset.num_classes,
                               dtype=config.dtype, plan=config.conv_mode)
    size = config.dataset.image_size
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]
    assert params["classifier"]["bias"].shape == (config.dataset.num_classes,)


@pytest.mark.parametrize("name", CIFAR_FILES + IMAGENET_FILES)
def test_training_setup_is_the_official_one(name):
    module = load(name)
    c = module.get_config()
    assert (c.learning_rate, c.momentum, c.nesterov, c.weight_decay) == (0.1, 0.9, True, 1e-4)
    assert c.eval_batch_size % 8 == 0
    if name in IMAGENET_FILES:
        assert (c.dataset.name, c.dataset.num_classes, c.dataset.image_size) == \
            ("imagenet2012", 1000, 224)
        # The authors' train_imagenet.py: MXNet augmentation, their mean/std, 120 epochs.
        assert (c.dataset.normalization, c.dataset.augment) == ("imagenet_igc_mxnet",
                                                                 "imagenet_mxnet")
        assert (c.batch_size, c.lr_schedule, c.num_epochs) == (256, "imagenet", 120)
        assert c.model.init == "he_normal"
        assert 50_000 % c.eval_batch_size == 0
    else:
        dataset = {"cifar10_igc.py": ("cifar10", 10, "cifar10", "cifar", 400),
                   "cifar100_igc.py": ("cifar100", 100, "cifar100", "cifar", 400),
                   "svhn_igc.py": ("svhn_cropped", 10, "svhn", "none", 40)}[name]
        assert (c.dataset.name, c.dataset.num_classes, c.dataset.normalization,
                c.dataset.augment, c.num_epochs) == dataset
        assert (c.batch_size, c.lr_schedule, c.dataset.image_size) == (64, "cifar", 32)
        assert c.model.init == "he_normal"
    # The docstring gives the exact command and the hardware.
    assert f"python -m igc_jax.main --config=experiments/{name}" in module.__doc__
    assert "Hardware:" in module.__doc__ and "Paper's result" in module.__doc__


@pytest.mark.parametrize("name", IGCV3_FILES)
@pytest.mark.parametrize("arg", load("imagenet_igcv3.py").CONFIG_ARGS)
def test_igcv3_training_setup_is_the_official_one(name, arg):
    """The IGCV3 authors' train_imagenet.py (spec §7), stated here: SGD with momentum 0.9, no
    Nesterov, L2 4e-5, batch 96, lr 0.045 ×0.98 per epoch for 480 epochs, MXNet Xavier init,
    mean subtraction only; on ImageNet their MXNet augmentation."""
    module = load(name)
    c = module.get_config(arg)
    assert (c.learning_rate, c.momentum, c.nesterov, c.weight_decay) == (0.045, 0.9, False, 4e-5)
    assert (c.batch_size, c.num_epochs, c.lr_schedule, c.lr_decay_per_epoch) == \
        (96, 480, "exponential", 0.98)
    assert dict(c.model) == {"name": "igcv3", "width": float(arg), "init": "mxnet_xavier"}
    assert c.eval_batch_size % 8 == 0
    if name.startswith("imagenet"):
        assert (c.dataset.name, c.dataset.num_classes, c.dataset.image_size) == \
            ("imagenet2012", 1000, 224)
        assert (c.dataset.normalization, c.dataset.augment) == ("imagenet_igcv3_mxnet",
                                                                 "imagenet_mxnet_igcv3")
        assert 50_000 % c.eval_batch_size == 0
    else:
        assert (c.dataset.name, c.dataset.num_classes, c.dataset.image_size,
                c.dataset.normalization, c.dataset.augment) == \
            ("cifar10", 10, 32, "cifar10_mean_only", "cifar")
    assert f"python -m igc_jax.main --config=experiments/{name}" in module.__doc__
    assert "Hardware:" in module.__doc__ and "Paper's result" in module.__doc__


def test_the_exponential_schedule_is_what_training_runs():
    """lr = 0.045 · 0.98^⌊step / steps_per_epoch⌋ (MXNet's MultiFactorScheduler with a step at
    every epoch), what the IGCV3 configs ask for."""
    from igc_jax.training import steps
    c = load("imagenet_igcv3.py").get_config()
    s = steps.learning_rate_schedule(c, steps_per_epoch=100, num_steps=100 * 480)
    for step in (0, 99, 100, 250, 47_999):
        expected = 0.045 * 0.98 ** (step // 100)
        assert abs(float(s(step)) - expected) <= 1e-6 * expected, step  # float32


@pytest.mark.parametrize("name, arg, message", [
    ("imagenet_igcv3.py", "0.6", "takes a width, one of 1.0, 0.75, 0.5, 0.25; got '0.6'"),
    ("cifar10_igcv3.py", "w1", "takes a width, one of 1.0, 0.75, 0.5, 0.25; got 'w1'"),
    ("cifar10_igc.py", "L24M2,D21", "depth 21 is not of the form 3B+2"),
    ("cifar100_igc.py", "W16,D11,ident", "depth 11 is not of the form 6B+2"),
    ("svhn_igc.py", "L24M2,D20,deep", "unknown token 'deep'"),
    ("cifar10_igc.py", "L24,D20", "neither W<width> nor L<x>M<y>"),
    ("imagenet_l16m16.py", "D20", "takes no argument"),
])
def test_bad_arguments_fail_with_one_line(name, arg, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        validate(load(name).get_config(arg))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    ({"L": (3, 16, 16, 16)}, "stage 1: input 256 channels are not divisible by L=3"),
    ({"widths": (256, 512, 1024, 2040)}, "stage 4: width 2040 channels are not divisible by L=16"),
    ({"name": "imagenet_igc_resnet50"}, "unknown model name 'imagenet_igc_resnet50'"),
])
def test_invalid_overrides_fail_validation_with_one_line(override, message):
    config = load("imagenet_l16m16.py").get_config()
    config.model.update(override)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        validate(config)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    ({"width": 0.0}, "model.width must be a finite number > 0, got 0.0"),
    ({"width": 0.01}, "model.width=0.01 leaves a layer with 0 channels"),
    ({"width_quirk": "yes"}, "model.width_quirk must be True or False"),
    ({"L": (16, 16, 16, 16)}, "model 'igcv3' has no field(s) L"),
    ({"init": "xavier"}, "model.init must be one of he_normal, torch_default, mxnet_xavier"),
])
def test_invalid_igcv3_overrides_fail_validation_with_one_line(override, message):
    config = load("imagenet_igcv3.py").get_config()
    config.model.update(override)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        validate(config)
    assert "\n" not in str(err.value)


def test_config_flag_passes_the_argument_and_overrides():
    """What `--config=experiments/cifar10_igc.py:L4M8,D26,ident --config.model.M=4` resolves to."""
    argv = ["prog", f"--config={EXPERIMENTS / 'cifar10_igc.py'}:L4M8,D26,ident",
            "--config.model.M=4"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    values(argv)
    model = values.config.model
    assert (model.name, model.depth, model.L, model.M, model.residual) == \
        ("cifar_igc", 26, 4, 4, True)
