"""Sweep files and the sweep runner: every point builds and validates, one command per point,
skip/resume decisions from status.json."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from igc_jax import configs, models, summary, sweep
from igc_jax.training.validate import validate
from igc_jax.igc import kernels

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((ROOT / "experiments").glob("*sweep*.py"))
LM = ROOT / "experiments" / "cifar100_lm_sweep.py"
DEPTH = ROOT / "experiments" / "cifar_depth_sweep.py"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_point_builds_and_validates(path):
    module = sweep.load_sweep_module(str(path))
    points = module.get_sweep()
    assert len({n for n, _ in points}) == len(points)
    for name, _ in points:
        config = module.get_config(name)
        validate(config)
        model = models.build_model(config.model, num_classes=config.dataset.num_classes,
                                   plan="grouped")
        side = config.dataset.image_size
        x = jax.ShapeDtypeStruct((2, side, side, 3), "float32")
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
        logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
        assert logits.shape == (2, config.dataset.num_classes), name


def _docstring_budgets(module) -> dict[str, int]:
    """point → stage-1 budget from the docstring's table."""
    out = {}
    for line in module.__doc__.splitlines():
        m = re.match(r"^\| (\S+)\s+\|.*\| ([\d,]+)\s+\| [^|]+\|$", line)
        if m and m.group(1) != "point":
            out[m.group(1)] = int(m.group(2).replace(",", ""))
    return out


def test_lm_sweep_keeps_the_stage1_budget_and_documents_it():
    module = sweep.load_sweep_module(str(LM))
    target = kernels.igc_param_count(40, 2, 9)
    assert target == 4640
    documented = _docstring_budgets(module)
    names = [n for n, _ in module.get_sweep()]
    assert set(documented) == set(names)
    for name in names:
        model = module.get_config(name).model
        assert model.depth == 8 and model.residual is False
        if model.name == "cifar_regconv":
            budget = 9 * model.width ** 2
        else:
            budget = kernels.igc_param_count(model.L, model.M, 9)
        assert documented[name] == budget, name
    on_budget = [(L, M) for L, M in module.IGC_POINTS if (L, M) not in ((24, 4), (24, 2))]
    assert {(64, 1), (40, 2)} <= set(on_budget) and (24, 4) in module.IGC_POINTS
    assert (24, 2) in module.IGC_POINTS and {"RegConv-W16", "RegConv-W18"} <= set(names)
    for L, M in on_budget:
        budget = kernels.igc_param_count(L, M, 9)
        assert abs(budget / target - 1) <= 0.05, (L, M)
        # L is the integer nearest the budget for this M.
        assert all(abs(kernels.igc_param_count(k, M, 9) - target) >= abs(budget - target)
                   for k in range(1, 200)), (L, M)


def test_lm_sweep_stage1_layer_parameters_match_the_model():
    """The docstring's budget is what the built network's first stage-1 IGC layer really holds."""
    module = sweep.load_sweep_module(str(LM))
    rows, _ = summary.summarize(module.get_config("L40M2"))
    first = next(r for r in rows if r.kind == "igc")
    assert first.params == 4640


def test_depth_sweep_has_every_combination():
    module = sweep.load_sweep_module(str(DEPTH))
    nets = {}
    for name, _ in module.get_sweep():
        m = module.get_config(name).model
        nets[name] = models.network_name(m)
    assert len(nets) == 3 * 4 * 2
    for d in (8, 20, 26):
        for base in ("RegConv-W16", "RegConv-W18", "SumFusion-L4M8", "IGC-L24M2"):
            assert nets[f"D{d}-{base}"] == f"{base} (D={d})"
            assert nets[f"D{d}-{base}-Ident"] == f"{base}+Ident. (D={d})"
    assert not module.residual_depth_ok(11) and module.residual_depth_ok(26)


def test_unknown_point_is_a_one_line_error_naming_the_valid_ones():
    module = sweep.load_sweep_module(str(LM))
    with pytest.raises(ValueError) as e:
        module.get_config("L41M2")
    msg = str(e.value)
    assert "\n" not in msg and "L41M2" in msg and "L40M2" in msg and "RegConv-W18" in msg


def test_no_argument_gives_the_base_config():
    module = sweep.load_sweep_module(str(LM))
    assert module.get_config().model.to_dict() == module.base_config().model.to_dict()


