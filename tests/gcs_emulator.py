"""gcp-storage-emulator on 127.0.0.1, with two gaps to real GCS filled for tensorstore.

    python tests/gcs_emulator.py PORT BUCKET [LATENCY_MS]

tensorstore (orbax's array writer) reads an object's generation from the `x-goog-generation`
header of a media download and sends `ifGenerationNotMatch` / `ifGenerationMatch` on re-reads;
the emulator sends no such header and ignores the conditions, so tensorstore fails with
"Malformed StorageGeneration" once a checkpoint re-reads its OCDBT manifest. The download below
adds both, as GCS does. Generations are also made microsecond timestamps (16 digits, as GCS's)
instead of the emulator's time_ns(). And it serves suffix ranges (`Range: bytes=-N`, the last N
bytes), which riegeli's GCS reader (ArrayRecord on gs://) sends first for a file's footer and the
emulator answered with the whole object.

GCS serves requests concurrently; the emulator's HTTPServer one at a time, so ArrayRecord's
parallel reads (each an open-ended range whose stream the client drops once it has its record)
queued behind one another. Requests are served in threads here, writes (every method but GET)
still one at a time, as the emulator's metadata is not locked. LATENCY_MS (default 0) delays every
media download by that much, a stand-in for an object store's round trip (benchmarks only).
"""
from __future__ import annotations

import re
import sys
import threading
import time
import types
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download
_WRITE_LOCK = threading.Lock()
LATENCY_S = 0.0


def download(request, response, storage, *args, **kwargs):
    """The emulator's media download, with GCS's generation header and conditions."""
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    generation = str(obj["generation"])
    query = request.query
    if query.get("ifGenerationNotMatch", [None])[0] == generation:
        response.status = HTTPStatus.NOT_MODIFIED
        return
    match = query.get("ifGenerationMatch", [None])[0]
    if match is not None and match != generation:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return
    suffix = re.fullmatch(r"\s*bytes=-([0-9]+)\s*", request.get_header("range", "") or "")
    if suffix:                            # the last N bytes, as GCS (RFC 9110 suffix range)
        start = max(int(obj["size"]) - int(suffix.group(1)), 0)
        request._request_handler.headers.replace_header("range", f"bytes={start}-")
    if LATENCY_S:
        time.sleep(LATENCY_S)
    response["x-goog-generation"] = generation
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    _download(request, response, storage, *args, **kwargs)


def _threaded(server_module) -> None:
    """Requests in threads (GCS answers concurrently), writes one at a time."""
    from http.server import ThreadingHTTPServer

    handler = server_module.RequestHandler
    for method in ("do_POST", "do_PUT", "do_PATCH", "do_DELETE"):
        def locked(self, _write=getattr(handler, method)):
            with _WRITE_LOCK:
                _write(self)
        setattr(handler, method, locked)
    server_module.server = types.SimpleNamespace(HTTPServer=ThreadingHTTPServer)


def main(port: int, bucket: str, latency_ms: float = 0.0) -> None:
    global LATENCY_S
    LATENCY_S = latency_ms / 1000
    objects.time = types.SimpleNamespace(time_ns=lambda: time.time_ns() // 1000,
                                         time=time.time)
    objects.download = download          # before the server module builds its routes
    from gcp_storage_emulator import server as server_module

    _threaded(server_module)
    server = server_module.create_server("127.0.0.1", port, in_memory=True,
                                         default_bucket=bucket)
    server.start()
    threading.Event().wait()          # serve until killed


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *map(float, sys.argv[3:4]))
