"""Which IGC computation mode the TPU compiler's cost model prefers for the paper's layer shapes:
an ESTIMATE, not a measurement (no TPU ran anything); a run on a TPU (`conv_mode=auto`, which
times the modes there, igc_jax.igc.autotune) replaces it.

For every distinct IGC layer shape of CIFAR IGC-L24M2 D=20 (per-chip batch 8: batch 64 on
v5litepod-8, float32) and of ImageNet IGC-L16M16, L4M32 and L100M2 +Ident. (per-chip batch 32:
batch 256 on v5litepod-8, bfloat16), each candidate mode the tuner would time on a TPU, except
`split` (one convolution per group: compiling its forward + backward took 317 s for one
IGC-L24M2 layer here), is compiled for one TPU v5 lite chip (libtpu's compile-only devices) as
three programs: the forward pass, the input gradient and the kernels' gradients (a program
returning several of them gets no estimate). `cost_analysis()["optimal_seconds"]` of each is the
estimate. The cost model gives no estimate
(it returns about -1) for the weight gradient of a grouped convolution; those cells say n/a and
the mode's total is then unknown.

    pip install -e ".[tpu]"
    python -m benchmarks.tpu_layer_modes     # writes benchmarks/results/tpu_layer_modes.{json,md}
"""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from igc_jax import configs  # noqa: E402
from igc_jax.igc import autotune, modes  # noqa: E402
from igc_jax.igc.layers import layer_shapes  # noqa: E402
from igc_jax.igc.select import LayerShape, ModeContext, ModePlan  # noqa: E402
from igc_jax.training import aot, slices, steps  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SLICE = "v5litepod-8"
NETWORKS = {"IGC-L24M2 D=20 (CIFAR)": ("experiments/cifar10_igc.py:L24M2,D20", (32, 32, 3)),
            "IGC-L16M16+Ident.": ("experiments/imagenet_l16m16.py", (224, 224, 3)),
            "IGC-L4M32+Ident.": ("experiments/imagenet_l4m32.py", (224, 224, 3)),
            "IGC-L100M2+Ident.": ("experiments/imagenet_l100m2.py", (224, 224, 3))}
TPU = ModeContext("tpu")


