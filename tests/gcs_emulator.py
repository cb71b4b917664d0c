"""A local Google Cloud Storage for tests: `gcp-storage-emulator` (PyPI), started on
127.0.0.1 by `serve()`, in memory, with one bucket.

The emulator leaves out two things real GCS does that the code under test relies on;
they are added here, as GCS documents them, and nothing else is changed:

- uploads honour the precondition `ifGenerationMatch=N` (N=0: "only if the object does
  not exist"), answering 412 Precondition Failed otherwise; the object-store lock
  (`paths.create_new`) and tensorstore's OCDBT manifest updates use it;
- downloads carry `x-goog-generation` / `x-goog-metageneration` headers, which
  tensorstore reads to know which version it got (without them it fails with "Malformed
  StorageGeneration").

Clients are pointed at it by `client_env(url)`: gcsfs and google-cloud-storage through
`STORAGE_EMULATOR_HOST`, tensorstore (Orbax's array storage) through
`TENSORSTORE_GCS_HTTP_URL` with a test token, and gcsfs's gRPC bucket-type probe (which
waits 60 s for a gRPC endpoint the emulator does not have) turned off.

    python tests/gcs_emulator.py PORT BUCKET    # serve until killed (prints 'ready')
"""

from __future__ import annotations

import json
import socket
import sys
import time
from http import HTTPStatus
from typing import Dict


def client_env(url: str) -> Dict[str, str]:
  """Environment variables that send every storage client of the project to `url`."""
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test", "GOOGLE_CLOUD_PROJECT": "test",
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def _patch() -> None:
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  insert, download = objects.insert, objects.download

  def current_generation(request, storage, name):
    try:
      return str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
    except NotFound:
      return "0"

  def insert_with_precondition(request, response, storage, *args, **kwargs):
    want = request.query.get("ifGenerationMatch")
    name = (request.query.get("name") or [None])[0]
    if name is None and isinstance(request.data, dict):   # multipart: in the metadata part
      name = (request.data.get("meta") or {}).get("name")
    if want and name and request.query.get("uploadType", [""])[0] in ("media", "multipart"):
      if current_generation(request, storage, name) != str(want[0]):
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "Precondition Failed",
                                 "errors": [{"reason": "conditionNotMet",
                                             "message": "Precondition Failed"}]}})
        return None
    return insert(request, response, storage, *args, **kwargs)

  def download_with_generation(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except NotFound:
      pass
    return download(request, response, storage, *args, **kwargs)

  objects.insert = insert_with_precondition
  objects.download = download_with_generation
  for _, handlers in server.HANDLERS:
    for method, fn in list(handlers.items()):
      if fn is insert:
        handlers[method] = insert_with_precondition
      elif fn is download:
        handlers[method] = download_with_generation


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def serve(port: int, bucket: str):
  """Starts the emulator in this process (a background thread); returns the server."""
  _patch()
  from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top
  srv = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  srv.start()
  return srv


if __name__ == "__main__":
  serve(int(sys.argv[1]), sys.argv[2])
  print(json.dumps({"ready": True}), flush=True)
  while True:
    time.sleep(3600)
