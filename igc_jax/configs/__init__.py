"""Experiment configs: `base_config()` and the spec §4 recipes; pure Python (no JAX).

Every field is declared once, with its default, allowed values and meaning, in
`igc_jax.configs.schema` (the reference: docs/config.md). An experiment file in `experiments/`
calls `base_config()` or a recipe and sets what differs. Validation needs the model and data code,
so it happens where a run starts (`igc_jax.training.validate`), still before anything compiles;
errors in the user's input are `igc_jax.errors.UserError`s.
"""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import ml_collections

from igc_jax.configs import networks, schema
from igc_jax.errors import UserError

def base_config() -> ml_collections.ConfigDict:
    """Every field at its schema default (`model` holds only its `name`, which a recipe sets)."""
    c = ml_collections.ConfigDict()
    for key, value in schema.defaults().items():
        *parents, leaf = key.split(".")
        node = c
        for part in parents:
            if part not in node:
                node[part] = ml_collections.ConfigDict()
            node = node[part]
        node[leaf] = value
    return c


# Spec §4, per small-image dataset: (TFDS name, classes, normalisation, augmentation, epochs).
_SMALL_IMAGE_RECIPES = {
    "cifar10": ("cifar10", 10, "cifar10", "cifar", 400.0),
    "cifar100": ("cifar100", 100, "cifar100", "cifar", 400.0),
    "svhn": ("svhn_cropped", 10, "svhn", "none", 40.0),
}


def small_image_recipe(dataset: str, network: str) -> ml_collections.ConfigDict:
    """The official CIFAR/SVHN training setup (spec §4) for a network string such as `L24M2,D20`.

    SGD with Nesterov momentum 0.9, L2 1e-4, batch 64, lr 0.1 ×0.1 at 1/2, 3/4, 7/8 of training.
    """
    name, classes, norm, augment, epochs = _SMALL_IMAGE_RECIPES[dataset]
    c = base_config()
    c.model = networks.cifar_model(network)
    c.model.init = "he_normal"
    c.dataset.update(name=name, num_classes=classes, image_size=32, normalization=norm,
                     augment=augment)
    c.update(batch_size=64, eval_batch_size=400, num_epochs=epochs, learning_rate=0.1,
             momentum=0.9, nesterov=True, weight_decay=1e-4, lr_schedule="cifar", dtype="float32")
    return c


def imagenet_recipe(network: str) -> ml_collections.ConfigDict:
    """The official ImageNet setup (spec §4) for one of spec §3's networks, by the paper's name.

    The authors' train_imagenet.py: batch 256, lr 0.1 ×0.1 every 30 epochs, 120 epochs, MXNet's
    scale/aspect/HSL augmentation with their mean/std; bfloat16 compute. The evaluation batch 400
    divides the 50,000 validation images and any device count up to 16.
    """
    c = base_config()
    c.model = networks.imagenet_model(network)
    c.model.init = "he_normal"
    c.dataset.update(name="imagenet2012", num_classes=1000, image_size=224,
                     normalization="imagenet_igc_mxnet", augment="imagenet_mxnet",
                     num_workers=-1)
    c.update(batch_size=256, eval_batch_size=400, num_epochs=120.0, learning_rate=0.1,
             momentum=0.9, nesterov=True, weight_decay=1e-4, lr_schedule="imagenet",
             dtype="bfloat16")
    return c


def igcv3_recipe(dataset: str, width: float = 1.0) -> ml_collections.ConfigDict:
    """IGCV3's official training setup (spec §7) for IGCV3-D at `width`, on `imagenet2012` or
    `cifar10`.

    The authors' train_imagenet.py: SGD with momentum 0.9 (not Nesterov), L2 4e-5, batch 96 (the
    whole batch, which MXNet splits over its GPUs), lr 0.045 ×0.98 every epoch for 480 epochs,
    MXNet's Xavier initialisation (gaussian, fan-in, magnitude 2), mean subtraction only; on
    ImageNet their augmentation (scale 0.533–1 of a 480 short side, flip, HSL jitter) and the
    256-short-side centre-224 evaluation, in bfloat16. They released no CIFAR code: `cifar10`
    trains the same network (the builder's only table) on 32×32 images with the same optimiser,
    schedule, initialisation and mean-only normalisation, and the pad-4 crop + flip augmentation.
    """
    c = base_config()
    c.model = ml_collections.ConfigDict(dict(name="igcv3", width=float(width),
                                             init="mxnet_xavier"))
    if dataset == "imagenet2012":
        c.dataset.update(name="imagenet2012", num_classes=1000, image_size=224,
                         normalization="imagenet_igcv3_mxnet", augment="imagenet_mxnet_igcv3",
                         num_workers=-1)
        c.update(eval_batch_size=400, dtype="bfloat16")
    elif dataset == "cifar10":
        c.dataset.update(name="cifar10", num_classes=10, image_size=32,
                         normalization="cifar10_mean_only", augment="cifar")
        c.update(eval_batch_size=400, dtype="float32")
    else:
        raise UserError(f"no IGCV3 recipe for {dataset!r}; choose from imagenet2012, cifar10")
    c.update(batch_size=96, num_epochs=480.0, learning_rate=0.045, momentum=0.9, nesterov=False,
             weight_decay=4e-5, lr_schedule="exponential", lr_decay_per_epoch=0.98)
    return c


def width_argument(path: str, arg: str | None, widths: tuple[float, ...]) -> float:
    """An experiment file's `:<width>` argument (default the first of `widths`), one of
    `widths`; anything else is a one-line error naming them."""
    if not arg:
        return widths[0]
    try:
        width = float(arg)
    except ValueError:
        width = None
    if width not in widths:
        raise UserError(f"{path} takes a width, one of {', '.join(map(str, widths))}; got "
                        f"{arg!r}")
    return width


def no_argument(path: str, arg: str | None) -> None:
    """Experiment files that take no `:arg` refuse one with a one-line error."""
    if arg:
        raise UserError(f"{path} takes no argument, got {arg!r}")


def load_config_module(path: str | os.PathLike) -> ModuleType:
    """The one loader of config files: import one by path, as ml_collections' config_flags does
    (sweep files use it to start from a per-network file, tests and benchmarks to read one)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"config file {path!r} not found")
    spec = importlib.util.spec_from_file_location(f"_igc_config_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file given as `path[:arg]`, the `--config` flag's syntax."""
    path, _, arg = os.fspath(spec).partition(":")
    return load_config_module(path).get_config(arg or None)
