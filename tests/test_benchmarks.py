"""The benchmark scripts: which modes they time where, and that what they time is right."""
from __future__ import annotations

import math
import tempfile
import types
from pathlib import Path

import jax.numpy as jnp
import pytest

from benchmarks import gpu, roofline, run
from igc_jax.igc import layers, modes, native


def test_suite_modes_match_devices():
    assert set(run.modes_for("gpu")) == set(layers.ALL_MODES) - {"native"}
    assert ("native" in run.modes_for("cpu")) == native.available()


# A strided, widening layer of the GPU script's kind at toy size (x 2×7×7×8 -> 2×4×4×16).
TOY = ("toy", "L4M4 stride 2", 2, 7, 8, 16, 4, 4, 2)


@pytest.fixture(scope="module")
def toy_rows():
    """The GPU script's rows for TOY in every GPU mode and both dtypes (the dry run's core)."""
    errors = []
    rows = gpu.bench_layer(TOY, run.modes_for("gpu"), gpu.DTYPES, reps=1, deadline=math.inf,
                           errors=errors)
    assert not errors
    return rows


def test_gpu_script_times_every_gpu_mode_and_each_agrees_with_composed(toy_rows):
    """Every mode but the CPU-only `native`, in both dtypes, forward, input gradient and weight
    gradient, each checked against `composed` in float32 at highest precision."""
    want = {(d, m, p) for d in gpu.DTYPES for m in set(modes.MODES) - {"native"} for p in gpu.PARTS}
    assert {(r["dtype"], r["mode"], r["part"]) for r in toy_rows} == want
    assert all("skipped" not in r for r in toy_rows)  # C_in/L = 2, L = 4: every mode's range
    for r in toy_rows:
        assert r["passed"] and r["rel_error"] <= gpu.TOLERANCE[r["dtype"]], r
        assert r["median_ms"] > 0 and r["compile_s"] > 0


def test_gpu_script_report_has_absolute_times_and_ratios(toy_rows):
    text = "\n".join(gpu.layer_tables(toy_rows))
    for r in toy_rows:
        assert f"{r['median_ms']:.3g} (" in text
    assert text.count("(1.00×)") >= 2 * len(gpu.PARTS)  # the fastest mode of each dtype and part
    assert "**WRONG**" not in text


def test_gpu_script_flags_a_mode_that_computes_the_wrong_layer(monkeypatch):
    """A mode with the primary's output channels in the wrong order (a missed shuffle) is
    flagged in every part; the others still pass."""
    monkeypatch.setitem(modes.MODES, "split",
                        lambda x, p, s, **kw: modes.igc_grouped(x, p[..., ::-1], s, **kw))
    rows = gpu.bench_layer(TOY, ["grouped", "split"], ("float32",), reps=1, deadline=math.inf,
                           errors=[])
    assert {r["part"] for r in rows if r["mode"] == "split" and not r["passed"]} == set(gpu.PARTS)
    assert all(r["passed"] for r in rows if r["mode"] == "grouped")
    assert min(r["rel_error"] for r in rows if r["mode"] == "split") > 0.1
    assert "**WRONG**" in "\n".join(gpu.layer_tables(rows))


@pytest.mark.parametrize("suite, device", [("gpu", "cuda"), ("cpu", "cpu")])
def test_suite_times_the_torch_peer_where_jax_runs(monkeypatch, suite, device):
    """The GPU suite's PyTorch column must time PyTorch on the GPU, not on the host: every
    PyTorch timing that the suite's layer and step benchmarks ask for names the suite's device."""
    seen = []

    def times(*args, device, **kwargs):
        seen.append(device)
        return [1e-3]

    fake_peer = types.SimpleNamespace(igc_layer_times=times, train_step_times=times,
                                      build=lambda cfg: types.SimpleNamespace(parameters=list))
    monkeypatch.setattr(run, "modes_for", lambda suite: [])     # no JAX layer timings
    monkeypatch.setattr(run, "time_jax_step", lambda *a, **k: {"best_ms": 1.0})
    monkeypatch.setattr(run, "step_roofline", lambda *a: {"step_macs": 1, "roofline_ms": 1.0})
    ceil = roofline.Ceilings(macs_per_s=1e12, bytes_per_s=1e11)
    for bench in (run.bench_layers, run.bench_steps):
        bench(suite, True, jnp.float32, ceil, fake_peer, 1, math.inf, log=lambda line: None)
    assert len(seen) == 2 * len(run.layer_shapes(suite, True)) + len(run.networks(suite, True))
    assert set(seen) == {device}


