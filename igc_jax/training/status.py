"""`<workdir>/status.json`: what a run is doing, and whether it is still alive.

Process 0 rewrites it whole at the run's start, at every log interval and checkpoint, at its end,
and from a heartbeat thread every `HEARTBEAT_S` seconds in between (so a long compile or
evaluation still beats): locally a temporary file renamed over it, on an object store (gs://) one
object write, so a reader never sees half a file. A "running" status whose heartbeat is older
than `STALE_BEATS` beats belongs to a run that died without a word (SIGKILL, a lost VM): readers
(the report, the sweep) call it "dead".
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Callable

import jax
from etils import epath

log = logging.getLogger(__name__)

HEARTBEAT_S = float(os.environ.get("IGC_JAX_HEARTBEAT_S", "30"))
STALE_BEATS = 4  # a heartbeat older than this many beats marks a dead run


def write_json(path: epath.Path, obj: dict) -> None:
    """Write `obj` whole (process 0 only): temp file + rename locally, one object on gs://.

    On a full disk the temporary file cannot be written, but the file itself can be rewritten in
    place (its blocks are reused): then it is, so the record of a failure still lands.
    """
    if jax.process_index() == 0:
        text = json.dumps(obj, indent=1, sort_keys=True)
        if "://" in str(path):  # an object store writes whole objects atomically (no rename)
            path.write_text(text)
            return
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(text)
        except OSError:
            tmp.unlink(missing_ok=True)
            if not path.exists():
                raise
            path.write_text(text)
            return
        tmp.replace(path)


def utc_text(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class StatusFile:
    """status.json backed by the dict `fields` (the loop updates it in place); every write adds
    the heartbeat: `heartbeat` (Unix seconds), `heartbeat_time` (UTC) and `heartbeat_every_s`."""

    def __init__(self, workdir: epath.Path, fields: dict):
        self.path = workdir / "status.json"
        self.fields = fields
        self._lock = threading.Lock()

    def write(self, **updates) -> None:
        """Apply `updates`, stamp the heartbeat and rewrite the file."""
        with self._lock:
            self.fields.update(updates)
            now = time.time()
            self.fields.update(heartbeat=round(now, 3), heartbeat_time=utc_text(now),
                               heartbeat_every_s=HEARTBEAT_S)
            write_json(self.path, self.fields.copy())


class Heartbeat:
    """Calls `beat()` every `every` seconds in a daemon thread while entered; a failing beat is
    logged (at info: a full disk must not add lines to the run's one-line failure) and retried
    at the next."""

    def __init__(self, beat: Callable[[], None], every: float = HEARTBEAT_S):
        self.beat, self.every = beat, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="igc-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.beat()
            except Exception as e:  # the next beat tries again; the loop's own writes report
                log.info("heartbeat failed: %s", e)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_state(status: dict | None, now: float | None = None) -> str:
    """status.json's "status", except that a "running" one with a stale heartbeat is "dead"
    (its process is gone; rerun the same command to resume). "not started" without a file."""
    if not status:
        return "not started"
    state = status.get("status", "unknown")
    beat = status.get("heartbeat")
    if state != "running" or beat is None:
        return state
    every = float(status.get("heartbeat_every_s") or HEARTBEAT_S)
    age = (time.time() if now is None else now) - float(beat)
    return "dead" if age > STALE_BEATS * every else state
