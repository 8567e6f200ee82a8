"""TFDS source: an image dataset prepared in a data_dir (empty: tfds's default, $TFDS_DATA_DIR or
~/tensorflow_datasets), read by index. Nothing is downloaded unless data.tfds_prepare is set: then a missing
dataset is prepared (array_record) by process 0 while the other processes wait, and by any host that does not see
process 0's copy (a data_dir on each host's local disk). Otherwise a missing dataset fails at once with the command
that prepares it.

Why random access rather than a tf.data stream: the pipeline picks the examples of every batch from (seed, step)
alone, which makes resumption exact (the training loop checkpoints only the step), lets each host read only its
own slice, and makes a multi-host global batch identical to a single-host one. A shuffle-buffer stream can do
none of this without replaying the stream. Two backends give random access:

- `tfds.data_source` (array_record files; `array_record` comes with tensorflow-datasets on Linux): reads and
  decodes only the requested records, for datasets of any size. Prepare with `--file_format=array_record`, or
  convert an existing tfrecord copy with `tfds convert_format`.
- in memory: a dataset prepared in the default tfrecord format is read once with tf.data, resized and kept as
  uint8 (CIFAR-10 at 32 px: 150 MB). Refused above data.tfds_max_in_memory_gb (default 8) with the command that
  converts it. Every host loads the whole split in this mode.

data.tfds_access = "auto" (array_record when available, else memory) | "random_access" | "in_memory".
TensorFlow is hidden from all GPUs before any tf.data use, so it never takes accelerator memory from JAX.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os

from etils import epath
import numpy as np

from debias_jax import pixels
from debias_jax.data import base
from debias_jax.data import images as images_lib

ACCESS_MODES = ("auto", "random_access", "in_memory")


def hide_gpus_from_tensorflow():
  """Makes every GPU invisible to TensorFlow, so tf.data and TF-based writers never take accelerator memory.

  Must run before anything initialises TF's devices (e.g. a clu metric writer creating a TF summary writer):
  call it at program start. Returns the tensorflow module.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:   # TF devices already initialised by someone else; check it is still GPU-free
    if tf.config.get_visible_devices("GPU"):
      logging.warning("TensorFlow was initialised with visible GPUs before the data pipeline could hide them; "
                      "call debias_jax.data.hide_gpus_from_tensorflow() at program start.")
  return tf


def import_tensorflow_datasets():
  """Imports TF and tfds with TensorFlow kept off every GPU (it would otherwise grab accelerator memory)."""
  tf = hide_gpus_from_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tf, tfds


