"""Config validation where a run starts: every check that needs no compile, before any compile."""
from __future__ import annotations

import ml_collections

from igc_jax import models
from igc_jax.configs import DTYPES, LR_SCHEDULES
from igc_jax.data import DATASETS


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError with a one-line message on the first problem found."""
    if config.dataset.name not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset.name!r}; choose from {', '.join(DATASETS)}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
    if config.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {config.dtype!r}; choose from {', '.join(DTYPES)}")
    for key in ("batch_size", "eval_batch_size"):
        if config[key] <= 0:
            raise ValueError(f"{key} must be positive, got {config[key]}")
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ValueError("set num_epochs > 0 or num_train_steps > 0")
    models.validate_model_config(config.model, num_classes=config.dataset.num_classes)
