"""`conv_mode=autotune` (and `auto` on GPU/TPU): each distinct IGC layer shape timed in every
candidate mode on the device, the fastest kept, cached on disk, shared by every process.

The timer is faked where the property is the tuner's bookkeeping (which mode it keeps, what it
caches, when it measures); the real timer runs in the end-to-end tests. Whether the choices are
fast is checked against an independent timing by `benchmarks/autotune.py`."""
from __future__ import annotations

import json
import logging
import subprocess

import pytest

from igc_jax.igc import autotune
from igc_jax.igc.select import LayerShape, ModeContext, ModePlan
from run_utils import ROOT, TINY, env_with_devices, free_port, main_cmd, run_main, status

CPU = ModeContext("cpu", native=False)
SHAPES = [LayerShape(L=24, M=2, C_in=48, C=48, size=(32, 32)),
          LayerShape(L=24, M=4, C_in=48, C=96, strides=(2, 2), size=(32, 32)),
          LayerShape(L=4, M=16, C_in=64, C=64, size=(8, 8))]


def fake_timer(monkeypatch, table):
    """time_modes replaced by `table[(shape, mode)]` (default: 10 + the name's length), each
    (shape, mode) timed recorded."""
    calls = []

    def time_modes(names, shape, args):
        calls.extend((shape, m) for m in names)
        return {m: table.get((shape, m), 10.0 + len(m)) for m in names}
    monkeypatch.setattr(autotune, "time_modes", time_modes)
    return calls


def test_each_shape_keeps_its_fastest_mode_and_a_second_tune_measures_nothing(
        monkeypatch, tmp_path):
    table = {(SHAPES[0], "composed"): 1.0, (SHAPES[1], "split"): 2.0, (SHAPES[2], "grouped"): 0.6,
             (SHAPES[2], "taps"): 0.5}  # not a candidate of SHAPES[2]: never timed
    calls = fake_timer(monkeypatch, table)
    plan, tuned = autotune.tune([*SHAPES, SHAPES[0]], "float32", 16, CPU, tmp_path)
    assert [plan.mode(s) for s in SHAPES] == ["composed", "split", "grouped"]
    assert len(calls) == sum(len(autotune.candidates(s, CPU)) for s in SHAPES)  # once per shape
    assert not any(t.cached for t in tuned) and len(list(tmp_path.glob("*.json"))) == 3
    calls.clear()
    again, tuned = autotune.tune(SHAPES, "float32", 16, CPU, tmp_path)
    assert again == plan and calls == [] and all(t.cached for t in tuned)


@pytest.mark.parametrize("change", [dict(dtype="bfloat16"), dict(batch=32)])
def test_another_dtype_or_batch_is_measured_again(monkeypatch, tmp_path, change):
    calls = fake_timer(monkeypatch, {})
    args = dict(dtype="float32", batch=16)
    autotune.tune(SHAPES[:1], args["dtype"], args["batch"], CPU, tmp_path)
    n = len(calls)
    args.update(change)
    autotune.tune(SHAPES[:1], args["dtype"], args["batch"], CPU, tmp_path)
    assert len(calls) == 2 * n


@pytest.mark.parametrize("damage", ["{not json", json.dumps({"key": {}, "timings_ms": {}}),
                                    json.dumps({"timings_ms": "x"})])
