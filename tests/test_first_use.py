"""What a new user meets first, through the real command lines: every tool's --help exits 0 and
main's says how to give and override a config; a CPU run shows nothing about TPUs; rerunning a
finished run touches nothing and says so in one line."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from igc_jax.configs import base_config
from run_utils import ROOT, TINY, main_cmd

TOOLS = ("main", "evaluate", "summary", "sweep", "report", "convert_mxnet")


def _help(tool: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"igc_jax.{tool}", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("tool", TOOLS)
def test_help_exits_0(tool):
    r = _help(tool)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "usage" in r.stdout.lower() or "flags:" in r.stdout


def test_main_help_names_the_config_syntax_and_every_field_with_its_default():
    out = _help("main").stdout
    assert "--config=<file>[:arg]" in out and "--config.<field>=<value>" in out
    fields = re.findall(r"^  ([\w.]+) = (.+)$", out, flags=re.M)
    expected = {}
    for key, value in base_config().to_dict().items():
        if isinstance(value, dict):
            expected.update({f"{key}.{k}": repr(v) for k, v in value.items()})
        else:
            expected[key] = repr(value)
    assert dict(fields) == expected


def _cpu_env() -> dict:
    """This machine's environment as a user has it: no JAX_PLATFORMS, whatever is installed."""
    return {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}


def _files(workdir: Path) -> dict[str, tuple[int, int]]:
    """Every path under the workdir with its size and mtime (ns)."""
    return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(workdir.rglob("*"))}


@pytest.mark.slow
def test_cpu_run_shows_no_tpu_noise_and_a_finished_rerun_changes_nothing(tmp_path):
    wd = tmp_path / "run"
    cmd = main_cmd(wd, *TINY, "--config.num_train_steps=4")
    first = subprocess.run(cmd, cwd=ROOT, env=_cpu_env(), capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    noise = [line for line in first.stderr.splitlines()
             if "libtpu" in line or "backend 'tpu'" in line]
    assert not noise, noise
    before = _files(wd)
    rerun = subprocess.run(cmd, cwd=ROOT, env=_cpu_env(), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert re.fullmatch(r"already finished at step 4 \(best \d+\.\d\d%\); nothing to do\n",
                        rerun.stdout), rerun.stdout
    assert rerun.stderr == ""
    assert _files(wd) == before
