"""The results report over fabricated workdirs: finished, running, failed, preempted, unstarted."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from igc_jax import report, summary, sweep

ROOT = Path(__file__).resolve().parents[1]
DEPTH = sweep.load_sweep_module(str(ROOT / "experiments" / "cifar_depth_sweep.py"))

# point → (status, eval top-1 by step); top-1 values are exact in binary-ish decimal places.
RUNS = {
    "D8-RegConv-W16": ("finished", [0.50, 0.75, 0.70]),
    "D8-IGC-L24M2": ("finished", [0.55, 0.80, 0.78]),
    "D8-IGC-L24M2-Ident": ("running", [0.60]),
    "D8-SumFusion-L4M8": ("failed", []),
    "D8-RegConv-W18": ("preempted", [0.52, 0.74]),
}


def fabricate(workdir: Path, name: str, state: str, top1: list[float]) -> None:
    """What igc_jax.training.loop leaves in a workdir: config.json, metrics.jsonl, status.json."""
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(DEPTH.get_config(name).to_json_best_effort(indent=1))
    lines = []
    for i, acc in enumerate(top1, start=1):
        for k in range(1, 3):
            step = 100 * (i - 1) + 50 * k
            lines.append({"kind": "train", "step": step, "epoch": step / 100, "loss": 2.0 / step,
                          "accuracy": acc, "learning_rate": 0.1, "images_per_sec": 1000.0 + step})
        lines.append({"kind": "eval", "step": 100 * i, "epoch": float(i), "loss": 1.0, "top1": acc,
                      "top5": 0.99, "count": 10000})
    cut_short = '{"kind": "tr'  # the last line of a killed run
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + cut_short)
    step = 100 * len(top1)
    (workdir / "status.json").write_text(json.dumps({
        "status": state, "step": step, "num_steps": 300 if state != "finished" else step,
        "best_top1": max(top1) if top1 else None, "final_top1": top1[-1] if top1 else None,
        "images_per_sec": 1234.5 if top1 else None,
        "message": "parameters became non-finite by step 0" if state == "failed" else ""}))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    root = tmp / "sweep"
    for name, (state, top1) in RUNS.items():
        fabricate(root / name, name, state, top1)
    (root / "D8-IGC-L24M2-noquirk").mkdir()  # not a run dir: ignored
    # A lone run dir given directly, with only a config (started, nothing logged yet).
    lone = tmp / "lone"
    lone.mkdir()
    (lone / "config.json").write_text(DEPTH.get_config("D20-IGC-L24M2").to_json_best_effort())
    out = tmp / "out"
    assert report.main([str(root), str(lone), "--out", str(out)]) == 0
    return out


def table_rows(md: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split(" | ")]
            for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    header, *body = rows
    return {r[0]: dict(zip(header, r)) for r in body}


def test_every_run_has_a_row_with_its_numbers(made):
    rows = table_rows((made / "report.md").read_text())
    assert set(rows) == set(RUNS) | {"lone"}
    for name, (state, top1) in RUNS.items():
        r = rows[name]
        assert r["status"] == state
        assert r["best top-1"] == (f"{100 * max(top1):.2f}" if top1 else "n/a")
        assert r["final top-1"] == (f"{100 * top1[-1]:.2f}" if top1 else "n/a")
        _, t = summary.summarize(DEPTH.get_config(name))
        assert r["params"] == report.human(t["params"])
        assert r["mult-adds"] == report.human(t["macs"])
        assert r["depth"] == "8" and r["dataset"] == "cifar10"
    assert rows["D8-IGC-L24M2"]["network"] == "IGC-L24M2 (D=8)"
    assert (rows["D8-IGC-L24M2"]["L"], rows["D8-IGC-L24M2"]["M"]) == ("24", "2")
    assert (rows["D8-RegConv-W16"]["L"], rows["D8-RegConv-W16"]["M"]) == ("–", "–")
    assert rows["D8-IGC-L24M2"]["images/s"] == "1234"  # 1234.5 from status.json
    assert rows["D8-RegConv-W18"]["steps"] == "200/300"
    assert rows["lone"]["status"] == "not started" and rows["lone"]["depth"] == "20"


def test_unfinished_runs_are_listed_with_their_state(made):
    md = (made / "report.md").read_text()
    not_finished = md.split("Not finished:")[1]
    assert "`D8-IGC-L24M2-Ident`: running" in not_finished
    assert "`D8-SumFusion-L4M8`: failed (parameters became non-finite by step 0)" in not_finished
    assert "`D8-RegConv-W18`: preempted" in not_finished
    assert "`D8-IGC-L24M2`:" not in not_finished and "`D8-RegConv-W16`:" not in not_finished


def test_json_rows_match_the_table(made):
    rows = {r["run"]: r for r in json.loads((made / "report.json").read_text())}
    assert rows["D8-IGC-L24M2"]["best_top1"] == 0.80 and rows["D8-IGC-L24M2"]["final_top1"] == 0.78
    assert rows["D8-IGC-L24M2"]["family"] == "IGC"
    assert rows["D8-IGC-L24M2-Ident"]["family"] == "IGC+Ident."
    _, w16 = summary.summarize(DEPTH.get_config("D8-RegConv-W16"))
    assert rows["D8-RegConv-W16"]["params"] == w16["params"]


def test_plots_are_written_and_linked(made):
    md = (made / "report.md").read_text()
    for name in report.PLOTS:
        assert (made / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        h, w, _ = matplotlib.image.imread(made / name).shape
        assert h >= 300 and w >= 500
        assert f"({name})" in md


def test_bad_paths_are_one_line_errors(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "neither a run workdir" in err
