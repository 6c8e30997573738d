"""gcp-storage-emulator on 127.0.0.1, with two gaps to real GCS filled for tensorstore.

    python tests/gcs_emulator.py PORT BUCKET

tensorstore (orbax's array writer) reads an object's generation from the `x-goog-generation`
header of a media download and sends `ifGenerationNotMatch` / `ifGenerationMatch` on re-reads;
the emulator sends no such header and ignores the conditions, so tensorstore fails with
"Malformed StorageGeneration" once a checkpoint re-reads its OCDBT manifest. The download below
adds both, as GCS does. Generations are also made microsecond timestamps (16 digits, as GCS's)
instead of the emulator's time_ns().
"""
from __future__ import annotations

import sys
import threading
import time
import types
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


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
    response["x-goog-generation"] = generation
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    _download(request, response, storage, *args, **kwargs)


def main(port: int, bucket: str) -> None:
    objects.time = types.SimpleNamespace(time_ns=lambda: time.time_ns() // 1000,
                                         time=time.time)
    objects.download = download          # before the server module builds its routes
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    threading.Event().wait()          # serve until killed


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