def test_a_damaged_cache_entry_is_measured_again_with_one_warning(monkeypatch, tmp_path, caplog,
                                                                   damage):
    calls = fake_timer(monkeypatch, {(SHAPES[0], "split"): 1.0})
    autotune.tune(SHAPES[:1], "float32", 16, CPU, tmp_path)
    [entry] = tmp_path.glob("*.json")
    entry.write_text(damage)
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="igc_jax.igc.autotune"):
        plan, [tuned] = autotune.tune(SHAPES[:1], "float32", 16, CPU, tmp_path)
    damaged = [r for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 1 and str(entry) in damaged[0].getMessage()
    assert calls and not tuned.cached and plan.mode(SHAPES[0]) == "split"
    assert json.loads(entry.read_text())["timings_ms"] == tuned.timings_ms  # rewritten whole


def test_candidates_follow_the_backend_and_the_layer():
    wide, many = SHAPES[2], LayerShape(L=100, M=2, C_in=200, C=200, size=(56, 56))
    assert autotune.candidates(wide, ModeContext("tpu")) == (
        "grouped", "composed", "grouped_mix", "split")  # the rules' choice (grouped) first
    assert autotune.candidates(SHAPES[0], ModeContext("cpu", native=True))[0] == "native"
    assert "split" not in autotune.candidates(many, ModeContext("gpu"))
    assert "native" in autotune.candidates(wide, ModeContext("cpu", native=True))
    # taps' fusions have kh·kw·C_in/L terms: 9·16 = 144 > TAPS_MAX_TERMS for L4M16
    assert "taps" not in autotune.candidates(wide, CPU)
    assert "taps" in autotune.candidates(SHAPES[0], CPU)


@pytest.mark.parametrize("conv_mode, backend, measured", [
    ("autotune", "cpu", True), ("auto", "gpu", True), ("auto", "tpu", True),
    ("auto", "cpu", False), ("grouped", "gpu", False), ("composed", "cpu", False)])
def test_which_runs_measure(monkeypatch, conv_mode, backend, measured):
    """`autotune` always, `auto` off the CPU; an explicit mode never (it is the plan)."""
    from run_utils import tiny_config

    from igc_jax.training import steps

    tuned = []

    def tune(shapes, dtype, batch, context, directory=None):
        tuned.append((dtype, batch))
        return ModePlan("auto", tuple((s, "composed") for s in shapes)), []
    monkeypatch.setattr(autotune, "tune", tune)
    config = tiny_config(conv_mode=conv_mode)
    planned = steps.plan_modes(config, (8, 8, 1), ModeContext(backend))
    assert planned.measured == measured and bool(tuned) == measured
    modes = {m for _, m in planned.layers.values()}
    if measured:
        assert modes == {"composed"} and tuned == [("float32", config.batch_size)]
    else:  # the rules (tiny L2M2 layers on the CPU without C++: split), or the explicit mode
        assert modes == ({"split"} if conv_mode == "auto" else {conv_mode})
    # compile-only devices run nothing: the rules decide
    assert not steps.plan_modes(config, (8, 8, 1), ModeContext(backend),
                                can_measure=False).measured


def test_mode_plans_survive_json():
    plan = ModePlan("auto", tuple((s, m) for s, m in zip(SHAPES, ("split", "taps", "native"))))
    assert ModePlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_a_run_records_its_measurements_and_the_next_run_measures_nothing(tmp_path):
    """Through `python -m igc_jax.main`: status.json holds the choices with their timings, and
    a second run with the same cache reads every layer from it."""
    env = {"IGC_JAX_AUTOTUNE_DIR": str(tmp_path / "cache")}
    runs = []
    for name in ("first", "second"):
        r = run_main(tmp_path / name, *TINY, "--config.num_train_steps=2",
                     "--config.conv_mode=autotune", extra_env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(status(tmp_path / name)["conv_modes"])
        assert "autotune (cpu, batch 32 per device, float32)" in r.stderr
    first, second = runs
    assert first["layers"] == second["layers"] and first["autotune"]
    assert not any(t["cached"] for t in first["autotune"])
    assert all(t["cached"] for t in second["autotune"])
    for t in first["autotune"]:
        assert t["choice"] == min(t["timings_ms"], key=t["timings_ms"].get)


def test_two_processes_run_the_modes_process_0_measured(tmp_path):
    """Each process has its own (empty) cache: only process 0's fills, and both build their
    network with the same modes, which the run then trains with."""
    port, wd = free_port(), tmp_path / "run"
    procs = []
    for i in range(2):
        env = env_with_devices(2, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
                               IGC_JAX_AUTOTUNE_DIR=str(tmp_path / f"cache{i}"))
        procs.append(subprocess.Popen(
            main_cmd(wd, *TINY, "--config.num_train_steps=2", "--config.conv_mode=autotune",
                     f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                     f"--process_id={i}"), env=env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=600)[1] for p in procs]
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err[-2000:]
    lines = [[ln.split("] ", 1)[-1] for ln in err.splitlines() if "IGC computation modes" in ln]
             for err in errs]
    assert len(lines[0]) == 1 and lines[0] == lines[1], lines
    assert list((tmp_path / "cache0").glob("*.json"))
    assert not (tmp_path / "cache1").exists()
    assert "autotune (" in errs[0] and "autotune (" not in errs[1]


def test_a_run_resumed_with_other_modes_continues_from_its_state(tmp_path, monkeypatch):
    """The checkpoint holds parameters, not modes: a run cut at step 3 in `split` and resumed in
    `composed` goes on from step 3 and ends where an uninterrupted `split` run does, to the two
    modes' float32 rounding."""
    import jax
    import numpy as np

    from igc_jax.training import loop as train
    from run_utils import final_params, tiny_config, train_losses

    cfg = dict(num_train_steps=6, checkpoint_every_steps=100)
    train.train_and_evaluate(tiny_config(conv_mode="split", **cfg), str(tmp_path / "ref"))
    original = train.SigtermFlag.__call__
    monkeypatch.setattr(train.SigtermFlag, "__call__", lambda self, step: step == 3)
    with pytest.raises(train.Preempted):
        train.train_and_evaluate(tiny_config(conv_mode="split", **cfg), str(tmp_path / "cut"))
    monkeypatch.setattr(train.SigtermFlag, "__call__", original)
    st = train.train_and_evaluate(tiny_config(conv_mode="composed", **cfg), str(tmp_path / "cut"))
    assert st["status"] == "finished" and st["step"] == 6
    assert st["conv_modes"]["layers"] and set(st["conv_modes"]["layers"].values()) == {"composed"}
    losses, ref = train_losses(tmp_path / "cut"), train_losses(tmp_path / "ref")
    np.testing.assert_array_equal(losses[:3], ref[:3])  # the same mode up to the cut
    np.testing.assert_allclose(losses, ref, rtol=1e-5)
    a, b = final_params(tmp_path / "cut"), final_params(tmp_path / "ref")
    assert a["step"] == b["step"] == 6
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
                 a["params"], b["params"])


def test_time_modes_drops_a_far_slower_candidate_after_its_warm_up(monkeypatch):
    """Steps that sleep: the 300 ms one is over 3× slower than the 5 ms one at its warm-up and
    takes no timed round; the others take the same rounds (REPS at least, more while the budget
    lasts), and the medians order them as their sleeps do. Compiling runs nothing."""
    import time

    calls = {}

    class Lowered:  # what `jit(f).lower(*args).compile()` gives: a callable executable
        def __init__(self, step):
            self.step = step

        def lower(self, *args):
            return self

        def compile(self):
            return self.step

    def fake_step(mode, shape):
        ms = {"native": 5, "composed": 10, "grouped": 300}[mode]

        def step(*args):
            calls[mode] = calls.get(mode, 0) + 1
            time.sleep(ms / 1e3)
            return ()
        return Lowered(step)
    monkeypatch.setattr(autotune, "_layer_step", fake_step)
    t = autotune.time_modes(["native", "composed", "grouped"], SHAPES[0], ())
    rounds = calls["native"] - 1
    assert autotune.REPS <= rounds <= autotune.MAX_REPS
    assert calls == {"native": 1 + rounds, "composed": 1 + rounds, "grouped": 1}
    assert 5 <= t["native"] < t["composed"] < t["grouped"] and t["grouped"] >= 300
