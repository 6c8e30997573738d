"""gs:// end to end, against a real GCS JSON API served on 127.0.0.1 by gcp-storage-emulator.

A tiny TFDS imagenet2012 (built as in test_data_tfds.py) is uploaded to gs://, and a short run
with its workdir on gs:// trains on it, is stopped by a real SIGTERM, resumes, and survives a
corrupted latest checkpoint (moved to gs://.../checkpoints_corrupt/). The record files are read
on gs:// in place (ArrayRecord's own GCS reader, no local copy unless $IGC_JAX_DATA_CACHE asks for
one). gcsfs (behind etils epath), tensorstore (behind orbax) and google-cloud-cpp (behind
ArrayRecord) are pointed at the emulator through their environment variables.
Skipped, not failed, when the emulator cannot start (tests/gcs_emulator.py runs it).
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("gcsfs") is None:     # not imported here: it reads its settings
    pytest.skip("gcsfs is not installed", allow_module_level=True)     # at import
tfds = pytest.importorskip("tensorflow_datasets")

from etils import epath  # noqa: E402

from igc_jax import data  # noqa: E402
from igc_jax.data import sources  # noqa: E402
from igc_jax.training import loop  # noqa: E402
from igc_jax.training.checkpoint import files_under  # noqa: E402
from gcs_fault_proxy import client_env, wait_for_port  # noqa: E402
from run_utils import free_port, tiny_config  # noqa: E402
from test_data_tfds import _tiny_builder  # noqa: E402

BUCKET = "igc-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """gs://igc-test on a local emulator; the clients of this process (and its children) use it."""
    port = free_port()
    try:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("gcs_emulator.py")), str(port), BUCKET],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as e:
        pytest.skip(f"gcp-storage-emulator cannot start: {e}")
    if not wait_for_port(port, proc, 30):
        proc.kill()
        pytest.skip("gcp-storage-emulator did not start listening within 30 s")
    url = f"http://127.0.0.1:{port}"
    env = {**client_env(url), "IGC_JAX_DATA_CACHE": ""}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import gcsfs
    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
        yield f"gs://{BUCKET}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        gcsfs.GCSFileSystem.clear_instance_cache()
        proc.kill()
        proc.wait()


def _upload(local: Path, remote: epath.Path) -> None:
    for f in local.rglob("*"):
        if f.is_file():
            target = remote / str(f.relative_to(local))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())


@pytest.fixture(scope="module")
def local_tfds(tmp_path_factory) -> Path:
    local = tmp_path_factory.mktemp("tfds_upload")
    tfds.disable_progress_bar()
    _tiny_builder("imagenet2012", local).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return local


@pytest.fixture(scope="module")
def gcs_tfds(gcs, local_tfds) -> str:
    _upload(local_tfds, epath.Path(gcs) / "tfds")
    return f"{gcs}/tfds"


def _config(data_dir: str, **overrides):
    c = tiny_config(**overrides)
    c.dataset.update(name="imagenet2012", data_dir=data_dir, num_classes=1000, image_size=16,
                     normalization="imagenet", augment="imagenet_inception", num_workers=0)
    c.batch_size, c.eval_batch_size = 4, 4
    return c


def _steps(path: epath.Path) -> list[int]:
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


def test_tfds_data_dir_on_gs_is_read_in_place(gcs_tfds):
    config = _config(gcs_tfds)
    info = data.dataset_info(config.dataset)
    assert info == data.DatasetInfo("imagenet2012", 1000, (16, 16, 3), 20, 7)
    split = sources.open_split(config.dataset, "train", info)
    assert split.data_dir == gcs_tfds                     # no copy: workers read gs:// too
    images, labels = split.read(np.arange(20))
    assert all(isinstance(im, bytes) for im in images)       # stored JPEGs, decoded by us
    assert sorted(labels.tolist()) == list(range(20))
    missing = _config(f"{gcs_tfds}_absent")
    with pytest.raises(data.DataError, match="does not exist"):
        data.dataset_info(missing.dataset)


def test_the_local_cache_is_an_explicit_option(gcs_tfds, local_tfds, tmp_path, monkeypatch):
    monkeypatch.setenv("IGC_JAX_DATA_CACHE", str(tmp_path / "cache"))
    sources._tfds_builder.cache_clear()
    try:
        config = _config(gcs_tfds)
        info = data.dataset_info(config.dataset)
        split = sources.open_split(config.dataset, "train", info)
        assert split.data_dir.startswith(str(tmp_path / "cache"))
        cached = sorted(p.name for p in Path(split.data_dir).rglob("*.array_record*"))
        assert cached == sorted(p.name for p in local_tfds.rglob("*.array_record*"))
        assert np.array_equal(split.read(np.arange(20))[1],
                              sources.open_split(_config(str(local_tfds)).dataset, "train",
                                                 info).read(np.arange(20))[1])
    finally:
        sources._tfds_builder.cache_clear()