def estimate(mode: str, shape: LayerShape, batch: int, dtype: str, device) -> dict:
    """The cost model's milliseconds for the forward pass, the input gradient and the kernels'
    gradients, each compiled alone (a program returning the output and a gradient together
    gets no estimate)."""
    fn = modes.MODES[mode]
    kh, kw = shape.kernel
    h, w = shape.size
    pad = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    sharding = jax.sharding.SingleDeviceSharding(device)
    dt = jnp.dtype(dtype)

    def sds(s):
        return jax.ShapeDtypeStruct(s, dt, sharding=sharding)

    x = sds((batch, h, w, shape.C_in))
    p = sds((kh, kw, shape.C_in // shape.L, shape.C))
    s = sds((1, 1, shape.C // shape.M, shape.C))
    dy = sds((batch, -(-h // shape.strides[0]), -(-w // shape.strides[1]), shape.C))

    def layer(x, p, s):
        return fn(x, p, s, L=shape.L, M=shape.M, strides=shape.strides, padding=pad)

    programs = {
        "forward": jax.jit(layer).trace(x, p, s),
        "input_grad": jax.jit(
            lambda x, p, s, dy: jax.vjp(lambda x: layer(x, p, s), x)[1](dy)).trace(x, p, s, dy),
        "kernel_grads": jax.jit(
            lambda x, p, s, dy: jax.vjp(lambda p, s: layer(x, p, s), p, s)[1](dy)).trace(
                x, p, s, dy)}
    out = {}
    for name, traced in programs.items():
        t = time.perf_counter()
        cost = traced.lower().compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        seconds = cost.get("optimal_seconds")
        out[name] = {"ms": 1e3 * seconds if seconds is not None and seconds >= 0 else None,
                     "flops": cost.get("flops"), "compile_s": time.perf_counter() - t}
    parts = [v["ms"] for v in out.values()]
    out["total_ms"] = None if None in parts else sum(parts)
    return out


def network_shapes(path: str, image_shape) -> tuple[list[LayerShape], int, str]:
    config = configs.load_config(path)
    shapes = layer_shapes(steps.make_model(config, ModePlan("grouped")), image_shape)
    chips = slices.parse_slice(SLICE).chips
    return list(dict.fromkeys(shapes.values())), config.batch_size // chips, config.dtype


def markdown(doc: dict) -> str:
    lines = [f"# TPU cost-model estimates of the IGC modes ({doc['date']})", "",
             "**An estimate, not a measurement**: libtpu's cost model (`cost_analysis()` "
             f"`optimal_seconds`) for one {doc['device_kind']} chip, compiled here with no TPU "
             f"(jax {doc['jax']}, libtpu {doc['libtpu']}). `python -m benchmarks.tpu_layer_modes`"
             ". Per layer shape: milliseconds of the forward pass / the input gradient / the "
             "kernels' gradients; n/a where the cost model gives no estimate (a grouped "
             "convolution's weight gradient). \"preferred\": the smallest total among the modes "
             "with all three; \"fwd+dx preferred\": the smallest forward + input gradient. On a "
             "TPU, "
             "`conv_mode=auto` measures instead (igc_jax.igc.autotune).", ""]
    for net in doc["networks"]:
        lines += [f"## {net['network']}", "",
                  f"`{net['config']}`, {net['batch_per_chip']} per chip, {net['dtype']}.", "",
                  "| layer shape | input | " + " | ".join(
                      f"{m} ms (fwd / dx / dW)" for m in net["modes"]) +
                  " | preferred | fwd+dx preferred |",
                  "|---|---|" + "---|" * len(net["modes"]) + "---|---|"]
        for r in net["layers"]:
            cells = []
            for m in net["modes"]:
                e = r["estimates"].get(m)
                if e is None:
                    cells.append("—")
                    continue
                cells.append(" / ".join(_ms(e[k]["ms"]) for k in
                                        ("forward", "input_grad", "kernel_grads")))
            lines.append(f"| {r['shape']} | {r['input']} | " + " | ".join(cells) +
                         f" | {r['preferred'] or 'n/a'} | {r['preferred_fwd_dx'] or 'n/a'} |")
        lines.append("")
    return "\n".join(lines)


def _ms(v):
    return "n/a" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "tpu_layer_modes")
    parser.add_argument("--only", default="", help="networks whose name contains this")
    args = parser.parse_args(argv)
    aot.check_libtpu()
    device = aot.tpu_devices(slices.parse_slice(SLICE))[0]
    path = args.out.with_suffix(".json")
    doc = json.loads(path.read_text()) if path.exists() else {"networks": []}
    doc.update(date=datetime.date.today().isoformat(), jax=jax.__version__,
               libtpu=importlib.metadata.version("libtpu"), device_kind=device.device_kind)
    for name, (config, image_shape) in NETWORKS.items():
        if args.only not in name:
            continue
        shapes, batch, dtype = network_shapes(config, image_shape)
        net = next((n for n in doc["networks"] if n["network"] == name), None)
        if net is None:
            net = {"network": name, "config": config, "batch_per_chip": batch, "dtype": dtype,
                   "modes": [], "layers": []}
            doc["networks"].append(net)
        done = {r["shape"] for r in net["layers"]}
        for shape in shapes:
            if shape.describe() in done:
                continue
            names = [m for m in autotune.candidates(shape, TPU) if m != "split"]
            net["modes"] = list(dict.fromkeys([*net["modes"], *names]))
            est = {m: estimate(m, shape, batch, dtype, device) for m in names}
            totals = {m: e["total_ms"] for m, e in est.items() if e["total_ms"] is not None}
            fwd = {m: e["forward"]["ms"] + e["input_grad"]["ms"] for m, e in est.items()
                   if e["forward"]["ms"] is not None and e["input_grad"]["ms"] is not None}
            net["layers"].append({"shape": shape.describe(),
                                  "input": f"{shape.size[0]}×{shape.size[1]}",
                                  "estimates": est,
                                  "preferred": min(totals, key=totals.get) if totals else None,
                                  "preferred_fwd_dx": min(fwd, key=fwd.get) if fwd else None})
            print(f"{name}: {shape.describe()}: {net['layers'][-1]['preferred']} "
                  f"(fwd+dx: {net['layers'][-1]['preferred_fwd_dx']})", flush=True)
            path.write_text(json.dumps(doc, indent=1) + "\n")  # resumable: saved per shape
            args.out.with_suffix(".md").write_text(markdown(doc))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
