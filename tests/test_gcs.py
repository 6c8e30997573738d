"""gs:// end to end, against a real GCS JSON API served on 127.0.0.1 by gcp-storage-emulator.

A tiny TFDS imagenet2012 (built as in test_data_tfds.py) is uploaded to gs://, and a short run
with its workdir on gs:// trains on it, is stopped by a real SIGTERM, resumes, and survives a
corrupted latest checkpoint (moved to gs://.../checkpoints_corrupt/). gcsfs (behind etils epath)
and tensorstore (behind orbax) are pointed at the emulator through their environment variables.
Skipped, not failed, when the emulator cannot start (tests/gcs_emulator.py runs it).
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
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
from run_utils import free_port, tiny_config  # noqa: E402
from test_data_tfds import _tiny_builder  # noqa: E402

BUCKET = "igc-test"


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


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
    if not _wait_for_port(port, proc, 30):
        proc.kill()
        pytest.skip("gcp-storage-emulator did not start listening within 30 s")
    url = f"http://127.0.0.1:{port}"
    env = {"STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
           "FSSPEC_GCS_TOKEN": "anon", "FSSPEC_GCS_PROJECT": "test",
           "TENSORSTORE_GCS_HTTP_URL": url, "TENSORSTORE_GCS_HTTP_VERSION": "1.1",
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "TENSORSTORE_GCS_REQUEST_CONCURRENCY": "1",
           "IGC_JAX_DATA_CACHE": str(tmp_path_factory.mktemp("data_cache"))}
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
def gcs_tfds(gcs, tmp_path_factory) -> str:
    local = tmp_path_factory.mktemp("tfds_upload")
    tfds.disable_progress_bar()
    _tiny_builder("imagenet2012", local).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    _upload(local, epath.Path(gcs) / "tfds")
    return f"{gcs}/tfds"


def _config(data_dir: str, **overrides):
    c = tiny_config(**overrides)
    c.dataset.update(name="imagenet2012", data_dir=data_dir, num_classes=1000, image_size=16,
                     normalization="imagenet", augment="imagenet_inception", num_workers=0)
    c.batch_size, c.eval_batch_size = 4, 4
    return c


def _steps(path: epath.Path) -> list[int]:
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


def test_tfds_data_dir_on_gs_is_read_through_a_one_time_local_copy(gcs_tfds):
    config = _config(gcs_tfds)
    info = data.dataset_info(config.dataset)
    assert info == data.DatasetInfo("imagenet2012", 1000, (16, 16, 3), 20, 7)
    split = sources.open_split(config.dataset, "train", info)
    assert not sources.is_remote(split.data_dir)          # workers open the local copy
    assert split.data_dir.startswith(os.environ["IGC_JAX_DATA_CACHE"])
    images, labels = split.read(np.arange(20))
    assert all(isinstance(im, bytes) for im in images)       # stored JPEGs, decoded by us
    assert sorted(labels.tolist()) == list(range(20))
    missing = _config(f"{gcs_tfds}_absent")
    with pytest.raises(data.DataError, match="does not exist"):
        data.dataset_info(missing.dataset)


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


def test_the_command_line_with_a_gs_workdir_is_preempted_and_resumes(gcs_tfds, gcs):
    """`python -m igc_jax.main --workdir=gs://...` as a user runs it: SIGTERM mid-run is exit 0
    with a checkpoint on gs://, and the same command then finishes from there."""
    from run_utils import ROOT, env_with_devices, main_cmd

    workdir = f"{gcs}/cli"
    flags = ["--config.model.depth=5", "--config.model.L=2", "--config.model.M=2",
             "--config.dataset.name=imagenet2012", f"--config.dataset.data_dir={gcs_tfds}",
             "--config.dataset.num_classes=1000", "--config.dataset.image_size=16",
             "--config.dataset.normalization=imagenet",
             "--config.dataset.augment=imagenet_inception",
             "--config.dataset.num_workers=0", "--config.batch_size=4",
             "--config.eval_batch_size=4", "--config.log_every_steps=1",
             "--config.checkpoint_every_steps=2", "--config.eval_every_steps=1000"]
    env = env_with_devices(1)
    proc = subprocess.Popen(main_cmd(workdir, *flags, "--config.num_train_steps=100000"),
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _steps(
            epath.Path(workdir) / "checkpoints"):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "preempted: checkpoint saved at step" in out
    saved = json.loads((epath.Path(workdir) / "status.json").read_text())
    assert saved["status"] == "preempted"
    r = subprocess.run(main_cmd(workdir, *flags, f"--config.num_train_steps={saved['step'] + 2}"),
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    final = json.loads((epath.Path(workdir) / "status.json").read_text())
    assert final["status"] == "finished" and final["step"] == saved["step"] + 2
