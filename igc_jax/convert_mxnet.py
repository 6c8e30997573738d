"""Convert a released MXNet model:
`python -m igc_jax.convert_mxnet --symbol=... --params=... --out=...`.

Thin on purpose: the format reader is `igc_jax.mxnet.format`, the graph parser
`igc_jax.mxnet.symbol`, the model inference `igc_jax.mxnet.infer`, the array mapping
`igc_jax.mxnet.convert` and the output directory `igc_jax.mxnet.saved`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from absl import flags

from igc_jax.cli import parse_tool_flags
from igc_jax.errors import UserError, fail
from igc_jax.mxnet import convert, saved
from igc_jax.mxnet import format as mxnet_format

# This tool's own flags (`igc_jax.cli`).
FLAGS = flags.FlagValues()
flags.DEFINE_string("symbol", None, "<name>-symbol.json", flag_values=FLAGS)
flags.DEFINE_string("params", None, "<name>-<epoch>.params", flag_values=FLAGS)
flags.DEFINE_string("out", None, "new output directory", flag_values=FLAGS)
flags.mark_flags_as_required(["symbol", "params", "out"], flag_values=FLAGS)


def _read_json(path: Path, flag: str) -> dict:
    """A JSON file given by `flag`; a missing or malformed one is a UserError naming it."""
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{flag}: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UserError(f"{flag}: {path} is not JSON: {e}") from None


def main(argv: Sequence[str] | None = None) -> None:
    """Convert the model its arguments (sys.argv[1:] when None) name and write it to --out."""
    rest = parse_tool_flags(FLAGS, argv)
    symbol_path, params_path, out_path = Path(FLAGS.symbol), Path(FLAGS.params), Path(FLAGS.out)
    try:
        if rest:
            raise UserError(f"unexpected argument(s) {' '.join(rest)}; give --symbol, --params "
                            "and --out")
        symbol = _read_json(symbol_path, "--symbol")
        if not params_path.is_file():
            raise UserError(f"--params: {params_path} is not a file")
        from igc_jax.training.validate import check_workdir
        check_workdir(str(out_path), "--out")
        variables, converted = convert.convert_model(symbol, mxnet_format.load_params(params_path))
        out = saved.save_converted(out_path, variables, converted,
                                   {"symbol": symbol_path.name, "params": params_path.name})
    except UserError as e:  # anything else is a bug: its traceback, exit 1
        fail(str(e))
    import jax
    count = sum(a.size for a in jax.tree.leaves(variables["params"]))
    info = saved.load_converted_info(out)
    print(f"converted {params_path.name}: {info['model']} ({converted.num_classes} classes, "
          f"{converted.image_size}×{converted.image_size}, {count:,} parameters)")
    print(f"model config: {info['experiment'] or 'no experiments/imagenet_*.py has this model'}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
