"""One live run per workdir: a lock that dies with its holder.

Locally `<workdir>/lock` is held with `fcntl.flock`: the kernel drops it when the holding process
exits in any way (SIGKILL included), so a dead run never blocks its workdir. The file names the
holder (host, pid, start time) for the refusal; it is never deleted (deleting a lock file races
with the next run's open).

On an object store (gs://) nothing dies with a process, so `<workdir>/lease.json` is a lease: the
holder (host, pid, start, expiry) written with a generation precondition (`ifGenerationMatch`: 0
to create it, the generation read to take over an expired one, its own last generation to renew
it), so of two racing launches exactly one write succeeds. The heartbeat renews it every
`status.HEARTBEAT_S` seconds with an expiry `LEASE_BEATS` beats ahead; a run that died stops
renewing and its lease expires (clocks of the hosts are assumed within seconds of each other, as
NTP keeps cloud VMs). A run that finds its lease taken over (it stalled past its expiry) stops at
the next log interval with a one-line failure.

The processes of one multi-host run are one holder: process 0 takes the lock and tells the
others whether it got it (`multihost_utils.broadcast_one_to_all`).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Callable

import jax
import numpy as np
from etils import epath

from igc_jax.errors import EnvironmentFailure, UserError
from igc_jax.training.status import HEARTBEAT_S, utc_text

LEASE_BEATS = 4  # a lease not renewed for this many heartbeats has expired


class WorkdirBusy(UserError):
    """Another live run holds the workdir."""


def me() -> dict:
    """This process as a holder: host, pid, start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": utc_text(time.time())}


def busy(workdir: epath.Path, holder: dict | None) -> WorkdirBusy:
    h = holder or {}
    return WorkdirBusy(f"workdir {workdir} is held by a live run (host {h.get('host', '?')}, "
                       f"pid {h.get('pid', '?')}, started {h.get('started', '?')}); wait for it "
                       "to end, stop it, or use another workdir")


class LocalLock:
    """`fcntl.flock` on `<workdir>/lock`."""

    def __init__(self, workdir: epath.Path):
        self.workdir = workdir
        self.path = os.path.join(os.fspath(workdir), "lock")
        self._fd: int | None = None

    def refuse_if_held(self) -> None:
        """Raise WorkdirBusy when a live process holds the lock; reads only, writes nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise busy(self.workdir, _read_holder(fd)) from None
        finally:
            os.close(fd)

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise busy(self.workdir, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me()).encode(), 0)
        self._fd = fd

    def renew(self) -> None:
        """Nothing to renew: the kernel holds the lock as long as the process lives."""

    def check(self) -> None:
        """Still held (always, locally)."""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read_holder(fd: int) -> dict | None:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None


class GcsLease:
    """`<workdir>/lease.json` on gs://, written with generation preconditions (see the module)."""

    def __init__(self, workdir: epath.Path, beats: int = LEASE_BEATS):
        import gcsfs
        self.workdir = workdir
        self.bucket, _, prefix = str(workdir)[len("gs://"):].partition("/")
        self.key = f"{prefix.rstrip('/')}/lease.json" if prefix else "lease.json"
        self.fs = gcsfs.GCSFileSystem()
        self.ttl = beats * HEARTBEAT_S
        self.holder = me()
        self.generation: str | None = None
        self.lost_to: dict | None = None

    def _read(self) -> tuple[str, dict | None]:
        """(generation, holder) of the lease object; ("0", None) when there is none."""
        from urllib.parse import quote
        try:
            headers, body = self.fs.call(
                "GET", f"{self.fs._location}/storage/v1/b/{self.bucket}/o/"
                       f"{quote(self.key, safe='')}", alt="media")
        except FileNotFoundError:
            return "0", None
        try:
            holder = json.loads(body)
        except ValueError:
            holder = None
        return str(headers.get("x-goog-generation", "0")), holder

    def _write(self, if_generation: str) -> str | None:
        """Write this holder with a fresh expiry if the object's generation is `if_generation`;
        the new generation, or None when the precondition failed (another writer won)."""
        body = json.dumps({**self.holder, "expires": time.time() + self.ttl}).encode()
        try:
            out = self.fs.call("POST", f"{self.fs._location}/upload/storage/v1/b/{self.bucket}/o",
                               uploadType="media", name=self.key, ifGenerationMatch=if_generation,
                               data=body, json_out=True)
        except FileExistsError:  # gcsfs's HTTP 412: the precondition failed
            return None
        return str(out["generation"])

    def refuse_if_held(self) -> None:
        _, holder = self._read()
        if _live(holder):
            raise busy(self.workdir, holder)

    def acquire(self) -> None:
        generation, holder = self._read()
        if _live(holder):
            raise busy(self.workdir, holder)
        self.generation = self._write(generation)
        if self.generation is None:  # another launch took it between our read and write
            raise busy(self.workdir, self._read()[1])

    def renew(self) -> None:
        if self.generation is None or self.lost_to is not None:
            return
        generation = self._write(self.generation)
        if generation is None:
            self.lost_to = self._read()[1] or {}
        self.generation = generation

    def check(self) -> None:
        """Raise EnvironmentFailure when another run took the lease over."""
        if self.lost_to is not None:
            h = self.lost_to
            raise EnvironmentFailure(
                f"lost the lease on {self.workdir} to host {h.get('host', '?')}, pid "
                f"{h.get('pid', '?')} (this run stalled past its expiry); stopped without "
                "writing more")

    def release(self) -> None:
        if self.generation is None or self.lost_to is not None:
            return
        from urllib.parse import quote
        try:
            self.fs.call("DELETE", f"{self.fs._location}/storage/v1/b/{self.bucket}/o/"
                                   f"{quote(self.key, safe='')}", ifGenerationMatch=self.generation)
        except Exception:  # it expires by itself
            pass
        self.generation = None


def _live(holder: dict | None) -> bool:
    return bool(holder) and float(holder.get("expires", 0)) > time.time()


def workdir_lock(workdir: epath.Path) -> LocalLock | GcsLease:
    """The lock of a local workdir, the lease of a gs:// one."""
    return GcsLease(workdir) if str(workdir).startswith("gs://") else LocalLock(workdir)


def on_process_0(fn: Callable[[], None], workdir: epath.Path) -> None:
    """Run `fn` (a lock step) on process 0 only and let every process raise if it refused."""
    refused: WorkdirBusy | None = None
    if jax.process_index() == 0:
        try:
            fn()
        except WorkdirBusy as e:
            refused = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        ok = multihost_utils.broadcast_one_to_all(np.int32(refused is None))
        if not int(ok) and refused is None:
            refused = busy(workdir, None)
    if refused is not None:
        raise refused