def test_torch_peer_runs_where_it_is_told(monkeypatch):
    """benchmarks/torch_peer.py moves its network to the device it is given."""
    torch_peer = pytest.importorskip("benchmarks.torch_peer")
    seen = []
    original = torch_peer.torch.nn.Module.to
    monkeypatch.setattr(torch_peer.torch.nn.Module, "to",
                        lambda self, *a, **k: seen.append(a[:1]) or original(self, *a, **k))
    torch_peer.igc_layer_times(2, 8, 8, 8, 4, 2, 1, backward=True, reps=1, device="cpu")
    assert seen and seen[0] == ("cpu",)


def test_imagenet_benchmark_compares_the_same_transform():
    """The benchmark's 'previous' path and the library's compute the same crops, jitter and
    normalisation (to the ±1 rounding of the crop before the resize), so their rates compare."""
    import numpy as np

    from benchmarks import input_pipeline_imagenet as bench
    from benchmarks.photos import photo_jpegs
    from igc_jax.data import preprocess, randomness

    jpegs = photo_jpegs(8)
    u = randomness.example_uniforms(0, 0, np.arange(8), randomness.NUM_UNIFORMS)
    prep = preprocess.Preprocessing("imagenet_inception", bench.NORM, bench.SIZE, bench.JITTER)
    # One step of 1/255 of the range, scaled by the jitter (at most 1.4³) and 1/std (< 1/57).
    np.testing.assert_allclose(prep.train(list(jpegs), u), bench.previous_train(jpegs, u),
                               atol=0.05)
    np.testing.assert_allclose(prep.eval(list(jpegs)), bench.previous_eval(jpegs), atol=0.02)


