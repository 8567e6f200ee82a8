"""Batches for training and evaluation, the same for every source (embedded, tfds, image folder).

Every source is a finite indexable dataset (`base.Source`), and the examples of a batch are a pure function of
(seed, step): the global stream is the concatenation of epoch permutations, permutation e drawn from (seed, e),
and step s takes stream positions [s*B, (s+1)*B). Consequences, all exact:
- resumption: an iterator started at start_step=k yields what an uninterrupted one yields from step k on;
- multi-host: process p reads only positions [s*B + p*B/P, s*B + (p+1)*B/P), so the processes' slices
  concatenated in process order are the batch a single process would see;
- every example is seen once per epoch; a batch may straddle two epochs (no example is dropped).
Random horizontal flips are drawn per global batch position from (seed, step); random access gives a full
shuffle for free.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
from typing import Any, Iterator

import numpy as np

from debias_jax.data import base
from debias_jax.data import embedded
from debias_jax.data import gmm as gmm_lib

SOURCES = ("embedded", "tfds", "folder")
# Embedded datasets: valid image sizes (None: any >= 2), channels (None: any >= 1) and splits.
EMBEDDED_DATASETS = {
    "digits": {"image_sizes": (8, 16), "channels": (1,), "splits": ("train",)},
    "photo_patches": {"image_sizes": (16, 32), "channels": (3,), "splits": ("train",)},
    "gmm": {"image_sizes": None, "channels": None, "splits": ("train", "test")},
}
_PERMUTATION_KEY, _FLIP_KEY, _EVAL_KEY = 0x9E37, 0xF11B, 0xE7A1
_EVAL_SEED = 0            # the evaluation order is the same for every run, whatever its training seed
_PREFETCH_BATCHES = 2


def create_source(data_config) -> base.Source:
  """The source a data config describes (validated by config_checks.validate_data), built once per process for
  equal configs: the embedded datasets and tfds readers are expensive to set up and read-only afterwards."""
  return _cached_source(_Frozen(data_config))


class _Frozen:
  """A data config as a hashable value (everything but random_flip, which does not change the examples)."""

  def __init__(self, data_config):
    self.config = data_config
    self.key = tuple(sorted((k, repr(v)) for k, v in data_config.items() if k != "random_flip"))

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return self.key == other.key


@functools.lru_cache(maxsize=4)
def _cached_source(frozen: _Frozen) -> base.Source:
  d = frozen.config
  if d.source == "embedded":
    source = embedded.create_embedded_source(d)
  elif d.source == "folder":
    from debias_jax.data import folder  # pylint: disable=g-import-not-at-top
    source = folder.FolderSource(d.data_dir, d.image_size, d.channels, d.num_workers)
  elif d.source == "tfds":
    from debias_jax.data import tfds_source  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    source = tfds_source.TfdsSource(d.name, d.split, d.data_dir, d.image_size, d.channels, access=d.tfds_access,
                                    image_key=d.image_key, label_key=d.label_key,
                                    max_in_memory_gb=float(d.tfds_max_in_memory_gb),
                                    prepare_missing=bool(d.tfds_prepare))
  else:
    raise ValueError(f"Unknown data.source={d.source!r}; valid: {', '.join(SOURCES)}.")
  if d.num_classes > 0 and d.num_classes != source.num_classes:
    what = f"{source.num_classes} classes" if source.num_classes else "no labels"
    raise ValueError(f"data.num_classes={d.num_classes}, but the dataset has {what}; set data.num_classes="
                     f"{source.num_classes} (0 trains an unconditional model).")
  return source


def open_source(data_config) -> base.Source:
  """create_source, then one example read: a missing, empty or unreadable dataset fails here, before a run builds a
  model or writes anything."""
  source = create_source(data_config)
  source.read(np.zeros(1, np.int64))
  return source


def dataset_info(data_config) -> dict[str, Any]:
  """image_size, channels, image_shape, num_classes (of the dataset; 0 if unlabelled), num_examples, label_names,
  and source-specific entries ('gmm': the GaussianMixture for data.name='gmm')."""
  source = create_source(data_config)
  d = data_config
  return {"source": d.source, "name": d.name, "split": d.split, "image_size": source.image_shape[0],
          "channels": source.image_shape[2], "image_shape": source.image_shape, "num_classes": source.num_classes,
          "num_examples": source.num_examples, "label_names": source.label_names, **source.info()}


def get_gmm(data_config) -> gmm_lib.GaussianMixture:
  """The exact mixture behind data.source='embedded', data.name='gmm' (same image_size, channels and gmm_* fields)."""
  d = data_config
  if d.source != "embedded" or d.name != "gmm":
    raise ValueError(f"get_gmm needs data.source='embedded' and data.name='gmm', got {d.source!r}, {d.name!r}.")
  return embedded.gmm_from_config(data_config)


# ----- iterators -----

def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
  return int(process_index), int(process_count)


def _local_batch_size(batch_size: int, process_count: int, name: str) -> int:
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"{name} must be a positive integer, got {batch_size!r}.")
  if batch_size % process_count:
    raise ValueError(f"{name}={batch_size} is not divisible by the number of processes ({process_count}).")
  return batch_size // process_count


def _seed_entropy(seed: int) -> int:
  return int(seed) % 2**64


class _EpochOrder:
  """Maps global stream positions to example indices: epoch e is a permutation drawn from (seed, e)."""

  def __init__(self, num_examples: int, seed: int):
    self.num_examples = num_examples
    self.seed = _seed_entropy(seed)
    self._cache: collections.OrderedDict = collections.OrderedDict()

  def permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_PERMUTATION_KEY, epoch)))
      self._cache[epoch] = rng.permutation(self.num_examples)
      while len(self._cache) > 2:
        self._cache.popitem(last=False)
    return self._cache[epoch]

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    epochs, offsets = np.divmod(positions, self.num_examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      where = epochs == epoch
      indices[where] = self.permutation(int(epoch))[offsets[where]]
    return indices


def flip_mask(seed: int, step: int, global_batch_size: int) -> np.ndarray:
  """Which positions of the global batch at `step` are flipped horizontally (bool (B,))."""
  rng = np.random.default_rng(np.random.SeedSequence(_seed_entropy(seed), spawn_key=(_FLIP_KEY, step)))
  return rng.random(global_batch_size) < 0.5


def create_train_iterator(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                          process_index: int | None = None, process_count: int | None = None) -> Iterator[dict]:
  """Infinite training batches for this process: {'image': float32 (B/P, H, W, C) in [-1, 1], 'label': int32}.

  The batch at step s depends only on (data config, seed, s, global_batch_size): see the module docstring.
  """
  source = create_source(data_config)
  p, count = _process(process_index, process_count)
  local = _local_batch_size(global_batch_size, count, "global_batch_size")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  order = _EpochOrder(source.num_examples, seed)
  random_flip = bool(data_config.random_flip)

  def batches():
    step = int(start_step)
    offsets = np.arange(p * local, (p + 1) * local, dtype=np.int64)
    while True:
      images, labels = source.read(order(step * global_batch_size + offsets))
      if random_flip:
        flip = flip_mask(seed, step, global_batch_size)[p * local:(p + 1) * local]
        images[flip] = images[flip, :, ::-1]
      yield {"image": images, "label": labels}
      step += 1

  return _prefetch(batches()) if source.lazy else batches()


def create_eval_iterator(data_config, *, batch_size: int, num_examples: int | None = None,
                         process_index: int | None = None, process_count: int | None = None) -> Iterator[dict]:
  """One deterministic pass, no flips: {'image', 'label', 'mask'} with batch_size // P examples per process.

  batch_size is global, like the training batch. The examples are a fixed permutation of the dataset (the same
  for every run), so the first num_examples (default: all) are a uniform sample even of a dataset stored in class
  order. The last batch is padded to full size (zeros, label 0) with mask False, so shapes never change under jit.
  """
  source = create_source(data_config)
  p, count = _process(process_index, process_count)
  local = _local_batch_size(batch_size, count, "batch_size")
  total = source.num_examples if num_examples is None else int(num_examples)
  if not 0 < total <= source.num_examples:
    raise ValueError(f"num_examples={num_examples} must lie in [1, {source.num_examples}] (the dataset's size).")
  rng = np.random.default_rng(np.random.SeedSequence(_EVAL_SEED, spawn_key=(_EVAL_KEY,)))
  order = rng.permutation(source.num_examples)

  def batches():
    for start in range(0, total, batch_size):
      positions = start + np.arange(p * local, (p + 1) * local, dtype=np.int64)
      mask = positions < total
      images, labels = source.read(order[positions[mask]])
      if not mask.all():
        images = np.concatenate([images, np.zeros((local - len(images),) + images.shape[1:], images.dtype)])
        labels = np.concatenate([labels, np.zeros(local - len(labels), labels.dtype)])
      yield {"image": images, "label": labels, "mask": mask}

  return _prefetch(batches()) if source.lazy else batches()


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


_END = object()


def _prefetch(iterator: Iterator[dict], depth: int = _PREFETCH_BATCHES) -> Iterator[dict]:
  """Reads up to `depth` batches ahead in a background thread (decoding overlaps training); order is unchanged."""
  buffer: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work():
    try:
      for item in iterator:
        if not put(item):
          return
      put(_END)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      put(_Failure(e))

  threading.Thread(target=work, daemon=True, name="data_prefetch").start()

  def consume():
    try:
      while True:
        item = buffer.get()
        if item is _END:
          return
        if isinstance(item, _Failure):
          raise item.error
        yield item
    finally:
      stop.set()

  return consume()
