"""The paper's networks by name: `MODELS` maps a config's `model.name` to a constructor.

A model config is flat: `name` plus the constructor's keyword arguments, e.g.
  {"name": "cifar_igc", "depth": 20, "L": 24, "M": 2, "residual": False}
  {"name": "imagenet_igc_resnet18", "stem_width": 100, "widths": (200, 400, 800, 1600),
   "L": (100, 200, 400, 800)}
  {"name": "igcv3", "width": 0.5}
Every constructor checks its arguments and raises a one-line ValueError (the command line's
`igc_jax.training.validate` turns it into the user's one-line error), so
`validate_model_config` is "known name, known fields, constructor accepts them", with nothing
traced or compiled.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from igc_jax.configs.networks import (IMAGENET_NETWORKS, cifar_model, imagenet_model,
                                      network_name)
from igc_jax.igc.layers import check_mode
from igc_jax.igc.select import ModePlan
from igc_jax.models import cifar, igcv3, imagenet
from igc_jax.models.blocks import Compute

__all__ = ["IMAGENET_NETWORKS", "MODELS", "build_model", "cifar_model", "imagenet_model",
           "network_name", "validate_model_config"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cifar_regconv": cifar.regconv,
    "cifar_igc": cifar.igc,
    "imagenet_resnet18": imagenet.resnet18,
    "imagenet_igc_resnet18": imagenet.igc_resnet18,
    "igcv3": igcv3.igcv3,
}

# Arguments every constructor takes from `build_model`, not from the model config.
_BUILD_ARGS = ("num_classes", "dtype", "compute")

def _constructor_fields(constructor: Callable) -> tuple[set[str], set[str]]:
    """(all, required) model-config fields of a constructor: its keyword arguments minus build's."""
    params = inspect.signature(constructor).parameters
    fields = {k for k in params if k not in _BUILD_ARGS}
    required = {k for k in fields if params[k].default is inspect.Parameter.empty}
    return fields, required


def _make(model_cfg: Mapping[str, Any], *, num_classes: int, dtype: Any,
          compute: Compute) -> nn.Module:
    name = model_cfg.get("name", "")
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; choose from {', '.join(MODELS)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_mode(compute.plan.default)
    for _, mode in compute.plan.by_shape:
        check_mode(mode)
    fields, required = _constructor_fields(MODELS[name])
    given = {k: v for k, v in dict(model_cfg).items() if k != "name"}
    if unknown := sorted(set(given) - fields):
        raise ValueError(f"model {name!r} has no field(s) {', '.join(unknown)}; "
                        f"its fields are {', '.join(sorted(fields))}")
    if missing := sorted(required - set(given)):
        raise ValueError(f"model {name!r} needs field(s) {', '.join(missing)}")
    return MODELS[name](**given, num_classes=num_classes, dtype=dtype, compute=compute)


def validate_model_config(model_cfg: Mapping[str, Any], *, num_classes: int) -> None:
    """Raise a one-line ValueError if `build_model` would reject this model config."""
    _make(model_cfg, num_classes=num_classes, dtype=jnp.float32, compute=Compute())


def build_model(model_cfg: Mapping[str, Any], *, num_classes: int, dtype: Any = jnp.float32,
                plan: ModePlan | str = "auto", bn_axis: str | None = None) -> nn.Module:
    """The Flax module of a model config; `__call__(x, train)` maps NHWC images to float32 logits.

    `dtype` is the compute dtype (a jnp dtype or its name); parameters, BatchNorm statistics and
    the logits stay float32. `plan` (a `ModePlan`, or one mode name for every IGC layer) and
    `bn_axis` say how it computes (`models.blocks.Compute`); neither changes the parameters or the
    function.
    """
    plan = ModePlan(default=plan) if isinstance(plan, str) else plan
    return _make(model_cfg, num_classes=num_classes, dtype=jnp.dtype(dtype),
                 compute=Compute(plan=plan, bn_axis=bn_axis))
