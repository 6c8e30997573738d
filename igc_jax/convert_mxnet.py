"""Convert a released MXNet model:
`python -m igc_jax.convert_mxnet --symbol=... --params=... --out=...`.

Thin on purpose: the format reader is `igc_jax.mxnet.format`, the graph parser
`igc_jax.mxnet.symbol`, the model inference `igc_jax.mxnet.infer`, the array mapping
`igc_jax.mxnet.convert` and the output directory `igc_jax.mxnet.saved`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from igc_jax.errors import UserError, fail
from igc_jax.mxnet import convert, saved
from igc_jax.mxnet import format as mxnet_format


def _read_json(path: Path, flag: str) -> dict:
    """A JSON file given by `flag`; a missing or malformed one is a UserError naming it."""
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{flag}: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UserError(f"{flag}: {path} is not JSON: {e}") from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m igc_jax.convert_mxnet",
        description="Convert a released MXNet IGC/ResNet model into an igc-jax checkpoint.")
    parser.add_argument("--symbol", required=True, type=Path, help="<name>-symbol.json")
    parser.add_argument("--params", required=True, type=Path, help="<name>-<epoch>.params")
    parser.add_argument("--out", required=True, type=Path, help="new output directory")
    args = parser.parse_args(argv)
    try:
        symbol = _read_json(args.symbol, "--symbol")
        if not args.params.is_file():
            raise UserError(f"--params: {args.params} is not a file")
        from igc_jax.training.validate import check_workdir
        check_workdir(str(args.out), "--out")
        variables, converted = convert.convert_model(symbol, mxnet_format.load_params(args.params))
        out = saved.save_converted(args.out, variables, converted,
                                   {"symbol": args.symbol.name, "params": args.params.name})
    except UserError as e:  # anything else is a bug: its traceback, exit 1
        fail(str(e))
    import jax
    count = sum(a.size for a in jax.tree.leaves(variables["params"]))
    info = saved.load_converted_info(out)
    print(f"converted {args.params.name}: {info['model']} ({converted.num_classes} classes, "
          f"{converted.image_size}×{converted.image_size}, {count:,} parameters)")
    print(f"model config: {info['experiment'] or 'no experiments/imagenet_*.py has this model'}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
