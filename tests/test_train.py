"""The training loop: schedule, sharding equivalence, multi-process, resume, quick start.

Every run here goes through `train_and_evaluate`, whose loop runs under
`jax.transfer_guard("disallow")`: an implicit host↔device copy inside the loop fails these tests.
"""
from __future__ import annotations

import shutil
import subprocess

import jax
import numpy as np
import pytest

from igc_jax.training import loop as train
from igc_jax.training import steps
from run_utils import (ROOT, TINY, env_with_devices, final_params, final_state, free_port,
                       main_cmd, run_main, status, tiny_config, train_losses)


def test_cifar_schedule_decays_at_half_three_quarters_seven_eighths():
    c = tiny_config(learning_rate=0.1, lr_schedule="cifar")
    s = steps.learning_rate_schedule(c, steps_per_epoch=10, num_steps=800)
    got = [float(s(t)) for t in (0, 399, 400, 599, 600, 699, 700, 799)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)


def test_imagenet_schedule_every_30_epochs_with_warmup():
    c = tiny_config(learning_rate=0.1, lr_schedule="imagenet", warmup_epochs=1.0)
    s = steps.learning_rate_schedule(c, steps_per_epoch=100, num_steps=100 * 95)
    got = [float(s(t)) for t in (0, 50, 100, 2999, 3000, 6000, 9000)]
    np.testing.assert_allclose(got, [0.0, 0.05, 0.1, 0.1, 0.01, 1e-3, 1e-4], rtol=1e-5)


def test_weight_decay_is_added_to_every_gradient():
    import jax.numpy as jnp
    c = tiny_config(weight_decay=0.5, momentum=0.0, nesterov=False, learning_rate=1.0)
    tx = steps.make_optimizer(c, lambda step: 1.0)
    params = {"w": jnp.array([2.0]), "bn_scale": jnp.array([4.0])}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-1.0])
    np.testing.assert_allclose(updates["bn_scale"], [-2.0])


@pytest.fixture(scope="module")
def eight_device_run(tmp_path_factory):
    """5 steps of the tiny net on 8 simulated devices, as `python -m igc_jax.main` runs them."""
    wd = tmp_path_factory.mktemp("eight") / "run"
    r = run_main(wd, *TINY, "--config.num_train_steps=5", devices=8)
    assert r.returncode == 0, r.stderr[-2000:]
    return wd


def test_one_and_eight_devices_give_the_same_losses(tmp_path, eight_device_run):
    assert jax.device_count() == 1
    train.train_and_evaluate(tiny_config(num_train_steps=5), str(tmp_path))
    one = train_losses(tmp_path)
    assert len(one) == 5
    np.testing.assert_allclose(train_losses(eight_device_run), one, rtol=1e-5)


def test_two_processes_equal_one_process(tmp_path, eight_device_run):
    flags = (*TINY, "--config.num_train_steps=5")
    wd, port = tmp_path / "two", free_port()
    env = env_with_devices(4, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    procs = [subprocess.Popen(
        main_cmd(wd, *flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={i}"), env=env, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    np.testing.assert_allclose(train_losses(wd), train_losses(eight_device_run), rtol=1e-5)
    a, b = final_params(wd), final_params(eight_device_run)
    assert a["step"] == b["step"] == 5
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 a["params"], b["params"])


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = dict(num_train_steps=8, checkpoint_every_steps=100)
    train.train_and_evaluate(tiny_config(**cfg), str(tmp_path / "ref"))

    original = train.SigtermFlag.__call__
    monkeypatch.setattr(train.SigtermFlag, "__call__", lambda self, step: step == 3)
    with pytest.raises(train.Preempted, match="step 3"):
        train.train_and_evaluate(tiny_config(**cfg), str(tmp_path / "cut"))
    assert status(tmp_path / "cut")["status"] == "preempted"
    monkeypatch.setattr(train.SigtermFlag, "__call__", original)
    st = train.train_and_evaluate(tiny_config(**cfg), str(tmp_path / "cut"))
    assert st["status"] == "finished" and st["step"] == 8

    a, b = final_params(tmp_path / "cut"), final_params(tmp_path / "ref")
    assert a["step"] == b["step"] == 8
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
    np.testing.assert_array_equal(train_losses(tmp_path / "cut"), train_losses(tmp_path / "ref"))


def test_checkpoint_from_eight_devices_restores_on_one(tmp_path, eight_device_run):
    """The values restored on one device are those saved on eight (checked against a 1-device
    run of the same steps, to the 8-vs-1-device reduction tolerance), and training continues
    from them as the 1-device run, resumed the same way, does."""
    ref = tmp_path / "ref"
    train.train_and_evaluate(tiny_config(num_train_steps=5), str(ref))
    expected = final_state(ref)
    train.train_and_evaluate(tiny_config(num_train_steps=7), str(ref))
    wd = tmp_path / "run"
    shutil.copytree(eight_device_run, wd)
    saved = final_state(wd)
    assert saved["step"] == 5 and saved["data"] == expected["data"] == {"step": 5}
    assert jax.device_count() == 1
    close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, saved["state"], expected["state"])
    st = train.train_and_evaluate(tiny_config(num_train_steps=7), str(wd))
    assert st["status"] == "finished" and st["step"] == 7
    losses = train_losses(wd)
    assert len(losses) == 7  # steps 1–5 on 8 devices, 6–7 after the restore on 1
    np.testing.assert_allclose(losses, train_losses(ref), rtol=1e-5)
    jax.tree.map(close, final_state(wd)["state"], final_state(ref)["state"])


@pytest.mark.slow
def test_quickstart_reaches_95_percent(tmp_path):
    r = run_main(tmp_path / "qs", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    st = status(tmp_path / "qs")
    assert st["status"] == "finished"
    assert st["final_top1"] >= 0.95, st
    assert "done:" in r.stdout


def test_processes_agree_on_sigterm_only_every_n_steps(monkeypatch):
    """With several processes the flags are shared (a host round trip) only at multiples of N,
    the same steps on every process, so all stop and checkpoint at one agreed step."""
    from jax.experimental import multihost_utils

    calls = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather",
                        lambda x: calls.append(int(x)) or np.asarray([x, False]))
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: False)
    flag = train.SigtermFlag(every=4)
    flag.set = True  # SIGTERM arrived before step 1
    stops = [step for step in range(1, 10) if flag(step)]
    assert stops == [4, 8] and calls == [1, 1]


def test_profile_steps_write_a_tensorboard_trace(tmp_path):
    train.train_and_evaluate(tiny_config(num_train_steps=4, profile_steps="1:3"), str(tmp_path))
    traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert status(tmp_path)["conv_modes"]["layers"]  # the run records its IGC layers' modes
