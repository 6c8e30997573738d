"""A tiny sweep end to end: two points train a few steps on the embedded digits, a second
`igc_jax.sweep` skips both, and the report over the sweep root has both rows and every plot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

# Two points on the quick-start config (digits, 8×8): an IGC net and a RegConv net, both D=5.
SWEEP = '''
from pathlib import Path
from igc_jax import configs, sweep

QUICKSTART = Path({quickstart!r})


def get_sweep():
    return [("L2M2", {{"model.L": 2, "model.M": 2}}),
            ("RegConv-W4", {{"model": {{"name": "cifar_regconv", "depth": 5, "width": 4,
                                        "residual": False}}}})]


def get_config(arg=None):
    base = configs.load_config_module(QUICKSTART).get_config()
    base.model.depth = 5
    return sweep.point_config(base, get_sweep(), arg)
'''
TINY = ["--config.num_train_steps=3", "--config.batch_size=32", "--config.eval_batch_size=64",
        "--config.log_every_steps=1", "--config.checkpoint_every_steps=3"]


def sweep_cmd(sweep_file: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "igc_jax.sweep", f"--config={sweep_file}", f"--workdir={root}",
            *TINY]


def test_tiny_sweep_runs_skips_and_reports(tmp_path):
    sweep_file = tmp_path / "tiny_sweep.py"
    sweep_file.write_text(SWEEP.format(quickstart=str(ROOT / "experiments" / "quickstart.py")))
    root = tmp_path / "root"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(sweep_cmd(sweep_file, root), cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for name in ("L2M2", "RegConv-W4"):
        status = json.loads((root / name / "status.json").read_text())
        assert (status["status"], status["step"], status["num_steps"]) == ("finished", 3, 3)
        config = json.loads((root / name / "config.json").read_text())
        assert config["num_train_steps"] == 3 and config["dataset"]["name"] == "digits"
    regconv = json.loads((root / "RegConv-W4" / "config.json").read_text())
    assert regconv["model"]["name"] == "cifar_regconv"
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    r = subprocess.run(sweep_cmd(sweep_file, root), cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "L2M2: finished already, skipped" in r.stdout
    assert "RegConv-W4: finished already, skipped" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before

    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "igc_jax.report", str(root), "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    md = (out / "report.md").read_text()
    rows = [l for l in md.splitlines() if l.startswith("| L2M2 ") or l.startswith("| RegConv-W4 ")]
    assert len(rows) == 2 and all(l.rstrip(" |").endswith("finished") for l in rows)
    assert "| IGC-L2M2 (D=5) | digits | 2 | 2 | 5 |" in md
    for png in ("accuracy_vs_params.png", "accuracy_vs_macs.png", "params_macs.png",
                "training_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
