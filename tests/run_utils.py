"""Helpers for tests that run the trainer, in-process or as `python -m igc_jax.main`
subprocesses."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.py"

# A tiny IGC net on the digits: B=1 block per stage, width L·M = 4.
TINY = ["--config.model.depth=5", "--config.model.L=2", "--config.model.M=2",
        "--config.batch_size=32", "--config.eval_batch_size=64", "--config.log_every_steps=1"]


def tiny_config(**overrides):
    """The quick-start config shrunk like `TINY`, with `overrides` applied (dotted keys as __)."""
    from igc_jax import configs

    c = configs.load_config(QUICKSTART)
    c.model.depth, c.model.L, c.model.M = 5, 2, 2
    c.batch_size, c.eval_batch_size, c.log_every_steps = 32, 64, 1
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def env_with_devices(n: int, **extra: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def main_cmd(workdir: Path, *flags: str, config: Path = QUICKSTART) -> list[str]:
    return [sys.executable, "-m", "igc_jax.main", f"--config={config}", f"--workdir={workdir}",
            *flags]


def run_main(workdir: Path, *flags: str, devices: int = 1, timeout: float = 600,
             config: Path = QUICKSTART,
             extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(main_cmd(workdir, *flags, config=config),
                          env=env_with_devices(devices, **(extra_env or {})), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_losses(workdir: Path) -> np.ndarray:
    from igc_jax.training.metrics_log import read_metrics
    return np.array([r["loss"] for r in read_metrics(workdir / "metrics.jsonl")
                     if r["kind"] == "train"])


def status(workdir: Path) -> dict:
    return json.loads((workdir / "status.json").read_text())


def final_state(workdir: Path, step: int | None = None) -> dict:
    """The whole saved state of the newest checkpoint (or of `step`), as numpy, without a target
    tree (1 device): {"step", "state": {step, params, batch_stats, opt_state}, "data": iterator
    state}."""
    import jax
    import orbax.checkpoint as ocp
    if step is None:
        step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    path = workdir / "checkpoints" / str(step) / "state"
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), tree)
    restored = jax.device_get(ckptr.restore(path, target))
    data_state = json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())
    return {"step": step, "state": restored, "data": data_state}


def final_params(workdir: Path) -> dict:
    """The parameters of the newest checkpoint, as numpy, without a target tree (1 device)."""
    full = final_state(workdir)
    return {"step": full["step"], "params": full["state"]["params"]}


def state_differences(a: dict, b: dict) -> list[str]:
    """Paths of the leaves where two `final_state`s differ (bit for bit), and the data position;
    empty when the whole state is identical."""
    import jax
    out = [] if a["data"] == b["data"] and a["step"] == b["step"] else [
        f"step/data: {a['step']} {a['data']} vs {b['step']} {b['data']}"]
    flat_a = dict(jax.tree_util.tree_flatten_with_path(a["state"])[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b["state"])[0])
    if flat_a.keys() != flat_b.keys():
        return out + ["the trees differ in structure"]
    for path, x in flat_a.items():
        if not np.array_equal(np.asarray(x), np.asarray(flat_b[path])):
            out.append(jax.tree_util.keystr(path))
    return out
