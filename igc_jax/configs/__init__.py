"""The config schema shared by every experiment and the spec §4 recipes; pure Python (no JAX).

Validation needs the model and data code, so it happens where a run starts
(`igc_jax.training.validate`, every field), still before anything compiles. Errors in the user's
input are `igc_jax.errors.UserError`s.

An experiment file in `experiments/` calls `base_config()` and sets what differs. Fields:

  seed                      everything random (init, data order, augmentation) derives from it
  model.name                key of `igc_jax.models.MODELS`; the other `model.*` fields are its
                            kwargs
  model.init                "he_normal" (official: convs N(0, 2/fan_in)) | "torch_default"
                            (torch.nn's uniform ±sqrt(1/fan_in) kernels and classifier bias)
  dataset.name              cifar10 | cifar100 | svhn_cropped | imagenet2012 | digits | arrays
  dataset.data_dir          TFDS data dir (default $TFDS_DATA_DIR) or the .npz folder for `arrays`
  dataset.num_classes       classes of the labels
  dataset.image_size        side of the square input the network sees
  dataset.normalization     name of the mean/std constants (spec §4), e.g. "cifar10"
  dataset.augment           training augmentation: "cifar" (pad 4 with the mean colour, crop,
                            flip: official) | "cifar_zero_pad" | "imagenet_mxnet" (official:
                            MXNet scale/aspect/crop/flip/HSL) | "imagenet_inception" (random-area
                            crop, flip, colour jitter) | "none"
  dataset.color_jitter      strength of imagenet_inception's colour jitter (0: off)
  dataset.num_workers       data worker processes: -1 = auto (sized to the CPUs for ImageNet,
                            0 otherwise; logged), else that number (0: threads in this process)
  batch_size, eval_batch_size   global batch sizes (divided over processes and devices)
  num_epochs | num_train_steps  training length (steps win when > 0)
  learning_rate, momentum, nesterov, weight_decay   SGD as spec §4 (L2 added to every gradient)
  lr_schedule               "cifar" (×0.1 at 1/2, 3/4, 7/8) | "imagenet" (×0.1 every 30 epochs)
                            | "constant"
  warmup_epochs             linear warmup before the schedule
  dtype                     compute dtype: "float32" | "bfloat16" (params and BN stats stay float32)
  conv_mode                 IGC computation mode: `auto` or a key of igc_jax.igc.modes.MODES
  log_every_steps, eval_every_steps (0: every epoch), checkpoint_every_steps, keep_checkpoints
  batch_norm                BatchNorm statistics over the "global" batch or "per_device"
  sigterm_check_every_steps how often (in steps) the loop looks for a SIGTERM
  profile_steps             "" (no profile) or "START:STOP", the steps to trace
  max_train_seconds         stop (with a checkpoint) after this much training time; 0: no limit
  batch_norm                "global": statistics over the global batch (1 and N devices train the
                            same network) | "per_device": each device's own (the authors' multi-GPU
                            MXNet runs), running statistics averaged every step
  sigterm_check_every_steps multi-process runs agree on SIGTERM every this many steps
  profile_steps             "START:STOP": a jax.profiler trace of those steps under tensorboard/
"""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import ml_collections

from igc_jax.configs import networks
from igc_jax.errors import UserError

LR_SCHEDULES = ("cifar", "imagenet", "constant")
DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict({"name": ""})
    c.dataset = ml_collections.ConfigDict({
        "name": "cifar10",
        "data_dir": "",
        "num_classes": 10,
        "image_size": 32,
        "normalization": "cifar10",
        "augment": "cifar",
        "color_jitter": 0.4,
        "num_workers": -1,
    })
    c.batch_size = 64
    c.eval_batch_size = 500
    c.num_epochs = 400.0
    c.num_train_steps = -1
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4
    c.lr_schedule = "cifar"
    c.warmup_epochs = 0.0
    c.dtype = "float32"
    c.conv_mode = "auto"
    c.log_every_steps = 100
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.max_train_seconds = 0.0
    c.batch_norm = "global"
    c.sigterm_check_every_steps = 10
    c.profile_steps = ""
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