def default_data_dir() -> str:
  """tfds's own default data_dir, read now: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  return constants.get_default_data_dir()


def _prepare_hint(name: str, data_dir: str, offer_prepare: bool = True) -> str:
  program = ("or let this program prepare it (process 0 downloads, the other processes wait): add\n"
             "  --config.data.tfds_prepare=True\n") if offer_prepare else ""
  return (f"Prepare it once, on a machine with internet access, with\n"
          f"  tfds build {name} --data_dir={data_dir} --file_format=array_record\n{program}"
          f"(datasets that need a manual download also take --manual_dir). array_record gives random access for "
          f"any dataset size; the default tfrecord format works too but is loaded into memory.")


def _not_prepared(name: str, data_dir: str, expected: str) -> FileNotFoundError:
  return FileNotFoundError(f"TFDS dataset {name!r} is not prepared in data.data_dir={data_dir!r} (expected "
                           f"{expected}). Nothing is downloaded unless data.tfds_prepare=True.\n"
                           f"{_prepare_hint(name, data_dir)}")


def check_prepared(data_config) -> None:
  """Fails at once, before TensorFlow is even imported, when a tfds dataset is surely missing: data.source is tfds,
  data.tfds_prepare is off and data_dir holds no dataset_info.json of data.name in any config or version.

  Cheap (a directory listing), so entry points call it first; TfdsSource still checks the exact version.
  """
  d = data_config
  if d.source != "tfds" or d.tfds_prepare or not d.name:
    return
  name, data_dir = d.name, d.data_dir or default_data_dir()
  dataset_dir = epath.Path(data_dir) / name.split(":")[0].split("/")[0]    # NAME[/CONFIG][:VERSION]
  if not any(next(dataset_dir.glob(pattern), None) for pattern in ("*/dataset_info.json", "*/*/dataset_info.json")):
    raise _not_prepared(name, data_dir, f"{dataset_dir}/[CONFIG/]VERSION")


def _build_if_missing(tfds, name: str, data_dir: str) -> tuple[bool, BaseException | None]:
  """download_and_prepare in array_record unless already prepared: (built, error). The error is returned, not
  raised, so that every process still reaches the barriers of `prepare`."""
  try:
    if tfds.builder(name, data_dir=data_dir).is_prepared():
      return False, None
    logging.info("tfds: preparing %s in %s (array_record); this downloads the dataset.", name, data_dir)
    tfds.builder(name, data_dir=data_dir, file_format="array_record").download_and_prepare(
        file_format="array_record")
  except Exception as e:  # pylint: disable=broad-exception-caught
    if _is_prepared(tfds, name, data_dir):   # another process on this host (same disk) finished first
      return False, None
    logging.error("tfds: preparing %s in %s failed: %s", name, data_dir, e)
    return True, e
  return True, None


def _is_prepared(tfds, name: str, data_dir: str) -> bool:
  try:
    return tfds.builder(name, data_dir=data_dir).is_prepared()
  except Exception:  # pylint: disable=broad-exception-caught
    return False


def _process_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


def prepare(tfds, name: str, data_dir: str) -> list[str]:
  """Prepares a missing dataset: process 0 builds it while the others wait; then a host that still does not see it
  (data_dir on a local disk of each host) builds its own copy, and every process waits for all.

  With several processes, every one must call this (they all open the data source: each reads its slice), so
  that the barriers match. Returns what this process did ([] or ["built"]), for logs and tests.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  process, count = jax.process_index(), jax.process_count()
  built, error = False, None
  if process == 0:
    built, error = _build_if_missing(tfds, name, data_dir)
  if count > 1:   # wait for process 0 and learn whether it succeeded: if not, no other process downloads
    ok = bool(multihost_utils.broadcast_one_to_all(np.array(error is None)))
    if process > 0:
      if ok:
        built, error = _build_if_missing(tfds, name, data_dir)   # only where process 0's copy is not visible
      else:
        error = RuntimeError("Process 0 failed to prepare it (see its log).")
    multihost_utils.sync_global_devices(f"debias_jax tfds prepare {name}")
  if error is not None:
    raise RuntimeError(f"Could not prepare TFDS dataset {name!r} in data.data_dir={data_dir!r}: {error}\n"
                       f"{_prepare_hint(name, data_dir, offer_prepare=False)}") from error
  return ["built"] if built else []


