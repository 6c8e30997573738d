"""Compare igc-jax with MXNet on the released ImageNet symbols at 224×224 (once, not in CI).

    /work/mxnet-venv/bin/python tools/make_mxnet_fixture.py official --out /tmp/mxnet_full \\
        --symbol ../shared/reference/official_models/resnet_d18-symbol.json --symbol ...
    python tools/mxnet_equivalence.py --dir /tmp/mxnet_full \
        --out benchmarks/results/mxnet_equivalence
    MXNET_MKLDNN_ENABLED=0 /work/mxnet-venv/bin/python tools/make_mxnet_fixture.py official \\
        --calibrate 100 --symbol ../shared/reference/official_models/igcv3/igcv3-symbol.json \\
        --out /tmp/mxnet_igcv3
    python tools/mxnet_equivalence.py --dir /tmp/mxnet_igcv3 --modes grouped \
        --out benchmarks/results/mxnet_equivalence_igcv3

(IGCV3's symbol: MXNet 1.9.1's oneDNN path fails on its graph, "could not create a primitive
descriptor for a reorder primitive", hence MXNET_MKLDNN_ENABLED=0; and its 98 BatchNorms get the
moving statistics of other random images, `--calibrate`, so that float32 rounding is not
amplified through unnormalised activations.)

For every NAME-symbol.json / NAME-0000.params / NAME-logits.npz in --dir (random weights and
BatchNorm statistics, MXNet's inference-mode logits of random images), converts the model with
`igc_jax.convert_mxnet`, runs it in igc-jax (float32, each IGC computation mode asked for) and
writes the largest difference to MXNet's logits, relative to their largest magnitude.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from igc_jax import models
from igc_jax.mxnet import convert as convert_mxnet
from igc_jax.mxnet import format as mxnet_format
from igc_jax.mxnet import infer


def compare(directory: Path, name: str, modes: list[str]) -> dict:
    symbol = json.loads((directory / f"{name}-symbol.json").read_text())
    variables, converted = convert_mxnet.convert_model(
        symbol, mxnet_format.load_params(directory / f"{name}-0000.params"))
    with np.load(directory / f"{name}-logits.npz") as z:
        data, ref = z["data"].transpose(0, 2, 3, 1), z["logits"]
    row = {"symbol": f"{name}-symbol.json", "model": converted.model,
           "experiment": infer.matching_experiment(converted),
           "parameters": int(sum(a.size for a in jax.tree.leaves(variables["params"]))),
           "images": int(data.shape[0]), "image_size": int(data.shape[1]),
           "max_abs_logit": float(np.abs(ref).max()), "modes": {}}
    for mode in modes:
        model = models.build_model(converted.model, num_classes=converted.num_classes,
                                   plan=mode)
        start = time.perf_counter()
        logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
            variables, jnp.asarray(data)))
        diff = np.abs(logits - ref)
        row["modes"][mode] = {
            "max_rel_diff": float(diff.max() / np.abs(ref).max()),
            "max_abs_diff": float(diff.max()),
            "top1_agree": int((logits.argmax(1) == ref.argmax(1)).sum()),
            "seconds_incl_compile": round(time.perf_counter() - start, 1)}
        print(name, mode, row["modes"][mode], flush=True)
    return row


def markdown(rows: list[dict], modes: list[str]) -> str:
    lines = [
        "# igc-jax vs MXNet 1.9.1 on the released ImageNet symbols",
        "",
        "Each released `-symbol.json` (the custom `Reorder` op replaced by stock reshape +",
        "transpose in MXNet) with random weights and BatchNorm statistics (random, or those of",
        "other random images where `make_mxnet_fixture.py official --calibrate` set them); MXNet's",
        "inference-mode logits for random 224×224 images against the converted igc-jax model",
        "(float32, CPU).",
        "Difference: max |igc-jax − MXNet| over all logits / max |MXNet logit|.",
        "Made by `tools/make_mxnet_fixture.py official` and `tools/mxnet_equivalence.py`;",
        "timings (in the json) include compilation on a shared, noisy 2-core machine.",
        "The modes are igc_jax.igc.modes's ways to compute an IGC layer; the ResNets have none, so",
        "their three columns are one computation.",
        "",
        "| symbol | igc-jax config | params | images | max abs. logit | "
        + " | ".join(f"max rel. diff ({m})" for m in modes) + " | top-1 agree |",
        "|---|---|---|---|---|" + "---|" * len(modes) + "---|",
    ]
    for r in rows:
        agree = min(v["top1_agree"] for v in r["modes"].values())
        lines.append(
            f"| {r['symbol']} | {r['experiment'] or r['model']} | {r['parameters']:,} | "
            f"{r['images']} | {r['max_abs_logit']:.3g} | "
            + " | ".join(f"{r['modes'][m]['max_rel_diff']:.2e}" for m in modes)
            + f" | {agree}/{r['images']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output path without extension")
    parser.add_argument("--modes", default="composed,grouped",
                        help="comma-separated igc_jax.igc.modes modes (ResNets and IGCV3 have no "
                        "IGC layer)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    names = sorted(p.name.removesuffix("-logits.npz") for p in args.dir.glob("*-logits.npz"))
    rows = [compare(args.dir, name, modes) for name in names]
    result = {"backend": jax.default_backend(), "jax": jax.__version__,
              "machine": platform.machine(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, modes))
    print(markdown(rows, modes))


if __name__ == "__main__":
    main()
