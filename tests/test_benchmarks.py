"""Which modes the benchmark scripts time on which device."""
from __future__ import annotations

import pytest

from benchmarks import gpu_fused, run
from igc_jax.igc import layers, native


def test_suite_modes_match_devices():
    assert "native" not in run.modes_for("gpu") and "fused" in run.modes_for("gpu")
    assert "fused" not in run.modes_for("cpu")
    assert ("native" in run.modes_for("cpu")) == native.available()
    assert set(run.modes_for("gpu")) | {"native"} == set(layers.ALL_MODES)


def test_gpu_script_times_no_cpu_only_mode():
    assert "native" not in gpu_fused.UNFUSED and "fused" not in gpu_fused.UNFUSED


def test_torch_peer_runs_where_jax_runs(monkeypatch):
    """The GPU suite's PyTorch column must time PyTorch on the GPU, not on the host."""
    assert run.torch_device("gpu") == "cuda" and run.torch_device("cpu") == "cpu"
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
    u = randomness.example_uniforms(0, 0, np.arange(8), preprocess.NUM_UNIFORMS)
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
    from igc_jax.data import preprocess
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
    assert (ref.MEAN, ref.STD) == preprocess.NORMALIZATION["cifar10"]
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