def _open_builder(tfds, name: str, data_dir: str, prepare_missing: bool):
  """The dataset's builder in data_dir, prepared first if asked; a clear error if unknown or not prepared."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"data.name={name!r} is not a TFDS dataset known to this tensorflow-datasets install, "
                     f"nor found in data.data_dir={data_dir!r}. See `tfds.list_builders()` for valid names.") from e
  if prepare_missing and (_process_count() > 1 or not builder.is_prepared()):   # collective when multi-host
    prepare(tfds, name, data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise _not_prepared(name, data_dir, builder.data_dir)
  return builder


def _check_features(tfds, info, name: str, split: str, image_key: str, channels: int) -> None:
  """The image feature is uint8 with data.channels channels, and the split exists."""
  features = info.features
  if image_key not in features:
    raise ValueError(f"TFDS dataset {name!r} has no feature {image_key!r} (data.image_key); its features are "
                     f"{sorted(features.keys())}.")
  image_feature = features[image_key]
  if not isinstance(image_feature, tfds.features.Image):
    raise ValueError(f"Feature {image_key!r} of {name!r} is a {type(image_feature).__name__}, not an Image.")
  if np.dtype(image_feature.np_dtype) != np.uint8:
    raise ValueError(f"Only uint8 images are supported; {name!r}/{image_key} is {image_feature.np_dtype}.")
  if image_feature.shape[-1] != channels:
    raise ValueError(f"data.channels={channels}, but {name!r} has {image_feature.shape[-1]}-channel images; "
                     f"set data.channels={image_feature.shape[-1]}.")
  valid_splits = sorted(info.splits.keys())
  if _base_split_names(split) - set(valid_splits):
    raise ValueError(f"data.split={split!r} is not a split of {name!r}; valid: {', '.join(valid_splits)} "
                     "(TFDS slicing such as 'train[:90%]' is allowed).")


class TfdsSource(base.Source):
  """A split of a prepared TFDS image dataset, ADM-resized to image_size when its images differ in size."""

  def __init__(self, name: str, split: str, data_dir: str, image_size: int, channels: int, *, access: str = "auto",
               image_key: str = "image", label_key: str = "label", max_in_memory_gb: float = 8.0,
               prepare_missing: bool = False):
    if access not in ACCESS_MODES:
      raise ValueError(f"Unknown data.tfds_access={access!r}; valid: {', '.join(ACCESS_MODES)}.")
    _, tfds = import_tensorflow_datasets()
    if not data_dir:
      data_dir = default_data_dir()
      logging.info("tfds: data.data_dir is empty; using tfds's default data_dir %s.", data_dir)
    builder = _open_builder(tfds, name, data_dir, prepare_missing)
    info = builder.info
    _check_features(tfds, info, name, split, image_key, channels)
    self.name, self.split, self.image_key = name, split, image_key
    self.image_shape = (image_size, image_size, channels)
    self.num_examples = int(info.splits[split].num_examples)
    label_feature = info.features[label_key] if label_key in info.features else None
    if isinstance(label_feature, tfds.features.ClassLabel):
      self.label_key, self.num_classes, self.label_names = label_key, label_feature.num_classes, label_feature.names
    else:
      self.label_key, self.num_classes, self.label_names = None, 0, None
    random_access = bool(info.available_file_formats() & tfds.core.file_adapters.FileFormat.with_random_access())
    if access == "auto":
      access = "random_access" if random_access else "in_memory"
    self.access = access
    if access == "random_access":
      self._open_random_access(builder)
    else:
      self._open_in_memory(builder, max_in_memory_gb)

  def _open_random_access(self, builder) -> None:
    """Reads records by index from the array_record files, decoding in a thread pool."""
    try:
      self._data = builder.as_data_source(self.split)
    except NotImplementedError as e:
      raise ValueError(
          f"data.tfds_access='random_access', but {self.name!r} in {builder.data_dir} is stored as "
          f"{sorted(f.value for f in builder.info.available_file_formats())}. Convert it with\n"
          f"  tfds convert_format --dataset_version_dir={builder.data_dir} --out_file_format=array_record\n"
          "or set data.tfds_access='auto'.") from e
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1),
                                                       thread_name_prefix="tfds_read")
    self.lazy = True

  def _open_in_memory(self, builder, max_in_memory_gb: float) -> None:
    """Loads the whole split as uint8, if it fits in data.tfds_max_in_memory_gb."""
    nbytes = self.num_examples * math.prod(self.image_shape)
    if nbytes > max_in_memory_gb * 2**30:
      raise ValueError(
          f"TFDS dataset {self.name!r} split {self.split!r} needs {nbytes / 2**30:.1f} GiB in memory, more than "
          f"data.tfds_max_in_memory_gb={max_in_memory_gb}. Give it random access instead: convert it with\n"
          f"  tfds convert_format --dataset_version_dir={builder.data_dir} --out_file_format=array_record\n"
          "or raise data.tfds_max_in_memory_gb.")
    self._images, self._labels = self._load_in_memory(builder)
    self.lazy = False

  def _load_in_memory(self, builder):
    logging.info("tfds: loading %s[%s] (%d examples) into memory.", self.name, self.split, self.num_examples)
    ds = builder.as_dataset(split=self.split, shuffle_files=False)
    images = np.zeros((self.num_examples,) + self.image_shape, np.uint8)
    labels = np.zeros(self.num_examples, np.int32)
    count = 0
    for example in ds.as_numpy_iterator():
      if count >= self.num_examples:
        raise ValueError(f"TFDS {self.name}[{self.split}] yielded more than its recorded {self.num_examples} examples.")
      images[count] = self._resize(example[self.image_key])
      if self.label_key:
        labels[count] = example[self.label_key]
      count += 1
    if count != self.num_examples:
      raise ValueError(f"TFDS {self.name}[{self.split}] yielded {count} examples, not its recorded {self.num_examples}.")
    return images, labels

  def _resize(self, image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
      image = image[..., None]
    return images_lib.resize_array(image, self.image_shape[0])

  def read(self, indices):
    indices = np.asarray(indices)
    if not self.lazy:
      return pixels.to_float(self._images[indices]), self._labels[indices]
    # One record per call from a thread pool: array_record readers are thread-safe and tfds decodes (PIL/OpenCV)
    # inside __getitem__, so decoding runs in parallel.
    examples = list(self._pool.map(self._data.__getitem__, indices.tolist()))
    images = np.zeros((len(indices),) + self.image_shape, np.uint8)
    labels = np.zeros(len(indices), np.int32)
    for i, example in enumerate(examples):
      images[i] = self._resize(np.asarray(example[self.image_key]))
      if self.label_key:
        labels[i] = example[self.label_key]
    return pixels.to_float(images), labels

  def info(self):
    return {"tfds_access": self.access}


def _base_split_names(split: str) -> set[str]:
  """'train[:90%]+test' -> {'train', 'test'}."""
  return {part.split("[", 1)[0].strip() for part in split.split("+")}

