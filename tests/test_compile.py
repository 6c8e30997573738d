"""`python -m igc_jax.compile`: TPU slices by their gcloud names, the largest-batch search, the
one-line refusals, and (with libtpu, the `tpu` extra) real compiles for TPU slices on this CPU.

The compiles run in CI's Python 3.12 venv, which installs `.[dev,tpu]`; where libtpu is absent
they skip with that reason. `benchmarks/tpu_compile.py` compiles every experiment config for its
slices; CI compiles the representative subset `CI_CONFIGS` below.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from igc_jax import configs
from igc_jax.errors import UserError
from igc_jax.training import aot
from igc_jax.training.slices import GIB, parse_slice
from run_utils import ROOT

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (extra: tpu)")

# Cloud TPU's published slices: (accelerator type, JAX topology, chips, hosts, HBM GiB per chip).
PUBLISHED = [("v4-8", "v4:2x2x1", 4, 1, 32), ("v4-32", "v4:2x2x4", 16, 4, 32),
             ("v5litepod-8", "v5e:2x4", 8, 1, 16), ("v5e-8", "v5e:2x4", 8, 1, 16),
             ("v5litepod-4", "v5e:2x2", 4, 1, 16), ("v5litepod-16", "v5e:4x4", 16, 4, 16),
             ("v5litepod-256", "v5e:16x16", 256, 64, 16), ("v5p-8", "v5:2x2x1", 4, 1, 95),
             ("v5p-128", "v5:4x4x4", 64, 16, 95), ("v6e-8", "v6e:2x4", 8, 1, 32),
             ("v6e-256", "v6e:16x16", 256, 64, 32)]


@pytest.mark.parametrize("name, topology, chips, hosts, hbm", PUBLISHED)
def test_slices_map_to_jax_topologies(name, topology, chips, hosts, hbm):
    s = parse_slice(name)
    assert (s.topology_name, s.chips, s.hosts, s.hbm_bytes) == (topology, chips, hosts,
                                                                hbm * GIB)


@pytest.mark.parametrize("name", ["v5litepod-7", "v4-4", "v3-8", "tpu-8", "v5e", "h100-8"])
def test_unknown_slices_are_one_user_error(name):
    with pytest.raises(UserError, match="topology"):
        parse_slice(name)


def _linear(base: float, per_example: float, oom_above: float = float("inf")):
    """A fake compile: the step's bytes per chip grow linearly with the per-device batch (as
    activations do); the compiler refuses outright beyond `oom_above` bytes."""
    def measure(global_batch: int) -> aot.StepReport:
        total = int(base + per_example * global_batch / 8)
        if total > oom_above:
            return aot.oom_report(f"Ran out of memory in memory space hbm. Used "
                                  f"{total / GIB:.2f}G of 16.00G hbm.", 0.0)
        return aot.StepReport(memory={"total": total}, flops=0.0, bytes_accessed=0.0,
                              collectives={}, compile_s=0.0)
    return measure


@pytest.mark.parametrize("base, per_example, start", [(0.5e9, 0.04e9, 32), (2e9, 0.3e9, 4),
                                                     (0.1e9, 1e6, 16), (1e9, 0.2e9, 200)])
def test_largest_batch_is_the_exact_boundary(base, per_example, start):
    capacity = 16 * GIB
    search = aot.largest_batch(_linear(base, per_example, oom_above=capacity * 1.2), 8, capacity,
                               start=start, max_compiles=12)
    exact = int((capacity - base) // per_example)  # per device, from the formula itself
    assert search.largest == 8 * exact
    assert search.smallest_not_fitting == 8 * (exact + 1)
    assert search.compiles <= 6  # the secant lands next to the boundary, not a blind bisection


def test_largest_batch_when_nothing_fits():
    search = aot.largest_batch(_linear(20 * GIB, 1e6), 8, 16 * GIB, start=32)
    assert search.largest is None and search.smallest_not_fitting == 8


def test_collectives_are_counted_with_their_bytes():
    hlo = ("  %a = f32[1024]{0} all-reduce(f32[1024]{0} %x), replica_groups={}\n"
           "  %b = (bf16[8,16]{1,0}, f32[4]{0}) all-reduce-start(%y, %z)\n"
           "  %c = f32[64,32]{1,0} all-gather(f32[8,32]{1,0} %w), dimensions={0}\n")
    c = aot.collectives(hlo)
    assert c["all-reduce"] == {"count": 2, "bytes": 4096 + 256 + 16}
    assert c["all-gather"] == {"count": 1, "bytes": 8192}


def _compile_cli(*flags: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "igc_jax.compile", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("overrides, topology, message", [
    ({}, "v5litepod-7", "v5e slices come in sizes"),
    ({}, "gpu-8", "is not a TPU accelerator type"),
    ({"batch_size": 60}, "v5litepod-8", "batch_size=60 is not divisible by the slice's 8 chips"),
    ({"eval_batch_size": 100}, "v4-32", "eval_batch_size=100 is not divisible by the slice's 16 "
                                        "chips"),
    ({"conv_mode": "native"}, "v4-8", "cannot compile for TPU"),
    ({"learning_rate": -1.0}, "v4-8", "learning_rate"),
])
def test_bad_input_is_refused_before_compiling(overrides, topology, message):
    config = configs.load_config("experiments/quickstart.py")
    config.update(overrides)
    with pytest.raises(UserError, match=re.escape(message)):
        aot.plan(config, topology)


def test_bad_input_is_one_line_and_exit_2():
    r = _compile_cli("--config=experiments/quickstart.py", "--topology=v5litepod-8",
                     "--config.batch_size=60", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        "error: batch_size=60 is not divisible by the slice's 8 chips; pass "
        "--config.batch_size=<a multiple of 8>"]


# The representative subset CI compiles (the whole matrix: benchmarks/tpu_compile.py): the
# flagship ImageNet IGC net on a single-host and a multi-host slice, and the paper's CIFAR net.
CI_CONFIGS = [("experiments/imagenet_l16m16.py", "v5litepod-8"),
              ("experiments/imagenet_l16m16.py", "v4-32"),
              ("experiments/cifar10_igc.py:L24M2,D20", "v4-8")]


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("config, topology", CI_CONFIGS)
def test_experiment_compiles_and_fits_the_slice(config, topology, tmp_path):
    out = tmp_path / "report.json"
    r = _compile_cli(f"--config={config}", f"--topology={topology}", f"--json={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    slc = parse_slice(topology)
    assert report["chips"] == slc.chips and report["hosts"] == slc.hosts
    assert report["fits"] and report["need_per_chip_bytes"] <= slc.hbm_bytes
    assert f"fits: needs {report['need_per_chip_bytes'] / 1e9:.2f} GB" in r.stdout
    for step in ("train", "eval"):
        m, c = report[step]["memory_bytes"], report[step]["collectives"]
        assert m["total"] == (m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
                              + m["code"])
        assert all(c[op]["count"] == 0 for op in aot.ACTIVATION_COLLECTIVES), (step, c)
        assert c["all-reduce"]["count"] >= 1  # the metrics' sum at least
    # Every IGC layer computes per device; the trainer's state (parameters, momentum and
    # BatchNorm statistics) is replicated, so every chip holds all of it as an argument.
    assert report["train"]["memory_bytes"]["arguments"] >= 2 * 4 * report["num_params"]
