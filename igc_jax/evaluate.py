"""Evaluate a converted model (`igc_jax.convert_mxnet`) on a config's evaluation split.

    python -m igc_jax.evaluate --config=experiments/imagenet_l16m16.py --checkpoint=converted/l16m16

For `imagenet2012` the split is TFDS `validation` (50,000 images), preprocessed as the config's
dataset says (the ImageNet configs: short side resized to 256, centre crop 224, per-channel
normalisation). Prints top-1 / top-5 accuracy and error; exit status 2 with a one-line error on
bad input (a checkpoint of another network, a missing data set).
"""
from __future__ import annotations

import functools
import json
import sys
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from igc_jax.cli import parse_absl_flags
from igc_jax.errors import UserError, fail

config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "Directory written by `python -m igc_jax.convert_mxnet`.")
flags.mark_flags_as_required(["config", "checkpoint"])
FLAGS = flags.FLAGS


def _shapes(tree: Any, prefix: str = "") -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        out.update(_shapes(value, path) if isinstance(value, dict) else {path: tuple(value.shape)})
    return out


def check_fits(variables: dict, abstract: dict) -> None:
    """One-line ValueError at the first variable where the checkpoint and the model disagree."""
    have, want = _shapes(variables), _shapes(abstract)
    for path in sorted(set(have) | set(want)):
        if have.get(path) != want.get(path):
            raise UserError(f"the checkpoint does not fit the config's model: {path} is "
                            f"{have.get(path, 'absent')} in the checkpoint, "
                            f"{want.get(path, 'absent')} in the model")


def warn_normalization(config: ml_collections.ConfigDict, info: dict) -> None:
    """Say so when the config normalises inputs otherwise than the converted model was trained."""
    from igc_jax.data import NORMALIZATION

    mean, std = NORMALIZATION.get(config.dataset.normalization, (None, None))
    trained = info.get("preprocessing") or {}
    if mean is None or "mean" not in trained:
        return
    if not (np.allclose(mean, trained["mean"], atol=1e-3)
            and np.allclose(std, trained["std"], atol=1e-3)):
        print(f"warning: the converted model was trained on inputs normalised with mean "
              f"{trained['mean']} and std {trained['std']} ({trained.get('source', '')}); this "
              f"config uses dataset.normalization={config.dataset.normalization!r} (mean "
              f"{list(mean)}, std {list(std)})", file=sys.stderr)


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint_dir: str) -> dict:
    """{"top1", "top5", "loss", "count"} of the converted model over the config's test split."""
    import jax
    import jax.numpy as jnp

    from igc_jax.igc import select
    from igc_jax.mxnet import saved
    from igc_jax.training import loop, sharding, steps
    from igc_jax.training.validate import validate

    validate(config)
    info = saved.load_converted_info(checkpoint_dir)
    if info["num_classes"] != config.dataset.num_classes:
        raise UserError(f"the checkpoint has {info['num_classes']} classes, the config "
                        f"{config.dataset.num_classes}")
    warn_normalization(config, info)
    variables = saved.load_converted(checkpoint_dir)
    size = config.dataset.image_size
    model = steps.make_model(config, steps.plan_modes(
        config, (size, size, 3), select.detect_context(),
        batch_size=config.eval_batch_size).plan)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda rng, x: model.init(rng, x, train=False),
                              jax.random.PRNGKey(0), x)
    check_fits(variables, abstract)

    mesh = sharding.make_mesh()
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    rep = sharding.replicated(mesh)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                             batch_stats=variables["batch_stats"], opt_state=())
    state = jax.device_put(state, rep)
    eval_fn = jax.jit(steps.per_device(functools.partial(steps.eval_step, model=model,
                                                         axis=sharding.DATA_AXIS), mesh),
                      in_shardings=(rep, sharding.batch_sharding(mesh)), out_shardings=rep)
    return loop.evaluate(eval_fn, state, config, mesh, stop=lambda i: False)


def main(argv) -> None:
    del argv
    try:
        result = evaluate_checkpoint(FLAGS.config, FLAGS.checkpoint)
    except UserError as e:  # anything else is a bug: its traceback, exit 1
        fail(str(e))
    result.update(top1_error=1.0 - result["top1"], top5_error=1.0 - result["top5"])
    print(f"{FLAGS.config.dataset.name}: {result['count']} images, "
          f"top-1 {100 * result['top1']:.2f}% (error {100 * result['top1_error']:.2f}%), "
          f"top-5 {100 * result['top5']:.2f}% (error {100 * result['top5_error']:.2f}%)")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_absl_flags)
