"""A fault-injecting HTTP proxy in front of the GCS emulator, and the emulator with GCS's write
preconditions. 127.0.0.1 only.

    python tests/gcs_fault_proxy.py emulator PORT BUCKET
    python tests/gcs_fault_proxy.py proxy PORT UPSTREAM_PORT STATS_JSON \\
        [--fail_rate=0.1] [--down_for=S] [--seed=0]

`emulator` runs tests/gcs_emulator.py with `ifGenerationMatch` honoured on uploads and deletes
(412 when the object's generation differs; 0 means "must not exist"), as GCS does: the workdir
lease (igc_jax.training.workdir_lock) relies on it. `proxy` forwards every request to the
emulator, except that a seeded `fail_rate` of them is answered 503 or 429 (alternately) without
being forwarded, and for `down_for` seconds after it gets SIGUSR1 every connection is dropped
unanswered (the store is down). It counts requests and faults in STATS_JSON after each request.
It serves until killed.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


def _precondition_failed(request, storage) -> bool:
    """Whether `ifGenerationMatch` names another generation than the object's (or "0" and it
    exists)."""
    from gcp_storage_emulator.exceptions import NotFound
    wanted = request.query.get("ifGenerationMatch", [None])[0]
    if wanted is None:
        return False
    name = (request.query.get("name", [None])[0] or request.params.get("object_id"))
    try:
        current = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
    except (NotFound, KeyError, TypeError):
        current = "0"
    return current != str(wanted)


def run_emulator(port: int, bucket: str) -> None:
    from http import HTTPStatus

    from gcp_storage_emulator.handlers import objects
    sys.path.insert(0, str(Path(__file__).parent))
    import gcs_emulator

    for name in ("insert", "delete"):
        def conditional(request, response, storage, *args, _real=getattr(objects, name),
                        **kwargs):
            if _precondition_failed(request, storage):
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
            return _real(request, response, storage, *args, **kwargs)
        setattr(objects, name, conditional)
    gcs_emulator.main(port, bucket)


class Faults:
    """Which requests fail, and the counts."""

    def __init__(self, fail_rate: float, down_for: float, seed: int, stats: Path):
        self.fail_rate, self.down_for = fail_rate, down_for
        self.rng = random.Random(seed)
        self.stats_path = stats
        self.lock = threading.Lock()
        self.down_until = 0.0
        self.counts = {"requests": 0, "http_503": 0, "http_429": 0, "dropped": 0}

    def go_down(self, *_) -> None:
        """Drop every connection for the next `down_for` seconds."""
        self.down_until = time.time() + self.down_for

    def decide(self) -> str | None:
        """"drop", "503", "429" or None (forward it)."""
        with self.lock:
            self.counts["requests"] += 1
            if time.time() < self.down_until:
                fault = "drop"
            elif self.rng.random() < self.fail_rate:
                fault = "503" if (self.counts["http_503"] <= self.counts["http_429"]) else "429"
            else:
                fault = None
            if fault:
                self.counts["dropped" if fault == "drop" else f"http_{fault}"] += 1
            self.stats_path.write_text(json.dumps(self.counts))
            return fault


def make_handler(faults: Faults, upstream: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    chunk = self.rfile.read(size + 2)[:size]
                    if not size:
                        return out
                    out += chunk
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def _handle(self) -> None:
            body = self._body()
            fault = faults.decide()
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault:
                self.send_response(int(fault))
                self.send_header("content-length", "0")
                self.end_headers()
                return
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            r = conn.getresponse()
            data = r.read()
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler


def run_proxy(port: int, upstream: int, stats: Path, fail_rate: float, down_for: float,
              seed: int) -> None:
    faults = Faults(fail_rate, down_for, seed, stats)
    signal.signal(signal.SIGUSR1, faults.go_down)
    ThreadingHTTPServer(("127.0.0.1", port), make_handler(faults, upstream)).serve_forever()


def client_env(url: str) -> dict[str, str]:
    """The environment that points gcsfs (etils epath) and tensorstore (orbax) at `url`."""
    return {"STORAGE_EMULATOR_HOST": url, "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "FSSPEC_GCS_TOKEN": "anon",
            "FSSPEC_GCS_PROJECT": "test", "TENSORSTORE_GCS_HTTP_URL": url,
            "TENSORSTORE_GCS_HTTP_VERSION": "1.1", "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "TENSORSTORE_GCS_REQUEST_CONCURRENCY": "1"}


def wait_for_port(port: int, proc, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def start(*args: str):
    """`python tests/gcs_fault_proxy.py ARGS` as a child process (the caller kills it)."""
    return subprocess.Popen([sys.executable, str(Path(__file__)), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_through(port: int, workdir: str, *flags: str, stats: str | None = None,
                fail_rate: float = 0.0, down_for: float = 0.0,
                outage_after_checkpoint: bool = False) -> dict:
    """The command line on a gs:// workdir, its requests through a fault proxy on `port`."""
    from etils import epath
    from run_utils import ROOT, env_with_devices, free_port, main_cmd
    proxy_port = free_port()
    stats = stats or f"/tmp/igc_proxy_{proxy_port}.json"
    proxy = start("proxy", str(proxy_port), str(port), stats, f"--fail_rate={fail_rate}",
                  f"--down_for={down_for}")
    try:
        assert wait_for_port(proxy_port, proxy, 30)
        env = env_with_devices(1, **client_env(f"http://127.0.0.1:{proxy_port}"))
        t0 = time.time()
        proc = subprocess.Popen(main_cmd(workdir, *flags), env=env, cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if outage_after_checkpoint:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None and not (
                    epath.Path(workdir) / "checkpoints" / "2").exists():
                time.sleep(0.2)
            proxy.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=600)
        counts = json.loads(Path(stats).read_text())
        return {"rc": proc.returncode, "stderr": err, "seconds": time.time() - t0, **counts}
    finally:
        proxy.kill()
        proxy.wait()


def main(argv: list[str]) -> None:
    if argv[0] == "emulator":
        run_emulator(int(argv[1]), argv[2])
        return
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("upstream", type=int)
    p.add_argument("stats", type=Path)
    p.add_argument("--fail_rate", type=float, default=0.0)
    p.add_argument("--down_for", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv[1:])
    run_proxy(a.port, a.upstream, a.stats, a.fail_rate, a.down_for, a.seed)


if __name__ == "__main__":
    main(sys.argv[1:])
