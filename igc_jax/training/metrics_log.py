"""What a user sees of a run: metrics.jsonl, TensorBoard events (no TensorFlow), a progress bar.

Only process 0 writes; every other process gets a disabled log. Paths go through etils epath: on
an object store (gs://), which cannot append, metrics.jsonl is rewritten whole at each record and
the TensorBoard events are written to a local staging folder and copied to
<workdir>/tensorboard at every flush.
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
from typing import Any

from etils import epath
from tqdm import tqdm

log = logging.getLogger(__name__)


class _Progress:
    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                        dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
        self.step = initial

    def update(self, step: int) -> None:
        self.bar.update(step - self.step)
        self.step = step

    def describe(self, **fields: Any) -> None:
        self.bar.set_postfix(fields, refresh=False)

    def close(self) -> None:
        self.bar.close()


class MetricsLog:
    """Training metrics every K steps and evaluation every epoch, as JSON lines and TensorBoard."""

    def __init__(self, workdir: epath.PathLike, enabled: bool = True):
        workdir = epath.Path(workdir)
        self.path = workdir / "metrics.jsonl"
        self.enabled = enabled
        self._writer = None
        self._bar: _Progress | None = None
        # Object stores (gs://) cannot append: there the whole file is rewritten each time.
        self._local = not str(workdir).startswith(("gs://", "s3://"))
        self._records = read_metrics(self.path) if enabled else []
        self._tensorboard = workdir / "tensorboard"
        self._staging: tempfile.TemporaryDirectory | None = None
        if enabled:
            from tensorboardX import SummaryWriter
            if not self._local:
                self._staging = tempfile.TemporaryDirectory(prefix="igc_tensorboard_")
            try:
                self._writer = SummaryWriter(self._staging.name if self._staging
                                             else str(self._tensorboard))
            except Exception as e:  # e.g. an unwritable directory
                log.warning("no TensorBoard events (%s); metrics.jsonl has everything", e)

    def progress(self, num_steps: int, start: int) -> _Progress:
        self._bar = _Progress(num_steps, start, self.enabled)
        return self._bar

    def _write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._records.append(record)
        if self._local:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        else:
            self._rewrite()
        if self._writer is None:
            return
        for k, v in record.items():
            if k not in ("kind", "step", "epoch") and isinstance(v, (int, float)):
                self._writer.add_scalar(f"{record['kind']}/{k}", v, record["step"])
        self._writer.flush()
        self._upload_events()

    def _upload_events(self) -> None:
        """Copy the staged event files to the remote workdir (each is rewritten whole)."""
        if self._staging is None:
            return
        self._tensorboard.mkdir(parents=True, exist_ok=True)
        for f in epath.Path(self._staging.name).glob("events.out.tfevents.*"):
            (self._tensorboard / f.name).write_bytes(f.read_bytes())

    def train(self, step: int, epoch: float, m: dict, images_per_sec: float) -> None:
        rec = {"kind": "train", "step": step, "epoch": round(epoch, 4),
               "loss": float(m["loss"]), "accuracy": float(m["accuracy"]),
               "learning_rate": float(m["learning_rate"]),
               "images_per_sec": round(images_per_sec, 2)}
        self._write(rec)
        if self._bar is not None:
            self._bar.describe(epoch=f"{epoch:.2f}", loss=f"{rec['loss']:.4f}",
                               lr=f"{rec['learning_rate']:.4g}", img_s=f"{images_per_sec:.0f}")

    def eval(self, step: int, epoch: float, result: dict) -> None:
        self._write({"kind": "eval", "step": step, "epoch": round(epoch, 4), **result})
        if self.enabled:
            tqdm.write(f"step {step} (epoch {epoch:.2f}): test top-1 {result['top1']:.4f}, "
                       f"top-5 {result['top5']:.4f}, loss {result['loss']:.4f}")

    def rewind(self, step: int) -> None:
        """Drop records logged after `step` (a resumed run repeats those steps)."""
        if self.enabled and self.path.exists():
            self._records = [r for r in self._records if r.get("step", 0) <= step]
            self._rewrite()

    def _rewrite(self) -> None:
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self._records))

    def best_and_final(self) -> dict:
        """Best and latest test top-1 over everything logged so far (also before a resume)."""
        top1 = [r["top1"] for r in self._records if r.get("kind") == "eval"]
        return {"best_top1": max(top1) if top1 else None, "final_top1": top1[-1] if top1 else None}

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
            self._upload_events()
        if self._staging is not None:
            self._staging.cleanup()


def read_metrics(path: epath.PathLike) -> list[dict]:
    """The records of a metrics.jsonl; a line cut short by a kill is skipped."""
    path = epath.Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_status(workdir: epath.PathLike) -> dict | None:
    """A run's status.json, or None when absent or unreadable (a run killed mid-write)."""
    path = epath.Path(workdir) / "status.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None
