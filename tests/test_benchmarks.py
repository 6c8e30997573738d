"""Which modes the benchmark scripts time on which device."""
from __future__ import annotations

from benchmarks import gpu_fused, run
from igc_jax.igc import layers, native


def test_suite_modes_match_devices():
    assert "native" not in run.modes_for("gpu") and "fused" in run.modes_for("gpu")
    assert "fused" not in run.modes_for("cpu")
    assert ("native" in run.modes_for("cpu")) == native.available()
    assert set(run.modes_for("gpu")) | {"native"} == set(layers.ALL_MODES)


def test_gpu_script_times_no_cpu_only_mode():
    assert "native" not in gpu_fused.UNFUSED and "fused" not in gpu_fused.UNFUSED
