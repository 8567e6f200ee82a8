"""Files under workdirs and output folders, on a local disk or an object store (gs://, s3://, ... via etils.epath).

Every mode reads and writes its workdir through these helpers, so a pod slice's `gs://` workdir works wherever a
local path does. Object stores have no rename and no append, but a single write of an object is atomic: local
files are written to a temporary sibling and renamed into place, remote ones are written once.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from etils import epath
import numpy as np


def is_remote(path) -> bool:
  """True for URIs such as gs://bucket/run (object stores), False for local paths."""
  return "://" in os.fspath(path)


def absolute(path) -> epath.Path:
  """`path` as an epath.Path; local paths made absolute (messages then name the folder unambiguously)."""
  if is_remote(path):
    return epath.Path(path)
  return epath.Path(path).expanduser().resolve()


def write_atomic(path, data: bytes | str) -> None:
  """Writes the whole file so that a reader (or a preempted writer) never sees part of it."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    path.write_bytes(data)
    return
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
  try:
    tmp.write_bytes(data)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_json(path, value: Any) -> None:
  write_atomic(path, json.dumps(value, indent=2))


def read_json(path) -> Any:
  return json.loads(epath.Path(path).read_text())


def save_npz(path, **arrays) -> None:
  """np.savez to `path` (which must end in .npz), atomically."""
  if not os.fspath(path).endswith(".npz"):
    raise ValueError(f"npz paths must end in .npz (np.savez would append it); got {os.fspath(path)!r}.")
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_atomic(path, buffer.getvalue())
