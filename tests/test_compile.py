"""`python -m igc_jax.compile`: TPU slices by their gcloud names, GPU targets (`h100-8`, ...), the
largest-batch search, the one-line refusals, and real compiles on this CPU: for TPU slices with
libtpu (the `tpu` extra), for an H100 host with JAX's CUDA plugin (the `gpu-compile` extra).

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
from igc_jax.training.gpu_targets import GpuTarget
from igc_jax.training.slices import GIB, parse_slice
from igc_jax.training.targets import parse_target
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


# The two forms of XLA:TPU's out-of-memory compile error (older and current libtpu).
OOM_MESSAGES = ("Ran out of memory in memory space hbm. Used {need:.2f}G of {have:.2f}G hbm.",
                "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the "
                "total memory required for HLO temporaries ({need:.2f}G) exceeds available HBM "
                "({have:.2f}G). HLO module: jit_train.")


def _linear(base: float, per_example: float, oom_above: float = float("inf"),
            message: str = OOM_MESSAGES[0]):
    """A fake compile: the step's bytes per chip grow linearly with the per-device batch (as
    activations do); the compiler refuses outright beyond `oom_above` bytes."""
    def measure(global_batch: int) -> aot.StepReport:
        total = int(base + per_example * global_batch / 8)
        if total > oom_above:
            return aot.oom_report(message.format(need=total / GIB, have=oom_above / GIB), 0.0)
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


@pytest.mark.parametrize("message", OOM_MESSAGES)
def test_largest_batch_uses_the_compilers_own_budget(message):
    """The compiler refuses above 15.75 GiB (its budget, under the chip's 16): the search ends at
    the batch that fits that budget, whichever form its error takes."""
    budget = 15.75 * GIB
    search = aot.largest_batch(_linear(4e9, 5e6, oom_above=budget, message=message), 8,
                               16 * GIB, start=32, max_compiles=8)
    exact = int((budget - 4e9) // 5e6)
    assert abs(search.largest // 8 - exact) <= 1 and search.smallest_not_fitting // 8 <= exact + 2


def test_a_resumed_search_ends_where_an_uncapped_one_does_without_repeating_compiles():
    capacity, measured = 16 * GIB, []
    fake = _linear(1e9, 0.2e9, oom_above=capacity * 1.2)

    def measure(global_batch):
        measured.append(global_batch)
        return fake(global_batch)

    whole = aot.largest_batch(fake, 8, capacity, start=16, max_compiles=12)
    first = aot.largest_batch(measure, 8, capacity, start=16, max_compiles=2)
    assert first.smallest_not_fitting is None  # cut off before the bracket
    measured.clear()
    rest = aot.largest_batch(measure, 8, capacity, start=16, max_compiles=12,
                             prior=first.per_batch_bytes)
    assert (rest.largest, rest.smallest_not_fitting) == (whole.largest, whole.smallest_not_fitting)
    assert not set(measured) & set(first.per_batch_bytes) and rest.compiles == len(measured)


def test_a_tolerance_stops_at_a_bracket_that_narrow():
    capacity = 16 * GIB
    search = aot.largest_batch(_linear(1e9, 0.01e9, oom_above=capacity * 1.2), 8, capacity,
                               start=16, max_compiles=12, tolerance=0.02)
    exact = int((capacity - 1e9) // 0.01e9)
    lo, hi = search.largest // 8, search.smallest_not_fitting // 8
    assert lo <= exact < hi and hi - lo <= 0.02 * lo


def test_a_search_gallops_where_the_compiler_flattens_its_totals():
    """Near its budget the compiler rematerialises and the totals stop growing (as IGC-L4M32 on
    v5litepod-8: 16.1 to 16.8 GB from batch 4336 to 5520); the search gallops to a batch that
    does not fit and brackets the boundary instead of creeping up on it 3 % at a time."""
    capacity = 16 * GIB

    def measure(global_batch):
        b = global_batch // 8
        if b > 900:
            return aot.oom_report(OOM_MESSAGES[0].format(need=20.0, have=15.75), 0.0)
        total = min(0.5e9 + 0.04e9 * b, 0.98 * 15.75 * GIB)  # flat below the budget
        return aot.StepReport(memory={"total": int(total)}, flops=0.0, bytes_accessed=0.0,
                              collectives={}, compile_s=0.0)

    search = aot.largest_batch(measure, 8, capacity, start=32, max_compiles=14, tolerance=0.02)
    lo, hi = search.largest // 8, search.smallest_not_fitting // 8
    assert lo <= 900 < hi and hi - lo <= 0.02 * lo


def test_oom_messages_are_read():
    for message in OOM_MESSAGES:
        r = aot.oom_report(message.format(need=48.0, have=15.75), 1.0)
        assert r.memory == {"total": 48 * GIB, "available": int(15.75 * GIB)} and r.oom


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
    ({"batch_size": 60}, "v5litepod-8", "batch_size=60 is not divisible by the 8 chips of "
                                          "v5litepod-8"),
    ({"eval_batch_size": 100}, "v4-32", "eval_batch_size=100 is not divisible by the 16 "
                                        "chips"),
    ({"conv_mode": "native"}, "v4-8", "cannot compile for TPU"),
    ({"conv_mode": "autotune"}, "v4-8", "compile-only devices run nothing"),
    ({"learning_rate": -1.0}, "v4-8", "learning_rate"),
])
def test_bad_input_is_refused_before_compiling(overrides, topology, message):
    config = configs.load_config("experiments/quickstart.py")
    config.update(overrides)
    with pytest.raises(UserError, match=re.escape(message)):
        aot.plan(config, topology)


@pytest.mark.parametrize("saved, message", [
    ({"network": "IGC-L24M2 (D=20)", "topology": "v5litepod-8", "dtype": "float32",
      "max_batch": {"total_bytes_by_batch": {"64": 1}}}, "is a search of IGC-L24M2 (D=20)"),
    ({"network": "IGC-L4M4 (D=8)", "topology": "v5litepod-8"}, "not a --max_batch --json"),
])
def test_a_resumed_search_must_be_of_the_same_program(saved, message, tmp_path):
    from igc_jax.compile import prior_search
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(saved))
    config = configs.load_config("experiments/quickstart.py")
    with pytest.raises(UserError, match=re.escape(message)):
        prior_search(str(path), config, "v5litepod-8")

    path.write_text(json.dumps({**saved, "network": "IGC-L4M4 (D=8)", "dtype": "float32",
                                "max_batch": {"total_bytes_by_batch": {"64": 5, "128": 9},
                                              "budget_bytes": 7}}))
    assert prior_search(str(path), config, "v5litepod-8") == ({64: 5, 128: 9}, 7, None)
    steps = {"train": {"memory_bytes": {"total": 5}}, "eval": {"memory_bytes": {"total": 2}}}
    saved_steps = {**json.loads(path.read_text()), **steps, "batch_size": config.batch_size,
                   "eval_batch_size": config.eval_batch_size, "conv_mode": config.conv_mode}
    path.write_text(json.dumps(saved_steps))
    assert prior_search(str(path), config, "v5litepod-8")[2] == steps  # not compiled again
    path.write_text(json.dumps({**saved_steps, "batch_size": 2 * config.batch_size}))
    assert prior_search(str(path), config, "v5litepod-8")[2] is None  # another program


def test_bad_input_is_one_line_and_exit_2():
    r = _compile_cli("--config=experiments/quickstart.py", "--topology=v5litepod-8",
                     "--config.batch_size=60", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        "error: batch_size=60 is not divisible by the 8 chips of v5litepod-8; pass "
        "--config.batch_size=<a multiple of 8>"]


# The representative subset CI compiles (the whole matrix: benchmarks/tpu_compile.py): the
# flagship ImageNet IGC net on a single-host and a multi-host slice, the paper's CIFAR net, and
# IGCV3 (its depthwise convs in XLA's grouped convs on TPU, the CPU-only native kernel never).
CI_CONFIGS = [("experiments/imagenet_l16m16.py", "v5litepod-8"),
              ("experiments/imagenet_l16m16.py", "v4-32"),
              ("experiments/cifar10_igc.py:L24M2,D20", "v4-8"),
              ("experiments/cifar10_igcv3.py:0.25", "v5litepod-8")]


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
    if "igcv3" in config:
        assert report["conv_modes"] == {"grouped": 32}


# GPU targets: hosts of 8 NVIDIA GPUs, compiled for by JAX's CUDA plugin (extra: gpu-compile).
HAS_CUDA_PLUGIN = importlib.util.find_spec("jax_plugins") is not None and \
    importlib.util.find_spec("jax_plugins.xla_cuda13") is not None
needs_cuda_plugin = pytest.mark.skipif(
    not HAS_CUDA_PLUGIN, reason="JAX's CUDA plugin not installed (extra: gpu-compile)")
# The vendored specs' device_memory_size (XLA's H100 SXM and A100 SXM4 80GB).
H100_BYTES, A100_BYTES = 84942979072, 85100068864


@pytest.mark.parametrize("name, topology, gpus, hosts, memory", [
    ("h100-8", "1x1x8", 8, 1, H100_BYTES), ("h100-16", "1x2x8", 16, 2, H100_BYTES),
    ("h100-1", "1x1x1", 1, 1, H100_BYTES), ("h100-4", "1x1x4", 4, 1, H100_BYTES),
    ("a100-8", "1x1x8", 8, 1, A100_BYTES), ("A100-32", "1x4x8", 32, 4, A100_BYTES)])
def test_gpu_targets_map_to_cuda_topologies(name, topology, gpus, hosts, memory):
    t = parse_target(name)
    assert isinstance(t, GpuTarget) and t.platform == "gpu"
    assert (t.topology_name, t.chips, t.hosts, t.hbm_bytes) == (topology, gpus, hosts, memory)
    assert f"{gpus} GPU" in t.describe() and "79 GiB HBM per GPU" in t.describe()
    assert "gpu_device_info {" in t.model.target_config


@pytest.mark.parametrize("name", [p[0] for p in PUBLISHED])
def test_tpu_names_still_give_the_same_slices(name):
    assert parse_target(name) == parse_slice(name)


@pytest.mark.parametrize("name, message", [
    ("h100-12", "is not a GPU target; give h100-N, a100-N (N GPUs: 1 to 8 on one host, or a "
                "multiple of 8: 16, 32, ...)"),
    ("h100-0", "is not a GPU target"), ("a100-x", "is not a GPU target"),
    ("b200-8", "is not a TPU accelerator type or a GPU target; give v4-N"),
    ("gpu-8", "or h100-N, a100-N"), ("v5litepod-7", "v5e slices come in sizes")])
def test_bad_target_names_are_one_user_error(name, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        parse_target(name)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 60}, "batch_size=60 is not divisible by the 16 GPUs of h100-16; pass "
                         "--config.batch_size=<a multiple of 16>"),
    ({"conv_mode": "native"}, "cannot compile for GPU")])
def test_bad_gpu_input_is_refused_before_compiling(overrides, message):
    config = configs.load_config("experiments/quickstart.py")
    config.update(overrides)
    with pytest.raises(UserError, match=re.escape(message)):
        aot.plan(config, "h100-16")


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="JAX's CUDA plugin is installed")
def test_missing_cuda_plugin_is_one_line_and_exit_2():
    r = _compile_cli("--config=experiments/quickstart.py", "--topology=h100-8", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: compiling for GPU needs JAX's CUDA plugin: pip install -e "
                           "\".[gpu-compile]\" (it installs jax[cuda13-local], the "
                           "jax-cuda13-plugin of jax "), line


def test_reports_without_flops_say_n_a():
    """XLA:GPU has no cost analysis: FLOPs are None in the JSON and 'n/a' in the text."""
    from igc_jax.compile import format_report
    memory = {"arguments": 2e8, "outputs": 2e8, "aliased": 2e8, "temporaries": 1e9, "code": 0,
              "total": 1.2e9}
    step = {"memory_bytes": memory, "flops": None, "bytes_accessed": None, "compile_s": 3.0,
            "collectives": {"all-reduce": {"count": 1, "bytes": 4}}, "out_of_memory": None}
    report = {"network": "net", "topology": "h100-8", "device_kind": "NVIDIA H100 80GB HBM3",
              "chips": 8, "hosts": 1, "unit": "GPU", "hbm_per_chip_bytes": H100_BYTES,
              "batch_size": 64, "eval_batch_size": 64, "dtype": "float32", "conv_modes": {},
              "train": step, "eval": step, "need_per_chip_bytes": 1.2e9, "fits": True,
              "margin_bytes": H100_BYTES - 1.2e9, "memory_is_lower_bound": True}
    text = format_report(report)
    assert "n/a TFLOP per GPU" in text and "(8 per GPU)" in text
    assert "fits: needs 1.20 GB of 84.94 GB HBM per GPU" in text and "a lower bound" in text


# IGC-L24M2 D=20's grouped primary convolutions on an H100: cuDNN convolutions of 24 groups.
_HLO_PROBE = """
import os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
from igc_jax import configs
from igc_jax.igc.select import ModeContext
from igc_jax.training import aot
config = configs.load_config(sys.argv[1])
config.conv_mode = "grouped"
target = aot.plan(config, "h100-8")
program = aot.build_program(config, aot.target_devices(target), ModeContext("gpu"))
print(program.trace_train(config.batch_size).lower().compile().as_text())
"""


@needs_cuda_plugin
@pytest.mark.slow
def test_cifar_compiles_and_fits_h100_8(tmp_path):
    config, topology = "experiments/cifar10_igc.py:L24M2,D20", "h100-8"
    out = tmp_path / "report.json"
    r = _compile_cli(f"--config={config}", f"--topology={topology}", f"--json={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert (report["chips"], report["hosts"], report["platform"]) == (8, 1, "gpu")
    assert report["device_kind"] == "NVIDIA H100 80GB HBM3"
    assert report["fits"] and report["need_per_chip_bytes"] <= H100_BYTES
    assert report["memory_is_lower_bound"] and "a lower bound" in r.stdout
    for step in ("train", "eval"):
        m, c = report[step]["memory_bytes"], report[step]["collectives"]
        assert m["total"] == (m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
                              + m["code"])
        assert all(c[op]["count"] == 0 for op in aot.ACTIVATION_COLLECTIVES), (step, c)
        assert c["all-reduce"]["count"] >= 1
        assert report[step]["flops"] is None  # XLA:GPU has no cost analysis
    assert report["train"]["memory_bytes"]["arguments"] >= 2 * 4 * report["num_params"]
    assert "n/a TFLOP per GPU" in r.stdout


@needs_cuda_plugin
@pytest.mark.slow
def test_grouped_convs_stay_grouped_cudnn_convs_on_h100():
    r = subprocess.run([sys.executable, "-c", _HLO_PROBE, "experiments/cifar10_igc.py:L24M2,D20"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    convs = [ln for ln in r.stdout.splitlines() if "__cudnn$conv" in ln]
    grouped = [ln for ln in convs if "feature_group_count=24" in ln]
    # IGC-L24M2 D=20 has 18 IGC layers, each with a primary 3x3 conv of 24 groups: one cuDNN
    # call for its forward, one for its input gradient (a forward conv of the flipped kernel)
    # and one for its weight gradient; none is rewritten as a dense or dilated convolution.
    forward = [ln for ln in grouped if 'custom_call_target="__cudnn$convForward"' in ln]
    weight_grad = [ln for ln in grouped if "__cudnn$convBackwardFilter" in ln]
    assert len(forward) >= 2 * 18 and len(weight_grad) >= 18, (len(forward), len(weight_grad))
    assert "convolution-base-dilated" not in r.stdout
    # With no GPU nothing is autotuned: every cuDNN call gets an empty workspace (u8[0]), which is
    # why the report calls GPU memory a lower bound.
    assert all(", u8[0]{0})" in ln.split("custom-call(")[0] for ln in convs)
