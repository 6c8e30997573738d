"""ImageNet records read on gs:// in place (a local GCS emulator) against the same files on disk.

    python -m benchmarks.input_pipeline_gcs [--batches 8] [--latency_ms 0,30]

A TFDS imagenet2012 of benchmarks/photos.py's photographs (512 train images in 16 ArrayRecord
files, as ImageNet's 1,024 files of 1,251 records: a batch's records lie in different files) is
written to local disk and uploaded to gs:// on tests/gcs_emulator.py (gcp-storage-emulator,
requests in threads), once with no added latency and once with LATENCY_MS added to every object
read, a stand-in for an object store's round trip. Each emulator is measured in a child process
(the GCS clients read their endpoint from the environment at import). Side by side:
  records   `split.read` of 64 random records (the trainer's reader: TFDS's ArrayRecord data
            source, one thread per file touched), records/s, the JPEG bytes only
  iterator  `train_iterator` (imagenet_mxnet, batch 64) with 0, 1 and 2 worker processes, and with
            more read threads, images/s (decode and augmentation included)
Writes benchmarks/results/input_pipeline_gcs.{json,md}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BUCKET = "bench"
NUM_TRAIN, NUM_SHARDS = 512, 16
# (label, dataset.num_workers, read threads per process or worker): the trainer's settings, then
# more threads, which only help where reads wait.
SETTINGS = [("0 workers", 0, None), ("1 worker", 1, None), ("2 workers", 2, None),
            ("0 workers, 8 threads", 0, 8), ("2 workers, 4 threads each", 2, 4)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def emulator(latency_ms: float):
    """(url) of tests/gcs_emulator.py serving gs://BUCKET, every object read delayed by
    `latency_ms`."""
    import socket

    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "gcs_emulator.py"), str(port),
                             BUCKET, str(latency_ms)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def emulator_env(url: str) -> dict:
    return {"STORAGE_EMULATOR_HOST": url, "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "FSSPEC_GCS_TOKEN": "anon",
            "FSSPEC_GCS_PROJECT": "test"}


def record_rate(data_dir: str, rounds: int = 5) -> dict:
    """records/s of the trainer's reader: `split.read` of 64 random records, median of rounds
    (each a fresh order), after one warm-up read that opens the files."""
    import statistics

    import numpy as np

    from igc_jax import configs, data
    from igc_jax.data import sources

    c = configs.imagenet_recipe("IGC-L4M32+Ident.")
    c.dataset.update(data_dir=data_dir)
    split = sources.open_split(c.dataset, "train", data.dataset_info(c.dataset))
    rng = np.random.default_rng(0)
    split.read(np.arange(NUM_TRAIN))
    rates, sizes = [], []
    for _ in range(rounds):
        idx = rng.permutation(NUM_TRAIN)[:64]
        t = time.perf_counter()
        images, _ = split.read(idx)
        rates.append(64 / (time.perf_counter() - t))
        sizes += [len(im) for im in images]
    return {"records_per_s": round(statistics.median(rates), 1),
            "mean_record_kb": round(float(np.mean(sizes)) / 1000, 1)}


def iterator_rates(data_dir: str, batches: int) -> list[dict]:
    from benchmarks.input_pipeline_imagenet import pipeline_rate
    from igc_jax.data import pipeline

    out = []
    for label, workers, threads in SETTINGS:
        saved = pipeline.READ_THREADS, pipeline.WORKER_READ_THREADS
        if threads:
            pipeline.READ_THREADS = pipeline.WORKER_READ_THREADS = threads
        try:
            out.append({"setting": label, **pipeline_rate(data_dir, workers, batches)})
        finally:
            pipeline.READ_THREADS, pipeline.WORKER_READ_THREADS = saved
        print(json.dumps(out[-1]), flush=True)
    return out


def child(args) -> None:
    """Runs in a process whose environment points the GCS clients at one emulator."""
    if args.upload_from:
        from etils import epath

        local = Path(args.upload_from)
        for f in local.rglob("*"):
            if f.is_file():
                (epath.Path(args.data_dir) / str(f.relative_to(local))).write_bytes(f.read_bytes())
    result = {"records": record_rate(args.data_dir),
              "iterator": iterator_rates(args.data_dir, args.batches)}
    Path(args.out).write_text(json.dumps(result))


def measure(data_dir: str, batches: int, env: dict | None = None, upload_from: str = "") -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "benchmarks.input_pipeline_gcs", "--child",
                        f"--data_dir={data_dir}", f"--out={out.name}", f"--batches={batches}",
                        f"--upload_from={upload_from}"],
                       env={**os.environ, **(env or {})}, cwd=ROOT, check=True)
        return json.loads(Path(out.name).read_text())


def run(batches: int, latencies: list[float]) -> dict:
    import importlib.metadata

    from benchmarks.photos import build_tiny_imagenet
    from igc_jax.data import pipeline

    env = {"cpus": os.cpu_count(), "affinity_cpus": pipeline.available_cpus(),
           "load_average": [round(x, 2) for x in os.getloadavg()],
           "python": platform.python_version(),
           "array_record": importlib.metadata.version("array_record"),
           "grain": importlib.metadata.version("grain"),
           "gcp_storage_emulator": importlib.metadata.version("gcp-storage-emulator")}
    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_imagenet(tmp, NUM_TRAIN, 16, num_shards=NUM_SHARDS)
        sources["local disk"] = measure(tmp, batches)
        for latency in latencies:
            with emulator(latency) as url:
                sources[f"emulator, +{latency:g} ms per read"] = measure(
                    f"gs://{BUCKET}/tfds", batches, emulator_env(url), upload_from=tmp)
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"benchmark": "input_pipeline_gcs", "environment": env, "num_train": NUM_TRAIN,
              "num_shards": NUM_SHARDS, "batches": batches, "sources": sources}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "input_pipeline_gcs.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "input_pipeline_gcs.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    env = r["environment"]
    lines = [
        "# ImageNet records on gs:// (local GCS emulator) against local disk", "",
        f"{r['num_train']} photographs (benchmarks/photos.py) in a TFDS imagenet2012 of "
        f"{r['num_shards']} ArrayRecord files; `train_iterator` with the ImageNet configs' recipe "
        f"(imagenet_mxnet, batch 64, {r['batches']} batches after 3 warm-up ones). Machine: "
        f"{env['affinity_cpus']} CPU cores shared with other jobs (load average "
        f"{env['load_average']} at the start, {env['load_average_end']} at the end), "
        f"array_record {env['array_record']}, grain {env['grain']}, gcp-storage-emulator "
        f"{env['gcp_storage_emulator']}. `python -m benchmarks.input_pipeline_gcs`.", "",
        "| source | records/s (64 random) | setting | images/s | images per CPU-second | "
        "cores used |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    for name, s in r["sources"].items():
        for i, it in enumerate(s["iterator"]):
            rec = s["records"]["records_per_s"] if i == 0 else ""
            lines.append(f"| {name if i == 0 else ''} | {rec} | {it['setting']} | "
                         f"{it['images_per_s']} | {it['images_per_cpu_s']} | {it['cores_used']} |")
    lines += ["", "What these numbers mean: the emulator is a Python HTTP server on the same two "
              "cores, so its rates measure the reader's request pattern (one ranged GET per "
              "record, files opened once per process) plus the emulator's own CPU, which competes "
              "with decoding; the added latency shows whether the pipeline keeps enough reads in "
              "flight to hide a round trip. They cannot say what GCS itself delivers: its "
              "latency distribution, per-connection bandwidth, request-rate limits, TLS and "
              "authentication costs, or a TPU host's network.", "",
              "Caveat: the timed batches follow the first one, and workers keep preparing "
              "batches (up to 4 per read thread) while it is slow, so a row whose first batch "
              "took many seconds may time batches that were already waiting: images per "
              "CPU-second above one core's decode rate (about 400) mark such a row, which says "
              "nothing about steady reading.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--latency_ms", default="0,30")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data_dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--upload_from", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
    else:
        print(json.dumps(run(args.batches, [float(x) for x in args.latency_ms.split(",")]),
                         indent=1))


if __name__ == "__main__":
    main()
