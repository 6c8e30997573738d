"""Every user error is one line and exit 2 before anything is built or written; a bug is not.

One table of bad inputs (config fields, flags, data, paths), each run through the real command
line, `python -m igc_jax.main`, against a copy of a workdir that already holds checkpoints: each
must exit 2 with exactly one line on stderr, `error: ...`, naming the culprit, and leave every
file of the workdir byte-for-byte as it was. Nothing on stderr is filtered: these runs stop before
training, so no progress bar or library warning may appear either.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from igc_jax.training import loop as train
from run_utils import (QUICKSTART, ROOT, TINY, env_with_devices, main_cmd, run_main, status,
                       tiny_config, train_losses)

BASE_STEPS = 4
BASE = (*TINY, f"--config.num_train_steps={BASE_STEPS}", "--config.checkpoint_every_steps=2")
PARALLEL = 3


def _npz(d: Path, split: str, images: np.ndarray | None = None, labels=None, **arrays) -> None:
    """One <split>.npz in the arrays format (8×8×1 uint8, 10 classes) unless told otherwise."""
    n = 40
    images = np.zeros((n, 8, 8, 1), np.uint8) if images is None else images
    labels = np.arange(len(images)) % 10 if labels is None else np.asarray(labels)
    np.savez(d / f"{split}.npz", **({"image": images, "label": labels} | arrays))


def _arrays(tmp: Path, *, train=None, test=None, raw_train: bytes | None = None,
            train_kwargs: dict | None = None) -> list[str]:
    """A fresh arrays folder, the flags that select it, and the train split as given."""
    d = tmp / "arrays"
    d.mkdir()
    if raw_train is not None:
        (d / "train.npz").write_bytes(raw_train)
    elif train != "absent":
        _npz(d, "train", **(train_kwargs or {}))
    _npz(d, "test", **(test or {}))
    return ["--config.dataset.name=arrays", f"--config.dataset.data_dir={d}"]


def _no_label(tmp: Path) -> list[str]:
    d = tmp / "arrays"
    d.mkdir()
    np.savez(d / "train.npz", image=np.zeros((40, 8, 8, 1), np.uint8))
    _npz(d, "test")
    return ["--config.dataset.name=arrays", f"--config.dataset.data_dir={d}"]


def _bad_config_json(tmp: Path, wd: Path) -> list[str]:
    (wd / "config.json").write_text("{not json")
    return []


def _workdir_is_file(tmp: Path, wd: Path) -> list[str]:
    return [f"--workdir={wd / 'config.json'}"]


def _config_file_without_field(tmp: Path) -> list[str]:
    path = tmp / "typo.py"
    path.write_text(textwrap.dedent(f"""\
        import importlib.util
        spec = importlib.util.spec_from_file_location("qs", {str(QUICKSTART)!r})
        qs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(qs)

        def get_config(arg=None):
            c = qs.get_config()
            c.learning_rat = 0.1
            return c
        """))
    return [f"--config={path}"]


# name → (flags, or a function (tmp, workdir) -> flags, that builds what they need;
#         words the one line must contain; extra environment; simulated devices)
Case = tuple[list[str] | Callable[..., list[str]], tuple[str, ...], dict, int]
CASES: dict[str, Case] = {
    # config fields
    "log_every_steps=0": (["--config.log_every_steps=0"], ("log_every_steps", "0"), {}, 1),
    "checkpoint_every_steps=0": (["--config.checkpoint_every_steps=0"],
                                 ("checkpoint_every_steps",), {}, 1),
    "eval_every_steps=-1": (["--config.eval_every_steps=-1"], ("eval_every_steps", "-1"), {}, 1),
    "keep_checkpoints=0": (["--config.keep_checkpoints=0"], ("keep_checkpoints",), {}, 1),
    "sigterm_check_every_steps=0": (["--config.sigterm_check_every_steps=0"],
                                    ("sigterm_check_every_steps",), {}, 1),
    "profile_steps backwards": (["--config.profile_steps=5:3"], ("profile_steps", "5:3"), {}, 1),
    "profile_steps not START:STOP": (["--config.profile_steps=soon"], ("profile_steps", "soon"),
                                     {}, 1),
    "profile_steps after the run": (["--config.profile_steps=10:12"],
                                    ("profile_steps", f"{BASE_STEPS} steps"), {}, 1),
    "batch_norm unknown": (["--config.batch_norm=local"], ("batch_norm", "local"), {}, 1),
    "learning_rate negative": (["--config.learning_rate=-0.1"], ("learning_rate", "-0.1"), {}, 1),
    "momentum >= 1": (["--config.momentum=1.5"], ("momentum", "1.5"), {}, 1),
    "lr_schedule unknown": (["--config.lr_schedule=cosine"], ("lr_schedule", "cosine"), {}, 1),
    "dtype unknown": (["--config.dtype=float16"], ("dtype", "float16"), {}, 1),
    "conv_mode unknown": (["--config.conv_mode=winograd"], ("conv_mode", "winograd"), {}, 1),
    "no training length": (["--config.num_train_steps=-1", "--config.num_epochs=0"],
                           ("num_epochs", "num_train_steps"), {}, 1),
    "warmup longer than training": (["--config.num_train_steps=-1", "--config.num_epochs=1",
                                     "--config.warmup_epochs=2"], ("warmup_epochs",), {}, 1),
    "eval_batch_size=0": (["--config.eval_batch_size=0"], ("eval_batch_size",), {}, 1),
    "batch larger than the data": (["--config.batch_size=2048"], ("batch_size=2048", "1347"),
                                   {}, 1),
    "batch not divisible by devices": (["--config.batch_size=30"],
                                       ("batch_size=30", "4 devices"), {}, 4),
    "num_workers negative": (["--config.dataset.num_workers=-2"], ("dataset.num_workers",), {}, 1),
    "color_jitter > 1": (["--config.dataset.color_jitter=2.0"], ("dataset.color_jitter",), {}, 1),
    "augment unknown": (["--config.dataset.augment=autoaugment"], ("augment", "autoaugment"),
                        {}, 1),
    "init unknown": (["--config.model.init=xavier"], ("model.init", "xavier"), {}, 1),
    "wrong class count": (["--config.dataset.num_classes=100"], ("num_classes=100", "10"), {}, 1),
    "wrong image size": (["--config.dataset.image_size=32"], ("image_size=32", "8×8"), {}, 1),
    "normalization of 3 channels": (["--config.dataset.normalization=imagenet"],
                                    ("normalization", "imagenet", "1"), {}, 1),
    "dataset unknown": (["--config.dataset.name=mnist"], ("mnist",), {}, 1),
    "model unknown": (["--config.model.name=resnet9000"], ("resnet9000",), {}, 1),
    "depth not 3B+2": (["--config.model.depth=7"], ("depth 7",), {}, 1),
    "model.M=0": (["--config.model.M=0"], ("model.M", "0"), {}, 1),
    "field unknown to the config file": (_config_file_without_field, ("learning_rat",), {}, 1),
    # flags
    "config file missing": (["--config=experiments/no_such_file.py"], ("no_such_file.py",), {}, 1),
    "config argument it takes none": ([f"--config={QUICKSTART}:big"], ("takes no argument",
                                                                       "'big'"), {}, 1),
    "override of no field": (["--config.nosuch=1"], ("nosuch",), {}, 1),
    "override of the wrong type": (["--config.batch_size=lots"], ("batch_size", "lots"), {}, 1),
    "unknown flag": (["--bogus_flag=1"], ("bogus_flag",), {}, 1),
    "coordinator without processes": (["--coordinator_address=127.0.0.1:1234"],
                                       ("--num_processes", "--process_id"), {}, 1),
    "processes without coordinator": (["--num_processes=2", "--process_id=0"],
                                      ("--coordinator_address",), {}, 1),
    "process_id out of range": (["--coordinator_address=127.0.0.1:1234", "--num_processes=2",
                                 "--process_id=5"], ("--process_id=5",), {}, 1),
    "coordinator without a port": (["--coordinator_address=somehost", "--num_processes=2",
                                    "--process_id=0"], ("somehost", "HOST:PORT"), {}, 1),
    "native without a compiler": (["--config.conv_mode=native"], ("native", "/nonexistent/g++"),
                                  {"CXX": "/nonexistent/g++"}, 1),
    # paths
    "workdir under /dev/null": (["--workdir=/dev/null/x"], ("/dev/null",), {}, 1),
    "workdir is a file": (_workdir_is_file, ("config.json", "not a directory"), {}, 1),
    "workdir config.json damaged": (_bad_config_json, ("config.json", "unreadable"), {}, 1),
    "workdir of another network": (["--config.model.depth=8"], ("model.depth: 5 -> 8",), {}, 1),
    # data (the arrays format)
    "arrays without data_dir": (["--config.dataset.name=arrays"], ("dataset.data_dir",), {}, 1),
    "arrays folder missing": (["--config.dataset.name=arrays",
                               "--config.dataset.data_dir=/nonexistent/arrays"],
                              ("/nonexistent/arrays",), {}, 1),
    "arrays without train files": (lambda tmp: _arrays(tmp, train="absent"), ("train*.npz",),
                                   {}, 1),
    "arrays file not an npz": (lambda tmp: _arrays(tmp, raw_train=b"not a zip file"),
                               ("train.npz",), {}, 1),
    "arrays without labels": (_no_label, ("train.npz", "'label'"), {}, 1),
    "arrays images not uint8": (lambda tmp: _arrays(tmp, train_kwargs={
        "images": np.zeros((40, 8, 8, 1), np.float32)}), ("train.npz", "float32"), {}, 1),
    "arrays label out of range": (lambda tmp: _arrays(tmp, train_kwargs={
        "labels": [0, 1, 2, 10] + [0] * 36}), ("train.npz", "label 10", "index 3"), {}, 1),
    "arrays train and test shapes differ": (lambda tmp: _arrays(tmp, test={
        "images": np.zeros((40, 9, 9, 1), np.uint8)}), ("test images",), {}, 1),
}


def _tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file under root (and each directory's presence), by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory) -> Path:
    """A finished tiny digits run with checkpoints at steps 2 and 4, built once and copied."""
    wd = tmp_path_factory.mktemp("base") / "run"
    train.train_and_evaluate(tiny_config(num_train_steps=BASE_STEPS, checkpoint_every_steps=2),
                             str(wd))
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["2", "4"]
    return wd


def _run_case(name: str, root: Path, base: Path) -> tuple[str, subprocess.CompletedProcess,
                                                          dict, dict, Path]:
    flags, _, env, devices = CASES[name]
    tmp = root / name.replace(" ", "_").replace("/", "_")
    tmp.mkdir()
    wd = tmp / "run"
    shutil.copytree(base, wd)
    if callable(flags):
        takes_workdir = flags.__code__.co_argcount == 2
        flags = flags(tmp, wd) if takes_workdir else flags(tmp)
    before = _tree_hash(wd)
    config = [f for f in flags if f.startswith("--config=")]
    rest = [f for f in flags if not f.startswith("--config=")]
    workdir = [f for f in rest if f.startswith("--workdir=")]
    rest = [f for f in rest if not f.startswith("--workdir=")]
    cmd = main_cmd(wd, *BASE, *rest)
    for given in config + workdir:  # in place of the default, before the overrides
        flag = given.split("=", 1)[0] + "="
        cmd = [given if c.startswith(flag) else c for c in cmd]
    full_env = env_with_devices(devices, IGC_JAX_NATIVE_CACHE=str(tmp / "native_cache"), **env)
    r = subprocess.run(cmd, env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return name, r, before, _tree_hash(wd), tmp


def test_every_bad_input_is_one_line_exit_2_and_leaves_the_workdir_unchanged(
        tmp_path, run_with_checkpoints):
    failures = []
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        runs = list(pool.map(lambda n: _run_case(n, tmp_path, run_with_checkpoints), CASES))
    for name, r, before, after, tmp in runs:
        words = CASES[name][1]
        lines = r.stderr.splitlines()
        problems = []
        if r.returncode != 2:
            problems.append(f"exit {r.returncode}")
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"{len(lines)} stderr lines")
        elif missing := [w for w in words if w not in lines[0]]:
            problems.append(f"message lacks {missing}")
        if before != after:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            problems.append(f"workdir changed: {changed[:5]}")
        if Path("/dev/null/x").exists():
            problems.append("created /dev/null/x")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}: {r.stderr[-600:]!r}")
    assert not failures, "\n".join(failures)


def test_a_bug_keeps_its_traceback_and_exits_1(tmp_path):
    """A plain ValueError from deep inside (here: building the model) is a bug, not the user's."""
    code = textwrap.dedent("""\
        import sys
        from igc_jax.training import steps
        def make_model(config, *args, **kwargs):
            raise ValueError("an internal invariant broke")
        steps.make_model = make_model
        from igc_jax import main
        sys.argv = ["igc_jax.main", *sys.argv[1:]]
        main.run()
        """)
    cmd = [sys.executable, "-c", code, *main_cmd(tmp_path / "wd", *BASE)[3:]]
    r = subprocess.run(cmd, env=env_with_devices(1), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback (most recent call last)" in r.stderr
    assert "ValueError: an internal invariant broke" in r.stderr
    assert not any(line.startswith("error: ") for line in r.stderr.splitlines())


# ---------------------------------------------------------------- data problems found later

def _compressed_arrays(d: Path, n: int = 2048) -> None:
    """Compressible 8×8×1 images (so that damage can break the deflate stream), 10 classes."""
    rng = np.random.default_rng(0)
    d.mkdir(exist_ok=True)
    for split in ("train", "test"):
        images = ((np.arange(n * 64).reshape(n, 8, 8, 1) % 7) * 30
                  + rng.integers(0, 2, (n, 8, 8, 1))).astype(np.uint8)
        np.savez_compressed(d / f"{split}.npz", image=images, label=rng.integers(0, 10, n))


def _damage_image_member(path: Path) -> None:
    """Flip bytes inside 'image.npy''s deflate stream so that reading it raises zlib.error while
    its .npy header (what the start-up checks read) still reads."""
    good = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("image.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for offset in range(1500, info.compress_size - 64, 7):
        damaged = bytearray(good)
        damaged[start + offset:start + offset + 16] = bytes(b ^ 0xFF for b in
                                                              damaged[start + offset:
                                                                      start + offset + 16])
        path.write_bytes(bytes(damaged))
        try:
            with np.load(path) as z:
                z["image"]
        except zlib.error:
            try:
                with zipfile.ZipFile(path) as z, z.open("image.npy") as member:
                    np.lib.format.read_magic(member)
                return
            except Exception:
                continue
        except Exception:
            continue
    raise AssertionError("found no damage that raises zlib.error")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_damaged_data_found_later_stops_with_one_line_and_the_next_start_resumes(
        tmp_path, num_workers):
    d = tmp_path / "arrays"
    _compressed_arrays(d)
    good = (d / "train.npz").read_bytes()
    flags = (*TINY, "--config.dataset.name=arrays", f"--config.dataset.data_dir={d}",
             "--config.batch_size=16", "--config.eval_batch_size=512",
             "--config.checkpoint_every_steps=2", f"--config.dataset.num_workers={num_workers}")
    wd = tmp_path / "run"
    r = run_main(wd, *flags, "--config.num_train_steps=4")
    assert r.returncode == 0, r.stderr[-2000:]
    saved = {k: v for k, v in _tree_hash(wd).items() if k.startswith("checkpoints")}

    _damage_image_member(d / "train.npz")
    r = run_main(wd, *flags, "--config.num_train_steps=8")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    # Training had started: the progress bar (and, with workers, multiprocessing's warnings)
    # share stderr, so only the `error:` lines are counted here.
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-2000:]
    assert f"{d / 'train.npz'}" in errors[0] and "'image'" in errors[0], errors
    assert {k: v for k, v in _tree_hash(wd).items() if k.startswith("checkpoints")} == saved
    assert status(wd)["status"] == "failed" and status(wd)["step"] == 4

    (d / "train.npz").write_bytes(good)
    r = run_main(wd, *flags, "--config.num_train_steps=8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert status(wd)["status"] == "finished" and status(wd)["step"] == 8
    assert len(train_losses(wd)) == 8  # steps 1–4, then 5–8 after resuming from step 4


def test_a_dead_data_worker_stops_with_one_line_and_the_next_start_resumes(tmp_path):
    d = tmp_path / "arrays"
    _compressed_arrays(d, n=256)
    flags = (*TINY, "--config.dataset.name=arrays", f"--config.dataset.data_dir={d}",
             "--config.batch_size=16", "--config.eval_batch_size=256",
             "--config.checkpoint_every_steps=2", "--config.dataset.num_workers=1")
    wd = tmp_path / "run"
    proc = subprocess.Popen(main_cmd(wd, *flags, "--config.num_train_steps=100000"),
                            env=env_with_devices(1), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not ((wd / "checkpoints" / "4").is_dir()):
            time.sleep(0.2)
        workers = _children(proc.pid, "spawn_main")
        assert workers, "no grain worker process found"
        for pid in workers:
            os.kill(pid, 9)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "data worker process died" in errors[0], err[-2000:]
    assert "training batch" in errors[0] and str(d / "train.npz") in errors[0], errors
    last = max(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    r = run_main(wd, *flags, f"--config.num_train_steps={last + 2}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert status(wd)["step"] == last + 2 and len(train_losses(wd)) == last + 2


def _children(pid: int, needle: str) -> list[int]:
    """Child processes of `pid` whose command line contains `needle` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and needle in cmdline:
            out.append(int(entry.name))
    return out


# ---------------------------------------------------------------- the other tools, and the schema

OTHER_TOOLS = {
    "evaluate": (["igc_jax.evaluate", f"--config={QUICKSTART}", "--checkpoint=/nonexistent/ck"],
                 "/nonexistent/ck"),
    "summary": (["igc_jax.summary", "--config=experiments/no_such_file.py"], "no_such_file.py"),
    "sweep": (["igc_jax.sweep", f"--config={QUICKSTART}", "--workdir=/tmp/unused", "--dry_run"],
              "get_sweep"),
    "report": (["igc_jax.report", "/nonexistent/runs"], "/nonexistent/runs"),
    "convert_mxnet": (["igc_jax.convert_mxnet", "--symbol=/nonexistent/s.json",
                       "--params=/nonexistent/p.params", "--out=/tmp/unused"], "--symbol"),
}


def test_the_other_tools_report_a_user_error_as_one_line_exit_2():
    def run(args):
        return subprocess.run([sys.executable, "-m", *args], env=env_with_devices(1), cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        results = dict(zip(OTHER_TOOLS, pool.map(run, (a for a, _ in OTHER_TOOLS.values()))))
    for tool, r in results.items():
        lines = r.stderr.splitlines()
        assert r.returncode == 2, (tool, r.returncode, r.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (tool, r.stderr[-2000:])
        assert OTHER_TOOLS[tool][1] in lines[0], (tool, lines)


def test_every_config_field_has_a_check_that_rejects_a_wrong_type():
    """Every schema field's check rejects a value of no type it allows, naming the field."""
    from igc_jax.configs import schema
    from igc_jax.errors import UserError
    from igc_jax.training import validate

    for key in sorted(f.key for f in schema.FIELDS):
        c = tiny_config()
        c.unlock()
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node._fields[leaf] = object()  # bypass ConfigDict's type lock, as a config file could
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            validate.validate(c)
