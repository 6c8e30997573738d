"""Training-batch throughput of the input pipeline: CIFAR-10 (local arrays) and digits.

    python -m benchmarks.input_pipeline [--batches 300] [--repeats 3] [--workers 2]
    python -m benchmarks.input_pipeline --dataset=imagenet   (benchmarks/input_pipeline_imagenet.py)

Batch 128 with the configs' training preprocessing (CIFAR-10: pad-4 crop + flip + normalisation;
digits: normalisation, as its quick start uses augment 'none'; also digits with the CIFAR crop to
show the augmentation's cost). Per source, side by side in one run:
  sync      `TrainBatches(step)` called in this thread: the cost of one batch, nothing overlapped
  threads   `train_iterator` (grain, 2 prefetch threads): what the trainer pulls, consumer idle
  workers   the same with dataset.num_workers worker processes
Rates are the median of `--repeats` windows of `--batches` batches, after a warm-up batch (whose
time, the loading of the arrays, is reported apart).
Writes benchmarks/results/input_pipeline.{json,md}.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os

# One BLAS thread: "per core" means one thread, and worker processes must not oversubscribe.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import platform  # noqa: E402
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from igc_jax import configs, data
from igc_jax.data import pipeline

ROOT = Path(__file__).resolve().parents[1]
CIFAR10_DIR = ROOT.parent / "shared" / "data" / "cifar10"
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 128


def source_config(source: str):
    c = configs.base_config()
    c.batch_size = BATCH
    if source == "cifar10 arrays":
        c.dataset.update(name="arrays", data_dir=str(CIFAR10_DIR), augment="cifar")
    else:
        c.dataset.update(name="digits", image_size=8, normalization="digits",
                         augment="cifar" if source == "digits + cifar crop" else "none")
    return c


def windows(next_batch, batches: int, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first batch, batches/s of each later window)."""
    t = time.perf_counter()
    next_batch()
    first = time.perf_counter() - t
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(batches):
            next_batch()
        rates.append(batches / (time.perf_counter() - t))
    return first, rates


def measure(source: str, mode: str, batches: int, repeats: int, workers: int) -> dict:
    config = source_config(source)
    if mode == "sync":
        it = data.train_iterator(config, process_index=0, process_count=1)
        step = iter(range(10**9))
        next_batch = lambda: it.batches(next(step))          # noqa: E731
    else:
        config.dataset.num_workers = workers if mode == "workers" else 0
        it = data.train_iterator(config, process_index=0, process_count=1)
        next_batch = lambda: next(it)                         # noqa: E731
    first, rates = windows(next_batch, batches, repeats)
    rate = statistics.median(rates)
    return {"source": source, "mode": mode, "batch_size": BATCH,
            "workers": config.dataset.num_workers, "first_batch_s": round(first, 3),
            "batches_per_s": round(rate, 1), "images_per_s": round(rate * BATCH),
            "ms_per_batch": round(1000 / rate, 2), "window_rates": [round(r, 1) for r in rates]}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# Input pipeline throughput (training batches, batch 128)", "",
        f"Machine: {env['cpus']} CPU cores shared with other jobs (load average "
        f"{env['load_average']} at the start), so the figures are noisy; Python {env['python']}, "
        f"numpy {env['numpy']}, grain {env['grain']}. {result['batches']} batches × "
        f"{result['repeats']} windows, median.", "",
        "| source | mode | workers | batches/s | images/s | ms/batch | first batch (s) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['source']} | {r['mode']} | {r['workers']} | {r['batches_per_s']} | "
                     f"{r['images_per_s']} | {r['ms_per_batch']} | {r['first_batch_s']} |")
    lines += ["", "sync: one batch built in the calling thread (its full cost). threads: "
              "`train_iterator` with grain's 2 prefetch threads and an idle consumer. workers: "
              "the same with dataset.num_workers processes (spawned; the first batch includes "
              "their start and their own reading of the data). The CIFAR-10 sync row's first batch "
              "includes reading and decompressing the 141 MB of .npz (cached for the threads "
              "row).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dataset", choices=("small", "imagenet"), default="small",
                        help="small: CIFAR-10 arrays and digits; imagenet: JPEG photographs")
    args = parser.parse_args()
    if args.dataset == "imagenet":
        from benchmarks import input_pipeline_imagenet

        result = input_pipeline_imagenet.run(RESULTS)
        print(input_pipeline_imagenet.markdown(result))
        return
    sources = (["cifar10 arrays"] if CIFAR10_DIR.is_dir() else []) + [
        "digits", "digits + cifar crop"]
    if not CIFAR10_DIR.is_dir():
        print(f"{CIFAR10_DIR} not found: CIFAR-10 skipped", file=sys.stderr)
    env = {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
           "python": platform.python_version(), "numpy": np.__version__,
           "grain": importlib.metadata.version("grain"), "platform": platform.platform()}
    rows = []
    for source in sources:
        for mode in ("sync", "threads", "workers"):
            rows.append(measure(source, mode, args.batches, args.repeats, args.workers))
            print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "input_pipeline", "environment": env, "batches": args.batches,
              "repeats": args.repeats, "read_threads": pipeline.READ_THREADS,
              "prefetch_batches": pipeline.PREFETCH_BATCHES, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "input_pipeline.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "input_pipeline.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
