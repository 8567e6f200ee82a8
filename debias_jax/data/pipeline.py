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


# ----- config -----

def _fields(data_config) -> dict[str, Any]:
  get = data_config.get
  return {"source": get("source", "embedded"), "name": get("name", ""), "split": get("split", "train"),
          "data_dir": get("data_dir", ""), "image_size": get("image_size", 16), "channels": get("channels", 1),
          "num_classes": get("num_classes", 0), "random_flip": get("random_flip", False)}


def _choices(values) -> str:
  return ", ".join(str(v) for v in values)


def check_data_config(data_config) -> None:
  """Raises a ValueError naming the field (data.name, data.image_size, ...) and its valid values."""
  f = _fields(data_config)
  if f["source"] not in SOURCES:
    raise ValueError(f"Unknown data.source={f['source']!r}; valid: {_choices(SOURCES)}.")
  for field in ("image_size", "channels", "num_classes"):
    if not isinstance(f[field], (int, np.integer)) or isinstance(f[field], bool) or f[field] < 0:
      raise ValueError(f"data.{field} must be a non-negative integer, got {f[field]!r}.")
  if f["image_size"] < 1 or f["channels"] < 1:
    raise ValueError(f"data.image_size and data.channels must be positive, got {f['image_size']}, {f['channels']}.")
  if f["source"] == "embedded":
    spec = EMBEDDED_DATASETS.get(f["name"])
    if spec is None:
      raise ValueError(f"Unknown embedded dataset data.name={f['name']!r}; valid: {_choices(EMBEDDED_DATASETS)}.")
    if spec["image_sizes"] is not None and f["image_size"] not in spec["image_sizes"]:
      raise ValueError(f"data.image_size={f['image_size']} is not offered by {f['name']!r}; valid: "
                       f"{_choices(spec['image_sizes'])}.")
    if spec["image_sizes"] is None and f["image_size"] < 2:
      raise ValueError(f"data.image_size={f['image_size']} is too small for {f['name']!r}; use 2 or more.")
    if spec["channels"] is not None and f["channels"] not in spec["channels"]:
      raise ValueError(f"data.channels={f['channels']} does not match {f['name']!r}; valid: "
                       f"{_choices(spec['channels'])}.")
    if f["split"] not in spec["splits"]:
      raise ValueError(f"data.split={f['split']!r} is not a split of {f['name']!r}; valid: {_choices(spec['splits'])}.")
    if f["name"] == "digits":
      mode = data_config.get("digits_upsample", "bilinear")
      if mode not in embedded.DIGITS_UPSAMPLE_MODES:
        raise ValueError(f"Unknown data.digits_upsample={mode!r}; valid: {_choices(embedded.DIGITS_UPSAMPLE_MODES)}.")
    if f["name"] == "gmm":
      for field, minimum in (("gmm_components", 1), ("gmm_rank", 0), ("gmm_num_train", 1), ("gmm_num_test", 1)):
        value = data_config.get(field, minimum)
        if not isinstance(value, (int, np.integer)) or value < minimum:
          raise ValueError(f"data.{field} must be an integer >= {minimum}, got {value!r}.")
      rank, dim = data_config.get("gmm_rank", 6), f["image_size"] ** 2 * f["channels"]
      if rank > dim:
        raise ValueError(f"data.gmm_rank={rank} exceeds the image dimension {dim}.")
      if not data_config.get("gmm_noise_std", 0.05) > 0:
        raise ValueError(f"data.gmm_noise_std must be positive, got {data_config.get('gmm_noise_std')!r}.")
  elif f["source"] == "tfds":
    if not f["name"]:
      raise ValueError("data.name is empty: set it to a TFDS dataset name, e.g. cifar10.")
  elif f["channels"] not in (1, 3):
    raise ValueError(f"data.channels={f['channels']} is not supported for image folders; valid: 1, 3.")


_SOURCE_CACHE: collections.OrderedDict = collections.OrderedDict()


_NOT_SOURCE_FIELDS = ("random_flip",)


def _cache_key(data_config) -> tuple:
  return tuple(sorted((k, repr(v)) for k, v in data_config.items() if k not in _NOT_SOURCE_FIELDS))


def create_source(data_config) -> base.Source:
  """The validated, cached source for a data config (the same object for equal configs)."""
  check_data_config(data_config)
  key = _cache_key(data_config)
  if key in _SOURCE_CACHE:
    _SOURCE_CACHE.move_to_end(key)
    return _SOURCE_CACHE[key]
  f = _fields(data_config)
  if f["source"] == "embedded":
    source = embedded.create_embedded_source(data_config, f["name"], f["split"], f["image_size"])
  elif f["source"] == "folder":
    from debias_jax.data import folder  # pylint: disable=g-import-not-at-top
    source = folder.FolderSource(f["data_dir"], f["image_size"], f["channels"], data_config.get("num_workers", None))
  else:
    from debias_jax.data import tfds_source  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    source = tfds_source.TfdsSource(
        f["name"], f["split"], f["data_dir"], f["image_size"], f["channels"],
        access=data_config.get("tfds_access", "auto"), image_key=data_config.get("image_key", "image"),
        label_key=data_config.get("label_key", "label"),
        max_in_memory_gb=float(data_config.get("tfds_max_in_memory_gb", 8.0)),
        prepare_missing=bool(data_config.get("tfds_prepare", False)))
  if f["num_classes"] > 0 and f["num_classes"] != source.num_classes:
    what = f"{source.num_classes} classes" if source.num_classes else "no labels"
    raise ValueError(f"data.num_classes={f['num_classes']}, but the dataset has {what}; set data.num_classes="
                     f"{source.num_classes} (0 trains an unconditional model).")
  _SOURCE_CACHE[key] = source
  while len(_SOURCE_CACHE) > 4:
    _SOURCE_CACHE.popitem(last=False)
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
  f = _fields(data_config)
  return {"source": f["source"], "name": f["name"], "split": f["split"], "image_size": source.image_shape[0],
          "channels": source.image_shape[2], "image_shape": source.image_shape, "num_classes": source.num_classes,
          "num_examples": source.num_examples, "label_names": source.label_names, **source.info()}


def get_gmm(data_config) -> gmm_lib.GaussianMixture:
  """The exact mixture behind data.source='embedded', data.name='gmm' (same image_size, channels and gmm_* fields)."""
  check_data_config(data_config)
  f = _fields(data_config)
  if f["source"] != "embedded" or f["name"] != "gmm":
    raise ValueError(f"get_gmm needs data.source='embedded' and data.name='gmm', got {f['source']!r}, {f['name']!r}.")
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
  random_flip = bool(data_config.get("random_flip", False))

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
