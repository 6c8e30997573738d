"""Estimate: what a v5e-8 host's CPUs would feed against what its chips need, IGC-L16M16+Ident.

    python -m benchmarks.input_pipeline_feed

An estimate from two measurements, labelled as one:
  need   the train step's FLOPs and HBM bytes per chip from the real TPU compiler
         (`python -m igc_jax.compile --config=experiments/imagenet_l16m16.py
         --topology=v5litepod-8 --json=COMPILE`, COMPILE below, in benchmarks/results/),
         per image at the config's batch, at stated MXU-utilisation assumptions (v5e: 197 bf16
         TFLOP/s and 819 GB/s of HBM per chip, Google's published figures)
  feed   the ImageNet recipe's images per CPU-second on this machine
         (benchmarks/results/input_pipeline_imagenet.json, imagenet_mxnet), times the host's
         vCPUs: 224 on a v5litepod-8 host, of which dataset.num_workers=auto uses
         pipeline.MAX_AUTO_WORKERS, or all but one
Writes benchmarks/results/input_pipeline_feed.{json,md}.
"""
from __future__ import annotations

import json
from pathlib import Path

from igc_jax.data import pipeline

RESULTS = Path(__file__).resolve().parent / "results"
COMPILE = RESULTS / "compile_imagenet_l16m16_v5litepod-8.json"
V5E_BF16_FLOPS = 197e12
V5E_HBM_BYTES_PER_S = 819e9
HOST_VCPUS = 224
MXU_UTILISATION = (0.1, 0.25, 0.5)


def run() -> dict:
    step = json.loads(COMPILE.read_text())
    per_chip = step["batch_size"] // step["chips"]
    flops_per_image = step["train"]["flops"] / per_chip
    bytes_per_image = step["train"]["bytes_accessed"] / per_chip
    chips = step["chips"]
    need = {f"{u:.0%} MXU": round(chips * u * V5E_BF16_FLOPS / flops_per_image)
            for u in MXU_UTILISATION}
    hbm_bound = round(chips * V5E_HBM_BYTES_PER_S / bytes_per_image)
    bench = json.loads((RESULTS / "input_pipeline_imagenet.json").read_text())
    train = bench["per_core"]["train"]
    per_cpu = {name: train[name]["images_per_cpu_s"]
               for name in ("imagenet_mxnet", "mxnet previous", "tf.data") if name in train}
    workers = {"auto": min(HOST_VCPUS - 1, pipeline.MAX_AUTO_WORKERS),
               "all but one": HOST_VCPUS - 1}
    feed = {name: {k: round(rate * w) for k, w in workers.items()}
            for name, rate in per_cpu.items()}
    result = {"estimate": True, "network": step["network"], "topology": step["topology"],
              "chips": chips, "batch_size": step["batch_size"],
              "train_flops_per_image": flops_per_image, "train_hbm_bytes_per_image":
              bytes_per_image, "need_images_per_s": need,
              "hbm_bound_images_per_s": hbm_bound, "per_cpu_second": per_cpu,
              "host_vcpus": HOST_VCPUS, "workers": workers, "feed_images_per_s": feed,
              "compile": str(COMPILE.relative_to(RESULTS.parent.parent)),
              "load_average_of_the_rate": bench["environment"]["load_average"]}
    (RESULTS / "input_pipeline_feed.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "input_pipeline_feed.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = [
        f"# Estimate: a {r['topology']} host's input pipeline against its chips, "
        f"{r['network']}", "",
        "**An estimate**, not a measurement on a TPU VM. Need: the compiled train step "
        f"({r['compile']}: {r['train_flops_per_image'] / 1e9:.2f} GFLOP and "
        f"{r['train_hbm_bytes_per_image'] / 1e9:.2f} GB of HBM traffic per image at global batch "
        f"{r['batch_size']} on {r['chips']} chips) at an assumed MXU utilisation, v5e's "
        "197 bf16 TFLOP/s per chip. Feed: images per CPU-second of the ImageNet recipe measured "
        "on this machine's vCPUs (benchmarks/results/input_pipeline_imagenet.json, load average "
        f"{r['load_average_of_the_rate']}) times the host's worker processes, assuming a TPU "
        "host's vCPU does what one of these does and that workers scale linearly with free "
        "vCPUs (an assumption: this 2-core machine cannot show it; images per CPU-second stay "
        "about flat from 1 to 2 workers in input_pipeline_imagenet.md). The tf.data row is its "
        "Inception recipe, not the MXNet one.", "",
        "| chips' need (images/s) | |", "| --- | ---: |"]
    for k, v in r["need_images_per_s"].items():
        lines.append(f"| FLOPs at {k} | {v:,} |")
    lines.append(f"| HBM traffic at 819 GB/s per chip (a bound: the step cannot be faster) | "
                 f"{r['hbm_bound_images_per_s']:,} |")
    lines += ["", f"| host feed ({r['host_vcpus']} vCPUs) | images per CPU-second | "
              + " | ".join(f"{k} ({w} workers)" for k, w in r["workers"].items()) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in r["workers"]) + " |"]
    for name, rate in r["per_cpu_second"].items():
        lines.append(f"| {name} | {rate} | "
                     + " | ".join(f"{v:,}" for v in r["feed_images_per_s"][name].values()) + " |")
    lines += ["", "The step's HBM traffic, not its FLOPs, bounds this network (grouped "
              "convolutions do few FLOPs per byte), so the chips need at most the HBM bound; "
              "the FLOP rows show what MXU-bound networks of the same FLOPs would need.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