def test_cifar_reference_pytorch_schedule_is_igc_jax_schedule():
    """The PyTorch side's lr of every update equals igc-jax's optax schedule at that count."""
    import numpy as np

    from benchmarks import cifar_reference as ref
    from igc_jax import configs
    from igc_jax.data.normalization import NORMALIZATION
    from igc_jax.training import steps

    c = configs.load_config("experiments/cifar10_igc.py:L24M2,D8")
    spe = 50_000 // ref.BATCH
    num_steps = ref.EPOCHS * spe
    schedule = steps.learning_rate_schedule(c, spe, num_steps)
    ours = np.asarray([ref.learning_rate(s, num_steps) for s in range(num_steps)])
    theirs = np.asarray([float(schedule(s)) for s in range(num_steps)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert sorted(set(np.round(ours, 8))) == [1e-4, 1e-3, 1e-2, 0.1]
    assert c.dataset.normalization == "cifar10"
    assert (ref.MEAN, ref.STD) == NORMALIZATION["cifar10"]
    assert (ref.LR, ref.MOMENTUM, ref.WEIGHT_DECAY) == (c.learning_rate, c.momentum,
                                                         c.weight_decay)


def test_cifar_reference_pytorch_augmentation_pads_with_the_mean_colour():
    import numpy as np

    from benchmarks import cifar_reference as ref

    images = np.full((400, 32, 32, 3), 7, np.uint8)
    out = ref.augment(images, np.random.default_rng(0))
    assert out.shape == images.shape
    border = np.any(out != 7, axis=-1)
    assert border.any() and np.all(out[border] == (125, 123, 114))
    # Every offset in 0..8 occurs: the top-left border is 0–4 rows/columns wide.
    rows = {int(border[i, :, 16].sum()) for i in range(400)}
    assert rows == set(range(5))


@pytest.mark.parametrize("init", ["he_normal", "torch_default"])
def test_torch_peer_initialisation_standard_deviations(init):
    torch_peer = pytest.importorskip("benchmarks.torch_peer")
    import math

    from igc_jax.configs.networks import cifar_model

    net = torch_peer.build(dict(cifar_model("L24M2,D8"), init=init))
    for name, p in net.named_parameters():
        if p.ndim == 4:
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            want = math.sqrt(2 / fan_in) if init == "he_normal" else math.sqrt(1 / (3 * fan_in))
            assert abs(float(p.std()) / want - 1) < 5 / math.sqrt(2 * p.numel()) + 0.01, name


def test_cifar_reference_reuses_only_results_of_the_same_recipe(tmp_path):
    """A job is skipped when its run directory or the committed results hold it; the run
    directory wins, and results of another epoch count are not reused."""
    import json

    from benchmarks import cifar_reference as ref

    done = dict(test_top1=[0.5, 0.6], final=0.6, images_per_sec=100.0)
    summary = dict(epochs=2, batch=ref.BATCH, seed=ref.SEED, rows=[
        dict(net="W16,D8", init="he_normal", igc_jax=done, pytorch=None)])
    path = tmp_path / "cifar_reference.json"
    path.write_text(json.dumps(summary))
    job = ("igc_jax", "W16,D8", "he_normal")
    assert ref.committed_results(15, path) == {}
    known = ref.committed_results(2, path)
    assert known == {job: dict(done, source="cifar_reference.json")}
    root = tmp_path / "runs"
    assert ref.job_result(job, root, 2, known)["source"] == "cifar_reference.json"
    assert ref.job_result(("pytorch", "W16,D8", "he_normal"), root, 2, known) is None
    mine = dict(done, final=0.61, commit="abc1234")
    ref.job_dir(root, *job).mkdir(parents=True)
    (ref.job_dir(root, *job) / "result.json").write_text(json.dumps(mine))
    assert ref.job_result(job, root, 2, known) == mine
    assert "abc1234" in ref.provenance(mine) and "reused" in ref.provenance(known[job])


def test_cifar_reference_seed_reaches_both_sides_and_its_own_results_file(monkeypatch):
    """`--seed=N` is igc-jax's config.seed and the PyTorch job's seed, and its results go beside
    seed 0's (never over them); results of another seed are not reused."""
    import json

    from benchmarks import cifar_reference as ref

    monkeypatch.setattr(ref, "SEED", ref.SEED)      # restored after the test
    ref.use_seed(3)
    jax_cmd = ref.job_command("igc_jax", "W16,D8", "he_normal", Path("/d"), Path("/o"), 2)
    torch_cmd = ref.job_command("pytorch", "W16,D8", "he_normal", Path("/d"), Path("/o"), 2)
    assert "--config.seed=3" in jax_cmd and "--seed=3" in torch_cmd
    assert ref.results_name(ref.IGCV1) == "cifar_reference_seed3"
    done = dict(test_top1=[0.5, 0.6], final=0.6, images_per_sec=100.0)
    summary = dict(epochs=2, batch=ref.BATCH, seed=0, rows=[
        dict(net="W16,D8", init="he_normal", igc_jax=done, pytorch=None)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cifar_reference.json"
        path.write_text(json.dumps(summary))
        assert ref.committed_results(2, path) == {}
        ref.use_seed(0)
        assert ref.results_name(ref.IGCV1) == "cifar_reference"
        assert ref.committed_results(2, path) != {}


def _search(totals: dict[int, float], largest: int) -> dict:
    return {"largest_fitting": largest, "smallest_not_fitting": None, "budget_bytes": 10.0,
            "total_bytes_by_batch": {str(k): v for k, v in totals.items()}}


def test_tpu_report_flags_a_bracket_its_own_compiles_contradict():
    """Memory is not monotone in the batch, so the report checks each search's compiles against
    its bracket: a batch under the largest fit that did not fit (or one above it that did) makes
    that bracket one boundary of several, and the report names it."""
    from benchmarks import tpu_compile
    clean = _search({8: 3.0, 16: 9.5, 24: 9.0, 32: 11.0}, largest=24)
    dip = _search({8: 3.0, 16: 10.5, 24: 9.0, 32: 11.0}, largest=24)   # 16 over budget, 24 under
    late = _search({8: 3.0, 24: 9.0, 32: 11.0, 40: 9.9}, largest=24)   # 40 under budget
    assert tpu_compile.consistent(clean)
    assert not tpu_compile.consistent(dip) and not tpu_compile.consistent(late)
    rows = [{"config": "a.py", "topology": "v4-8", "max_batch": clean},
            {"config": "b.py", "topology": "v4-8", "max_batch": dip}]
    note = tpu_compile.monotone_note(rows)
    assert "b.py on v4-8" in note and "a.py" not in note
    assert "every search" in tpu_compile.monotone_note(rows[:1])
