"""Append-only JSON-lines records (metrics, evaluation results, study timings), local or on gs://."""

from __future__ import annotations

import json

from etils import epath
import jax


def append(path: str, record: dict) -> None:
  """Appends one record as a line; process 0 only, so a multi-host run writes each record once."""
  if jax.process_index() != 0:
    return
  path, line = epath.Path(path), json.dumps(record) + "\n"
  path.parent.mkdir(parents=True, exist_ok=True)
  if "://" in str(path):  # object stores cannot append: rewrite the (small) file
    path.write_text((path.read_text() if path.exists() else "") + line)
  else:
    with path.open("a") as f:
      f.write(line)


def read(path: str) -> list[dict]:
  """Every record of the file; [] if it does not exist."""
  path = epath.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
