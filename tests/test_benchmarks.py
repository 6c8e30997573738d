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
