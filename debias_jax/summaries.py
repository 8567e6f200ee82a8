"""Metric writers: absl logging on every process, TensorBoard event files from the main one.

The event files are written through etils.epath, so metrics reach a gs:// workdir by the same code path as a local
one (and an emulated object store in tests), without TensorFlow: importing it (as clu's writers do) costs seconds
at every start. Object stores cannot append, so each flush rewrites the current event file as one object
(TensorFlow's GCS writer does the same) and a new file is started once it passes ROLL_BYTES; TensorBoard reads a
run's files in name order. Writes are synchronous: no thread outlives the writer.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import struct
import time
from typing import Any, Mapping

from absl import logging
from etils import epath
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer import record_writer

ROLL_BYTES = 4 << 20


def _record(event: event_pb2.Event) -> bytes:
  """One TFRecord frame: length, masked CRC of the length, data, masked CRC of the data."""
  data = event.SerializeToString()
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", record_writer.masked_crc32c(header)) + data +
          struct.pack("<I", record_writer.masked_crc32c(data)))


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return buffer.getvalue()


def hparam_value(value: Any) -> bool | int | float | str:
  """TensorBoard's hparams take bool, number or string: sequences and None become their repr."""
  if isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, np.generic):
    return value.item()
  return repr(tuple(value) if isinstance(value, list) else value)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """{"loss": {"weighting": "debias"}} -> {"loss.weighting": "debias"}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


class EventFileWriter:
  """Scalars, images and hparams as TensorBoard events under `logdir` (any epath location)."""

  def __init__(self, logdir):
    self._logdir = epath.Path(logdir)
    self._stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    self._files = itertools.count()
    self._start_file()

  def _start_file(self) -> None:
    self._path = self._logdir / f"{self._stem}.{next(self._files):04d}.v2"
    self._data = bytearray(_record(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")))
    self._dirty = True

  def _write(self, step: int, summary: summary_pb2.Summary) -> None:
    self._data += _record(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    self._dirty = True

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._write(step, summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                                 for k, v in scalars.items()]))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Each value: one HWC image or a batch NHWC (uint8, or floats in [0, 1])."""
    values = []
    for key, batch in images.items():
      batch = np.asarray(batch)
      batch = batch[None] if batch.ndim == 3 else batch
      for i, image in enumerate(batch):
        tag = key if len(batch) == 1 else f"{key}/image/{i}"
        encoded = summary_pb2.Summary.Image(height=image.shape[0], width=image.shape[1],
                                            colorspace=image.shape[2], encoded_image_string=_png(image))
        values.append(summary_pb2.Summary.Value(tag=tag, image=encoded))
    self._write(step, summary_pb2.Summary(value=values))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    values = {k: hparam_value(v) for k, v in flatten(hparams).items()}
    self._write(0, hparams_summary.hparams_pb(values))

  def flush(self) -> None:
    if not self._dirty:
      return
    self._logdir.mkdir(parents=True, exist_ok=True)
    self._path.write_bytes(bytes(self._data))
    self._dirty = False
    if len(self._data) > ROLL_BYTES:
      self._start_file()
      self._dirty = False   # an empty file needs no object until something is written to it

  def close(self) -> None:
    self.flush()


class LoggingWriter:
  """Scalars and hparams as absl log lines (images are only counted)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(scalars.items())))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    logging.info("[%d] images: %s", step, ", ".join(sorted(images)))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info("[hparams] %s", ", ".join(f"{k}={v!r}" for k, v in sorted(flatten(hparams).items())))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class Writers:
  """The same calls to several writers."""

  def __init__(self, writers):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_images(step, images)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_hparams(hparams)

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    for writer in self._writers:
      writer.close()


def create_writer(logdir, *, is_main: bool = True) -> Writers:
  """absl logging everywhere; TensorBoard event files in `logdir` from the main process only."""
  return Writers([LoggingWriter()] + ([EventFileWriter(logdir)] if is_main else []))


def read_events(logdir) -> list[event_pb2.Event]:
  """Every event of every event file in `logdir`, in file order (for tests and tools)."""
  events = []
  for path in sorted(epath.Path(logdir).glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
      offset += 12 + length + 4
  return events
