"""Compile a config's train and eval steps for a Cloud TPU slice or for NVIDIA GPUs, on any
machine, with no TPU or GPU.

    python -m igc_jax.compile --config=experiments/imagenet_l16m16.py --topology=v5litepod-8
    python -m igc_jax.compile --config=experiments/cifar10_igc.py:L24M2,D20 --topology=v4-8 \\
        --config.batch_size=1024 --max_batch --json=compile.json
    python -m igc_jax.compile --config=experiments/imagenet_l16m16.py --topology=h100-8

TPU slices need libtpu (`pip install -e ".[tpu]"`); GPU targets (`h100-8`: one host of 8 H100
SXM 80GB, `h100-16`: two such hosts, `a100-8`: A100 SXM 80GB) need JAX's CUDA plugin and ptxas
(`pip install -e ".[gpu-compile]"`), no GPU, driver or cuDNN. On GPU targets nothing is autotuned
(cuDNN convolutions get no workspace), so the memory is a lower bound, and XLA:GPU has no cost
analysis, so FLOPs are n/a. The real TPU compiler compiles the trainer's own steps
(igc_jax.training.aot) and says, per chip: HBM for arguments, outputs and temporaries against the
chip's capacity, whether the step fits and by how much, its FLOPs and collectives, and the
compile time; `--max_batch` also finds the largest global batch that fits by bisection over
compiles. Config overrides work as in `igc_jax.main`. Exit status: 0 compiled (whether or not it
fits: the report says), 2 bad input (an unknown slice, a batch that does not divide over the
chips, a missing libtpu or CUDA plugin), 1 a bug.
"""
from __future__ import annotations

import os

