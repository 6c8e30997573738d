"""A converted model on disk: `save_converted` writes it, `load_converted(_info)` read it back.

    <out>/variables/   orbax PyTree checkpoint (StandardCheckpointer) of
                       {"params": ..., "batch_stats": ...}, float32
    <out>/model.json   {"model": <model config>, "num_classes", "image_size", "experiment":
                        experiments/<file>.py with this model or null, "preprocessing" (the
                        released models' input normalisation, null for other networks),
                        "source": {"symbol", "params"} file names}

The released IGCV1 models were trained (the authors' train_imagenet.py, default `fb_mean=False`) on
RGB inputs normalised with mean (123.370, 112.757, 99.406) and std (68.998, 66.093, 68.292) on the
0–255 scale, evaluated on the centre 224 crop of images resized to short side 256; the released
IGCV3 model on inputs minus the mean (123.68, 116.779, 103.939), no std, evaluated the same way.
model.json records which.
"""
from __future__ import annotations

import json
from pathlib import Path

from igc_jax.errors import UserError
from igc_jax.mxnet.infer import ConvertedModel, matching_experiment, plain_config

# The authors' ImageNet input normalisation (train_imagenet.py, fb_mean=False), 0–255 RGB.
RELEASED_PREPROCESSING = {
    "mean": [123.370, 112.757, 99.406],
    "std": [68.998, 66.093, 68.292],
    "eval": "resize the short side to 256, centre crop 224",
    "source": "hellozting/InterleavedGroupConvolutions train_imagenet.py (fb_mean=False)",
}
# The IGCV3 authors' ImageNet input: mean subtraction only (common/data.py's `--rgb-mean`).
RELEASED_IGCV3_PREPROCESSING = {
    "mean": [123.68, 116.779, 103.939],
    "std": [1.0, 1.0, 1.0],
    "eval": "resize the short side to 256, centre crop 224",
    "source": "homles11/IGCV3 train_imagenet.py (common/data.py --rgb-mean, no std)",
}


def released_preprocessing(converted: ConvertedModel) -> dict | None:
    """The training inputs of a released network (None for any other network)."""
    if matching_experiment(converted) is None:
        return None
    if converted.model["name"] == "igcv3":
        return RELEASED_IGCV3_PREPROCESSING
    return RELEASED_PREPROCESSING


def save_converted(out_dir: str | Path, variables: dict, converted: ConvertedModel,
                   source: dict | None = None) -> Path:
    """Write <out>/variables (orbax PyTree checkpoint) and <out>/model.json; returns <out>."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).resolve()
    if (out / "variables").exists():
        raise UserError(f"{out / 'variables'} already exists; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "variables", variables)
    checkpointer.wait_until_finished()
    checkpointer.close()
    experiment = matching_experiment(converted)
    info = {"model": plain_config(converted.model), "num_classes": converted.num_classes,
            "image_size": converted.image_size, "experiment": experiment,
            # The released networks' training inputs; unknown for any other network.
            "preprocessing": released_preprocessing(converted),
            "source": source or {}}
    (out / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def load_converted_info(directory: str | Path) -> dict:
    """The model.json of a `save_converted` directory."""
    path = Path(directory) / "model.json"
    if not path.is_file():
        raise UserError(f"{directory} is not a converted model (no model.json)")
    return json.loads(path.read_text())


def load_converted(directory: str | Path) -> dict:
    """The {"params", "batch_stats"} a `save_converted` directory holds (numpy float32)."""
    import orbax.checkpoint as ocp

    path = Path(directory).resolve() / "variables"
    if not path.is_dir():
        raise UserError(f"{directory} is not a converted model (no variables/ checkpoint)")
    checkpointer = ocp.StandardCheckpointer()
    variables = checkpointer.restore(path)
    checkpointer.close()
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