def test_training_on_gs_is_preempted_resumes_and_survives_a_corrupt_checkpoint(
        gcs_tfds, gcs, monkeypatch):
    workdir = f"{gcs}/run"
    wd = epath.Path(workdir)
    real = data.train_iterator

    def sigterm_after_six_batches(*args, **kwargs):
        it = real(*args, **kwargs)
        original = it.__next__

        def next_then_sigterm():
            batch = original()
            if it.get_state()["step"] == 6:
                os.kill(os.getpid(), signal.SIGTERM)       # the real signal, mid-run
            return batch

        it.__next__ = next_then_sigterm
        return _Wrapped(it, next_then_sigterm)

    monkeypatch.setattr(data, "train_iterator", sigterm_after_six_batches)
    config = _config(gcs_tfds, num_train_steps=40, checkpoint_every_steps=2,
                     eval_every_steps=1000)
    with pytest.raises(loop.Preempted, match="checkpoint saved at step 6"):
        loop.train_and_evaluate(config, workdir)
    monkeypatch.setattr(data, "train_iterator", real)
    assert _steps(wd / "checkpoints") == [2, 4, 6]
    assert json.loads((wd / "status.json").read_text())["status"] == "preempted"

    # Damage the newest checkpoint: every array file of its state goes.
    damaged = [f for f in files_under(wd / "checkpoints" / "6" / "state")
               if "ocdbt.process_0" in str(f)]
    assert damaged
    for f in damaged:
        f.unlink()
    config = _config(gcs_tfds, num_train_steps=8, checkpoint_every_steps=2,
                     eval_every_steps=1000)
    status = loop.train_and_evaluate(config, workdir)
    assert status["status"] == "finished" and status["step"] == 8
    assert _steps(wd / "checkpoints_corrupt") == [6]
    assert _steps(wd / "checkpoints")[-1] == 8
    records = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))
    assert list((wd / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((wd / "status.json").read_text())["status"] == "finished"

    # The sweep's status check and the report read the gs:// run and write to gs://.
    from igc_jax import report, sweep
    assert sweep.is_finished(workdir)
    runs, md = report.make_report([workdir], f"{gcs}/report")
    assert len(runs) == 1 and runs[0].status["status"] == "finished"
    assert str(md) == f"{gcs}/report/report.md" and epath.Path(md).read_text()
    assert all((epath.Path(gcs) / "report" / name).exists() for name in report.PLOTS)


class _Wrapped:
    """The iterator with its __next__ replaced (dunder lookups go through the type)."""

    def __init__(self, it, next_fn):
        self._it, self._next = it, next_fn

    def __iter__(self):
        return self

    def __next__(self):
        return self._next()

    def __getattr__(self, name):
        return getattr(self._it, name)


def _cli_flags(data_dir: str, *extra: str) -> list[str]:
    return ["--config.model.depth=5", "--config.model.L=2", "--config.model.M=2",
            "--config.dataset.name=imagenet2012", f"--config.dataset.data_dir={data_dir}",
            "--config.dataset.num_classes=1000", "--config.dataset.image_size=16",
            "--config.dataset.normalization=imagenet_igc_mxnet",
            "--config.dataset.augment=imagenet_mxnet",
            "--config.dataset.num_workers=0", "--config.batch_size=4",
            "--config.eval_batch_size=4", "--config.log_every_steps=1", *extra]


def _records(workdir: str, kind: str) -> list[dict]:
    lines = (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if k != "images_per_sec"}
            for r in map(json.loads, lines) if r["kind"] == kind]


def test_the_command_line_trains_on_gs_data_is_preempted_resumes_exactly_and_evaluates(
        gcs_tfds, gcs):
    """`python -m igc_jax.main` with data and workdir on gs:// (the ImageNet configs' recipe,
    read in place): SIGTERM mid-run is exit 0 with a checkpoint on gs://, the same command
    finishes from there, and every logged loss and evaluation equals an uninterrupted run's."""
    from run_utils import ROOT, env_with_devices, main_cmd

    steps = 300
    flags = _cli_flags(gcs_tfds, f"--config.num_train_steps={steps}",
                       "--config.checkpoint_every_steps=10",
                       f"--config.eval_every_steps={steps // 2}")
    env = env_with_devices(1)
    workdir = f"{gcs}/cli"
    proc = subprocess.Popen(main_cmd(workdir, *flags), env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _steps(
            epath.Path(workdir) / "checkpoints"):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "preempted: checkpoint saved at step" in out
    saved = json.loads((epath.Path(workdir) / "status.json").read_text())
    assert saved["status"] == "preempted" and saved["step"] < steps
    for wd in (workdir, f"{gcs}/cli_whole"):
        r = subprocess.run(main_cmd(wd, *flags), env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        final = json.loads((epath.Path(wd) / "status.json").read_text())
        assert final["status"] == "finished" and final["step"] == steps
    resumed, whole = _records(workdir, "train"), _records(f"{gcs}/cli_whole", "train")
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    assert resumed == whole
    evals = _records(workdir, "eval")
    assert [r["step"] for r in evals] == [steps // 2, steps] and evals == _records(
        f"{gcs}/cli_whole", "eval")
    assert all(0 <= r["top1"] <= 1 for r in evals)


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_missing_or_unreadable_object_is_one_line_naming_it(gcs, local_tfds, damage):
    from run_utils import ROOT, env_with_devices, main_cmd

    root = epath.Path(gcs) / f"damaged_{damage}"
    _upload(local_tfds, root)
    version = next((root / "imagenet2012").iterdir())
    shard = next(p for p in version.iterdir() if "train.array_record" in p.name)
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(b"not an array_record file" * 1000)
    r = subprocess.run(main_cmd(f"{gcs}/run_{damage}", *_cli_flags(str(root),
                                                                   "--config.num_train_steps=2")),
                       env=env_with_devices(1), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()           # gcsfs's absl logging may come first
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and str(shard) in errors[0], lines
    assert "Traceback" not in r.stderr