# Compile-only TPU devices come from libtpu's topology, not from a TPU backend: keep JAX on the
# CPU (a TPU VM's chips may be busy training). The CUDA plugin registers its compile-only GPU
# topologies only then (else it starts a GPU backend, which needs cuDNN and a GPU).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from igc_jax.cli import parse_absl_flags  # noqa: E402
from igc_jax.errors import UserError, fail  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a command (importers, such as tests that
    format a report, keep their own flags)."""
    config_flags.DEFINE_config_file("config", None,
                                    "Experiment config file (experiments/*.py[:arg]).",
                                    lock_config=True)
    flags.DEFINE_string("topology", None, "Cloud TPU accelerator type, as for gcloud: v4-8, v4-32, "
                        "v5litepod-8 (or v5e-8), v5p-8, v6e-8, v5litepod-256, ...; or NVIDIA GPUs "
                        "on hosts of 8: h100-8, h100-16, a100-8, ...")
    flags.DEFINE_bool("max_batch", False, "Also find the largest global batch that fits, by "
                      "bisection over compiles.")
    flags.DEFINE_integer("max_batch_compiles", 8, "At most this many compiles for --max_batch.")
    flags.DEFINE_float("max_batch_tolerance", 0.0, "Stop --max_batch when the bracket is this "
                       "fraction of the largest batch that fits (0: one example per chip).",
                       lower_bound=0.0, upper_bound=0.5)
    flags.DEFINE_string("max_batch_resume", None, "Go on with the --max_batch search of an "
                        "earlier --json report of the same config and topology: its compiles "
                        "are not repeated.")
    flags.DEFINE_string("json", None, "Write the whole report as one JSON object to this file "
                        "('-': standard output).")
    flags.mark_flags_as_required(["config", "topology"])


GB = 1e9


def step_dict(report) -> dict[str, Any]:
    return {"memory_bytes": report.memory, "flops": report.flops,
            "bytes_accessed": report.bytes_accessed, "collectives": report.collectives,
            "compile_s": round(report.compile_s, 1), "out_of_memory": report.oom or None}


def prior_search(path: str, config,
                 topology: str) -> tuple[dict[int, int], int | None, dict[str, Any] | None]:
    """({global batch: bytes per chip}, the compiler's budget) of the largest-batch search in an
    earlier --json report, which must be of the same network, topology and dtype; and its train
    and eval steps ({"train": ..., "eval": ...}) when they were compiled at this config's batch
    sizes and mode, or None."""
    from igc_jax.configs.networks import network_name
    try:
        with open(path) as f:
            r = json.load(f)
        b, key = r["max_batch"], (r["network"], r["topology"], r["dtype"])
        prior = {int(k): int(v) for k, v in b["total_bytes_by_batch"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--max_batch_resume={path}: not a --max_batch --json report "
                        f"({type(e).__name__}: {e})") from None
    mine = (network_name(config.model), topology, config.dtype)
    if key != mine:
        raise UserError(f"--max_batch_resume={path} is a search of {key[0]} on {key[1]} in "
                        f"{key[2]}, not of {mine[0]} on {mine[1]} in {mine[2]}")
    same = all(r.get(k) == config[k] for k in ("batch_size", "eval_batch_size", "conv_mode"))
    steps = {k: r[k] for k in ("train", "eval")} if same and "eval" in r else None
    return prior, b.get("budget_bytes"), steps


def compile_config(config, topology: str, *, max_batch: bool = False,
                   max_batch_compiles: int = 8, resume: str | None = None,
                   tolerance: float = 0.0, progress=print) -> dict[str, Any]:
    """The report (a JSON-able dict) of `config`'s steps compiled for the TPU slice or GPU target
    `topology`; `resume`, an earlier report whose largest-batch search this one goes on with."""
    from igc_jax.configs.networks import network_name
    from igc_jax.igc.select import ModeContext
    from igc_jax.training import aot
    slc = aot.plan(config, topology)
    prior, budget, done = prior_search(resume, config, topology) if resume else ({}, None, None)
    devices = aot.target_devices(slc)
    progress(f"compiling {network_name(config.model)} for {slc.describe()}: "
             f"{devices[0].device_kind}, topology {slc.topology_name}")
    program = aot.build_program(config, devices, ModeContext(slc.platform))
    if done is not None:  # the earlier report compiled them: not again
        progress("  train and eval steps at the config's batch sizes: from --max_batch_resume")
        train, evaluate = done["train"], done["eval"]
    else:
        train = step_dict(program.train_report(config.batch_size))
        progress(f"  train step compiled in {train['compile_s']:.0f} s")
        evaluate = step_dict(program.eval_report(config.eval_batch_size))
        progress(f"  eval step compiled in {evaluate['compile_s']:.0f} s")
    need = max(train["memory_bytes"]["total"], evaluate["memory_bytes"]["total"])
    out = {"network": network_name(config.model),
           "topology": topology, "jax_topology": slc.topology_name, "platform": slc.platform,
           "unit": slc.unit,
           # XLA:GPU autotunes nothing with no GPU: the memory it reports is a lower bound.
           "memory_is_lower_bound": slc.platform == "gpu",
           "device_kind": devices[0].device_kind, "chips": slc.chips, "hosts": slc.hosts,
           "hbm_per_chip_bytes": slc.hbm_bytes, "batch_size": config.batch_size,
           "eval_batch_size": config.eval_batch_size, "dtype": config.dtype,
           "num_params": program.num_params, "conv_mode": config.conv_mode,
           "conv_modes": mode_counts(program.conv_modes),
           "train": train, "eval": evaluate,
           "need_per_chip_bytes": need, "fits": need <= slc.hbm_bytes and not
           (train["out_of_memory"] or evaluate["out_of_memory"]),
           "margin_bytes": slc.hbm_bytes - need}
    if max_batch:
        def measure(batch: int):
            report = program.train_report(batch)
            progress(f"  train step at global batch {batch}: {report.total / 1e9:.2f} GB per chip")
            return report

        # The config's batch is the search's first point, compiled above.
        prior.setdefault(config.batch_size, train["memory_bytes"]["total"])
        search = aot.largest_batch(measure, slc.chips, budget or slc.hbm_bytes,
                                   start=config.batch_size // slc.chips,
                                   max_compiles=max_batch_compiles, prior=prior,
                                   tolerance=tolerance)
        out["max_batch"] = {"largest_fitting": search.largest,
                            "smallest_not_fitting": search.smallest_not_fitting,
                            "compiles": len(search.per_batch_bytes),
                            "budget_bytes": search.budget,
                            "total_bytes_by_batch": {str(k): v for k, v in
                                                     search.per_batch_bytes.items()}}
    return out


def mode_counts(conv_modes: dict[str, tuple[str, str]]) -> dict[str, int]:
    """{mode: number of IGC layers} of the plan `auto` (or the config) made."""
    counts: dict[str, int] = {}
    for _, mode in conv_modes.values():
        counts[mode] = counts.get(mode, 0) + 1
    return counts


def _collective_line(c: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{op} {v['count']} ({v['bytes'] / 1e6:.2f} MB)" for op, v in c.items())


def _tflop(flops: float | None) -> str:
    return "n/a" if flops is None else f"{flops / 1e12:.3f}"


def format_report(r: dict[str, Any]) -> str:
    """The report as the lines a user reads."""
    cap = r["hbm_per_chip_bytes"]
    chip = r.get("unit", "chip")
    lines = [f"{r['network']} on {r['topology']} ({r['device_kind']}, {r['chips']} {chip}s, "
             f"{r['hosts']} host(s)): global batch {r['batch_size']} "
             f"({r['batch_size'] // r['chips']} per {chip}), eval {r['eval_batch_size']}, "
             f"{r['dtype']}, computation modes "
             f"{r['conv_modes'] or 'none (no IGC layer or depthwise conv)'}"]
    for name in ("train", "eval"):
        s = r[name]
        m = s["memory_bytes"]
        if s["out_of_memory"]:
            lines.append(f"{name} step: the compiler ran out of HBM: {s['out_of_memory']}")
            continue
        lines.append(f"{name} step: {m['total'] / GB:.2f} GB per {chip} (arguments "
                     f"{m['arguments'] / GB:.2f}, outputs {m['outputs'] / GB:.2f}, aliased "
                     f"{m['aliased'] / GB:.2f}, temporaries {m['temporaries'] / GB:.2f}, code "
                     f"{m['code'] / GB:.2f}); {_tflop(s['flops'])} TFLOP per {chip}; compiled in "
                     f"{s['compile_s']:.0f} s")
        lines.append(f"  collectives: {_collective_line(s['collectives'])}")
    verdict = "fits" if r["fits"] else "does not fit"
    lines.append(f"{verdict}: needs {r['need_per_chip_bytes'] / GB:.2f} GB of {cap / GB:.2f} GB "
                 f"HBM per {chip} ({abs(r['margin_bytes']) / GB:.2f} GB "
                 f"{'free' if r['margin_bytes'] >= 0 else 'over'})")
    if r.get("memory_is_lower_bound"):
        lines.append("  (a lower bound: with no GPU, XLA autotunes nothing and gives cuDNN's "
                     "convolutions no workspace; on a GPU they take more)")
    if "max_batch" in r:
        b = r["max_batch"]
        upper = (f"; {b['smallest_not_fitting']} does not" if b["smallest_not_fitting"]
                 else "")
        largest = b["largest_fitting"] or f"none down to {r['chips']} (1 per {chip})"
        lines.append(f"largest global batch that fits: {largest}{upper} ({b['compiles']} "
                     "compiles)")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = FLAGS.config
    try:
        report = compile_config(config, FLAGS.topology, max_batch=FLAGS.max_batch,
                                max_batch_compiles=FLAGS.max_batch_compiles,
                                resume=FLAGS.max_batch_resume,
                                tolerance=FLAGS.max_batch_tolerance,
                                progress=lambda s: print(s, file=sys.stderr, flush=True))
    except UserError as e:  # anything else is a bug: its traceback, exit 1
        fail(str(e))
    report = {"config": config_flags.get_config_filename(FLAGS["config"]), **report}
    print(format_report(report))
    if FLAGS.json:
        text = json.dumps(report, indent=1, sort_keys=True)
        if FLAGS.json == "-":
            print(text)
        else:
            with open(FLAGS.json, "w") as f:
                f.write(text + "\n")


def run() -> None:
    _define_flags()
    app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    run()