@pytest.mark.parametrize("path", [LM, DEPTH], ids=lambda p: p.name)
def test_dry_run_prints_exactly_one_command_per_point(path, tmp_path):
    rel = path.relative_to(ROOT)
    root = tmp_path / "root"
    r = subprocess.run([sys.executable, "-m", "igc_jax.sweep", f"--config={rel}",
                        f"--workdir={root}", "--dry_run", "--config.num_train_steps=7"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    names = [n for n, _ in sweep.sweep_points(str(path))]
    assert len(lines) == len(names)
    for line, name in zip(lines, names):
        assert shlex.split(line) == ["python", "-m", "igc_jax.main", f"--config={rel}:{name}",
                                     f"--workdir={root}/{name}", "--config.num_train_steps=7"]
    assert not root.exists()  # a dry run creates nothing


def test_dry_run_only_and_errors(tmp_path):
    base = [sys.executable, "-m", "igc_jax.sweep", f"--config={LM}", f"--workdir={tmp_path}",
            "--dry_run"]
    r = subprocess.run(base + ["--only=RegConv-W16,L64M1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    # Sweep order, not --only order.
    names = [shlex.split(line)[3].split(":")[-1] for line in r.stdout.splitlines()]
    assert names == ["L64M1", "RegConv-W16"]
    r = subprocess.run(base + ["--only=L99M9"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown sweep point(s) L99M9" in r.stderr
    r = subprocess.run(base + ["--epochs=3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--epochs=3" in r.stderr


# ---------------------------------------------------------------- runner logic, no training

def _tiny_sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_sweep.py"
    path.write_text(
        "import ml_collections\n"
        "from igc_jax import sweep\n"
        "def get_sweep():\n"
        "    return [('a', {'seed': 1}), ('b', {'seed': 2}), ('c', {'seed': 3})]\n"
        "def get_config(arg=None):\n"
        "    return sweep.point_config(ml_collections.ConfigDict({'seed': 0}), get_sweep(), arg)\n")
    return path


def _write_status(workdir: Path, status: str, step: int = 10, num_steps: int = 10) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "status.json").write_text(json.dumps({"status": status, "step": step,
                                                      "num_steps": num_steps}))


def test_run_sweep_skips_finished_reruns_others_and_continues_after_failure(tmp_path):
    path, root = _tiny_sweep_file(tmp_path), tmp_path / "root"
    _write_status(root / "a", "finished")
    _write_status(root / "b", "running", step=4)  # interrupted: must run again (it resumes)
    calls = []

    def fake_run(cmd):
        calls.append(cmd)
        name = cmd[3].split(":")[-1]
        _write_status(root / name, "failed" if name == "b" else "finished")
        return 1 if name == "b" else 0

    out = sweep.run_sweep(str(path), str(root), overrides=["--config.seed=5"], run=fake_run,
                          out=lambda s: None)
    assert out == {"a": "skipped", "b": "failed (rc 1)", "c": "ran"}
    assert [c[3] for c in calls] == [f"--config={path}:b", f"--config={path}:c"]
    assert calls[0][0] == sys.executable and calls[0][-1] == "--config.seed=5"
    # Again: a and c are finished now, b failed and is retried.
    calls.clear()
    out = sweep.run_sweep(str(path), str(root), run=fake_run, out=lambda s: None)
    assert out == {"a": "skipped", "b": "failed (rc 1)", "c": "skipped"} and len(calls) == 1


def test_time_budget_stop_is_not_done_and_preemption_stops_the_sweep(tmp_path):
    path, root = _tiny_sweep_file(tmp_path), tmp_path / "root"
    _write_status(root / "a", "finished", step=6, num_steps=10)  # max_train_seconds reached
    assert not sweep.is_finished(str(root / "a"))

    def preempted(cmd):
        _write_status(root / cmd[3].split(":")[-1], "preempted", step=3)
        return 0  # igc_jax.main exits 0 on preemption

    out = sweep.run_sweep(str(path), str(root), run=preempted, out=lambda s: None)
    assert out == {"a": "preempted"}  # b and c not started


def test_apply_overrides():
    base = configs.base_config()
    base.model = models.cifar_model("L24M2,D8")
    c = sweep.apply_overrides(base, {"model.L": 40, "dataset.num_classes": 100})
    assert (c.model.L, c.dataset.num_classes, base.model.L) == (40, 100, 24)
    c = sweep.apply_overrides(base, {"model": {"name": "cifar_regconv", "depth": 8, "width": 16,
                                               "residual": False}})
    assert "L" not in c.model and c.model.width == 16
    with pytest.raises(ValueError, match="no field 'model.Lx'"):
        sweep.apply_overrides(base, {"model.Lx": 3})
    with pytest.raises(ValueError, match="no field 'optim'"):
        sweep.apply_overrides(base, {"optim.lr": 3})
    with pytest.raises(TypeError):
        sweep.apply_overrides(base, {"batch_size": "big"})


def test_point_names_are_checked():
    with pytest.raises(ValueError, match="appears twice"):
        sweep.check_points([("a", {}), ("a", {})])
    with pytest.raises(ValueError, match="must match"):
        sweep.check_points([("a/b", {})])


def test_run_sweep_skips_a_live_point_and_reruns_a_dead_one(tmp_path):
    """A point another process is training (status "running", fresh heartbeat) is left to it;
    one whose heartbeat is stale died and is run again (it resumes)."""
    import time
    path, root = _tiny_sweep_file(tmp_path), tmp_path / "root"
    for name, age in (("a", 0), ("b", 3600)):
        (root / name).mkdir(parents=True)
        (root / name / "status.json").write_text(json.dumps({
            "status": "running", "step": 4, "num_steps": 10, "heartbeat": time.time() - age,
            "heartbeat_every_s": 30}))
    calls = []
    out = sweep.run_sweep(str(path), str(root), only=["a", "b"], run=lambda c: calls.append(c) or 0,
                          out=lambda s: None)
    assert out == {"a": "running elsewhere", "b": "ran"} and len(calls) == 1
