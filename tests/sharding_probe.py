"""Run by tests/test_sharding.py in a process with 8 simulated CPU devices; prints one JSON line.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_probe.py cifar

For one small network and each computation mode: the compiled train step on 1 and on 8 devices
(per-device FLOPs, collectives, the BatchNorm and parameter sizes that bound them), and the losses
and parameters after a few steps on the same global batches on 1 and 8 devices.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, run from anywhere

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import scaling  # noqa: E402
from igc_jax import configs  # noqa: E402
from igc_jax.igc import native  # noqa: E402
from igc_jax.igc.select import ModeContext  # noqa: E402
from igc_jax.training import sharding, steps  # noqa: E402

# name -> (config, model overrides, image size, modes): small versions of issue 15's networks.
NETS = {
    "cifar": ("experiments/cifar10_igc.py:L4M2,D8", {}, 16,
              ("grouped", "native", "split", "taps", "composed")),
    "ident": ("experiments/cifar10_igc.py:L4M2,D8,ident", {}, 16, ("grouped", "native", "split")),
    # IGC-L16M16+Ident.'s layout (ResNet-18, IGC in every 3×3) at 1/16 of its widths, L = 4.
    "imagenet": ("experiments/imagenet_l16m16.py",
                 dict(stem_width=16, widths=(16, 32, 64, 128), L=(4, 4, 4, 4)), 32,
                 ("grouped", "split")),
}
BATCH = 32
STEPS = 2


def config_for(net: str, mode: str, batch: int = BATCH):
    path, overrides, size, _ = NETS[net]
    config = configs.load_config(path)
    config.model.update(overrides)
    config.dataset.update(image_size=size, num_classes=10)
    config.update(conv_mode=mode, batch_size=batch, dtype="float32")
    return config


def run(net: str, mode: str, devices: int, batches) -> dict:
    """Compile the step for `devices` and train it on `batches` (None: compile only)."""
    config = config_for(net, mode, batches[0]["label"].shape[0])
    mesh = sharding.make_mesh(jax.devices()[:devices])
    context = ModeContext("cpu", native=native.available())
    size = config.dataset.image_size
    model = steps.make_model(config, steps.plan_modes(config, (size, size, 3), context,
                                                      can_measure=False).plan)
    schedule = steps.learning_rate_schedule(config, 100, 1000)
    tx = steps.make_optimizer(config, schedule)
    state, shardings = steps.init_state(model, tx, (size, size, 3), 0, mesh)
    train, _, _ = steps.compile_steps(model, tx, schedule, shardings, mesh)
    compiled = train.lower(state, batches[0]).compile()
    costs = {"cost": scaling.cost(compiled),
             "collectives": scaling.collectives(compiled.as_text())}
    if not isinstance(batches, list):  # shapes only
        return costs
    losses = []
    for b in batches:
        state, metrics = train(state, jax.device_put(b, sharding.batch_sharding(mesh)))
        losses.append(float(metrics["loss"]))
    stats = jax.tree.leaves(state.batch_stats)
    return {**costs, "losses": losses, "params": [np.asarray(x).tolist() for x in
                                         jax.tree.leaves(jax.device_get(state.params))],
            "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "num_bn": len(stats) // 2, "bn_channels": int(sum(x.size for x in stats)) // 2}


def main(net: str) -> None:
    _, _, size, modes = NETS[net]
    rng = np.random.default_rng(0)
    batches = [{"image": rng.standard_normal((BATCH, size, size, 3)).astype(np.float32),
                "label": rng.integers(0, 10, BATCH).astype(np.int32)} for _ in range(STEPS)]
    out = {}
    for mode in modes:
        if mode == "native" and not native.available():
            out[mode] = {"skipped": native.build_error()}
            continue
        out[mode] = {str(n): run(net, mode, n, batches) for n in (1, 8)}
        # The 1-device step on one device's share of the batch: what each of 8 devices must do.
        shard = {k: jax.ShapeDtypeStruct((BATCH // 8, *v.shape[1:]), v.dtype)
                 for k, v in batches[0].items()}
        out[mode]["1/8"] = run(net, mode, 1, (shard,))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
