"""A check that every process of a multi-host run has the same config, code, flags and devices.

Workers that disagree (a stale checkout on one host, a different override, a host with fewer chips) otherwise hang
in the first collective or fail later with an unrelated shape error. `check_processes_agree` gathers a fingerprint
of each process and raises the same `ProcessMismatchError` on every process, naming each field that differs and
its value on every process. It costs two tiny gathers and is a no-op for a single process.

The fingerprint is hashed into fixed-size tables (so processes whose configs have different fields still gather
arrays of one shape); only the differing table entries are then gathered as text, to name the fields.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

import jax
import numpy as np

_BUCKETS = 256          # per group: fields hash into this many slots
_MAX_REPORTED = 32      # differing slots whose contents are gathered to name the fields
_TEXT_BYTES = 512       # per reported slot and process
_SEPARATOR = "\x1f"


class ProcessMismatchError(RuntimeError):
  """The processes of one run disagree on something that must be equal."""


def _digest(text: str) -> int:
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, str]:
  flat = {}
  for key in sorted(tree):
    value = tree[key]
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = repr(value)
  return flat


def _source_digests() -> dict[str, str]:
  """sha256 of every .py file of the installed package, by path relative to it."""
  root = os.path.dirname(os.path.abspath(__file__))
  digests = {}
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
          digests[os.path.relpath(path, os.path.dirname(root))] = hashlib.sha256(f.read()).hexdigest()[:12]
  return digests


def fingerprint(config=None, **values: Any) -> dict[str, dict[str, str]]:
  """What must be equal on every process, as groups of named strings: config fields, `values` (e.g. the
  workdir), the runtime (JAX versions, platform, device kind, local device count) and the package's source."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  local = jax.local_devices()
  groups = {
      "config": _flatten(config.to_dict() if hasattr(config, "to_dict") else (config or {})),
      "flags": {name: repr(value) for name, value in values.items()},
      "runtime": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "platform": local[0].platform,
                  "device_kind": local[0].device_kind, "local_device_count": str(len(local))},
      "code": _source_digests(),
  }
  return groups


def _tables(groups: dict[str, dict[str, str]]) -> tuple[np.ndarray, list[list[dict[str, str]]]]:
  """Per group, _BUCKETS slots: the xor of digest(name, value) of the fields hashed there, and their contents."""
  table = np.zeros((len(groups), _BUCKETS), np.uint32)
  contents = [[{} for _ in range(_BUCKETS)] for _ in groups]
  for g, (group, fields) in enumerate(sorted(groups.items())):
    for name, value in fields.items():
      slot = _digest(f"{group}/{name}") % _BUCKETS
      table[g, slot] ^= np.uint32(_digest(f"{group}/{name}={value}"))
      contents[g][slot][name] = value
  return table, contents


def _gather(local: np.ndarray) -> np.ndarray:
  """(P, ...) stack of every process's `local` (same shape and dtype everywhere), over one device per process,
  so that it works even when the processes have different numbers of devices (process_allgather does not)."""
  count = jax.process_count()
  firsts = []
  for p in range(count):
    devices = [d for d in jax.devices() if d.process_index == p]
    firsts.append(min(devices, key=lambda d: d.id))
  mesh = jax.sharding.Mesh(np.array(firsts), ("processes",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("processes"))
  mine = firsts[jax.process_index()]
  shard = jax.device_put(local[None], mine)
  stacked = jax.make_array_from_single_device_arrays((count,) + local.shape, sharding, [shard])
  replicated = jax.jit(lambda x: x, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return np.asarray(replicated(stacked).addressable_data(0))


def _encode(text: str) -> np.ndarray:
  data = text.encode()[:_TEXT_BYTES]
  return np.frombuffer(data.ljust(_TEXT_BYTES, b"\0"), np.uint8)


def _decode(row: np.ndarray) -> dict[str, str]:
  text = bytes(row).rstrip(b"\0").decode(errors="replace")
  fields = {}
  for item in text.split(_SEPARATOR) if text else []:
    name, _, value = item.partition("=")
    fields[name] = value
  return fields


def _ranges(processes: list[int]) -> str:
  spans, start = [], None
  for i, p in enumerate(processes):
    if start is None:
      start = p
    if i + 1 == len(processes) or processes[i + 1] != p + 1:
      spans.append(str(start) if start == p else f"{start}-{p}")
      start = None
  return ("process " if len(processes) == 1 else "processes ") + ", ".join(spans)


def _describe(name: str, values: list[str | None]) -> str:
  by_value: dict[str | None, list[int]] = {}
  for p, value in enumerate(values):
    by_value.setdefault(value, []).append(p)
  parts = [f"{'(missing)' if value is None else value} on {_ranges(ps)}" for value, ps in by_value.items()]
  return f"{name}: " + "; ".join(parts)


def check_processes_agree(config=None, **values: Any) -> None:
  """Raises ProcessMismatchError on every process if any process's config, `values`, runtime or package source
  differs from another's; call it on all processes right after jax.distributed.initialize()."""
  if jax.process_count() == 1:
    return
  groups = fingerprint(config, **values)
  names = sorted(groups)
  table, contents = _tables(groups)
  tables = _gather(table.reshape(-1))
  differing = np.flatnonzero((tables != tables[0]).any(axis=0))
  if differing.size == 0:
    return
  reported = differing[:_MAX_REPORTED]
  texts = np.stack([_encode(_SEPARATOR.join(f"{k}={v}" for k, v in
                                            sorted(contents[i // _BUCKETS][i % _BUCKETS].items())))
                    for i in reported])
  gathered = _gather(texts)  # (P, reported, bytes): every process sees every process's fields
  lines = []
  for j, index in enumerate(reported):
    group = names[index // _BUCKETS]
    per_process = [_decode(gathered[p, j]) for p in range(gathered.shape[0])]
    for name in sorted(set().union(*per_process)):
      field_values = [fields.get(name) for fields in per_process]
      if len(set(field_values)) > 1:
        lines.append(f"{group}: {_describe(name, field_values)}")
  if differing.size > reported.size:
    lines.append(f"... and {differing.size - reported.size} more differing entries")
  listing = "\n  ".join(lines) if lines else "(fingerprints differ; the fields could not be named)"
  raise ProcessMismatchError(
      f"The {jax.process_count()} processes of this run disagree, so they would hang or train different models:\n"
      f"  {listing}\nGive every host the same checkout of the repository (launch/tpu_setup.sh copies one to all "
      f"workers), the same --config file, overrides and --workdir, and the same number of accelerators.")
