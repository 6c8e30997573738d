"""Data parallelism that really shards every IGC layer (issue 15), checked on 8 simulated devices.

For a plain CIFAR IGC net, a +Ident. net and an ImageNet IGC net (small sizes), in every mode
`auto` can pick on some backend (tests/sharding_probe.py runs them in an 8-device process):
- the compiled 8-device train step has no all-gather, all-to-all, collective-permute or
  reduce-scatter; its all-reduces (gradients, BatchNorm moments and gradient sums, metrics) are
  bounded in count and bytes by the parameter and BatchNorm sizes, far below one activation;
- its per-device FLOPs are at most those of the 1-device step on one device's share of the batch
  (+2%): 1/8 of the 1-device step's plus 7/8 of its batch-independent work (the optimizer update,
  composing kernels), which must be under half of the 1-device step;
- 1 and 8 devices give the same losses and parameters after a few steps.
And the accelerator path lowers for TPU and CUDA from this CPU.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import scaling
from igc_jax.igc.select import ModeContext
from igc_jax.training import sharding
from run_utils import ROOT, env_with_devices

ACTIVATION_FREE = ("all-gather", "all-to-all", "collective-permute", "reduce-scatter")


@pytest.mark.parametrize("net", ["cifar", "ident", "imagenet"])
def test_every_mode_runs_per_device(net):
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "sharding_probe.py"), net],
                       env=env_with_devices(8), cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for mode, by_devices in results.items():
        if "skipped" in by_devices:
            continue
        one, eight, share = by_devices["1"], by_devices["8"], by_devices["1/8"]
        c = eight["collectives"]
        assert all(c[op]["count"] == 0 for op in ACTIVATION_FREE), (mode, c)
        # One gradient all-reduce, one for the train metrics, and per BatchNorm one of its two
        # moments (forward) and one of its gradient sums (backward); XLA may combine some.
        assert 1 <= c["all-reduce"]["count"] <= 2 * eight["num_bn"] + 2, (mode, c)
        bound = 4 * (eight["num_params"] + 2 * 2 * eight["bn_channels"] + 2 * eight["bn_channels"])
        assert c["all-reduce"]["bytes"] <= bound + 64, (mode, c, bound)
        flops_1, flops_8, flops_share = (r["cost"]["flops"] for r in (one, eight, share))
        assert flops_8 <= 1.02 * flops_share, (mode, flops_1, flops_8, flops_share)
        fixed = (8 * flops_share - flops_1) / 7  # the batch-independent FLOPs of the step
        assert fixed < 0.5 * flops_1, (mode, fixed, flops_1)  # most of the work is the batch's
        np.testing.assert_allclose(eight["losses"], one["losses"], rtol=2e-5, err_msg=mode)
        for a, b in zip(eight["params"], one["params"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6, err_msg=mode)


def _train_step(config_path: str, mode: str, context: ModeContext, size: int, batch: int,
                **overrides):
    config = scaling.configs.load_config(config_path)
    config.model.update(overrides)
    config.dataset.image_size = size
    config.update(conv_mode=mode, batch_size=batch)
    return scaling.traced_step(config, sharding.make_mesh(), context=context), config


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("path, size", [("experiments/imagenet_l16m16.py", 64),
                                        ("experiments/cifar10_igc.py:L24M2,D20", 32)])
def test_train_step_lowers_for_accelerators(path, size, platform):
    """`auto` in that platform's context (grouped convolutions, per device) lowers for it; the
    ImageNet config computes in bfloat16."""
    context = ModeContext("tpu" if platform == "tpu" else "gpu")
    traced, config = _train_step(path, "auto", context, size, 16)
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    L = config.model.L[0] if "imagenet" in path else config.model.L
    assert f"feature_group_count = {L}" in text  # the primary convs stay grouped
    if "imagenet" in path:
        assert config.dtype == "bfloat16" and "bf16" in text
