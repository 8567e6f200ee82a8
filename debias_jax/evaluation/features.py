"""Feature spaces for FID-style evaluation, reference statistics, and the one-call `evaluate_samples`.

Three feature spaces (config value eval.feature_space):
  * "inception": pool3 of the FID Inception-v3 (`inception.py`), weights from the file eval.inception_weights.
    Logits give the Inception Score and the spatial features sFID. The default for tfds and folder data.
  * "standin": for the embedded offline datasets (digits, photo_patches), where no Inception weights exist: the
    64-d global-average-pooled features of a small CNN trained to classify the dataset (digit labels; source
    photograph for photo_patches), deterministically from a fixed seed in seconds on a CPU. Its logits give an
    Inception-Score analogue (at most the number of classes). The default for digits and photo_patches.
  * "pixels": the flattened images themselves; needs nothing, works for any dataset. The default for gmm, whose
    analysis code uses exact likelihoods anyway.
"auto" picks the default above.

Why the stand-in network is trained on first use and cached, rather than shipped as package data: it is a
function of the exact images the data pipeline produces (resize mode, patch grid, value range), which another
module owns and may change; the cache file is keyed by a hash of those training images and labels plus
STANDIN_VERSION, so a changed dataset can never be scored with a stale network, and nothing needs regenerating
by hand. Training takes seconds to a minute on a CPU, once per dataset and image size. Held-out accuracy of the
default recipe (400 steps): digits 0.98 (8 px) and 0.99 (16 px); photo_patches 0.93 (16 px) and 0.95 (32 px). The cache lives in
eval.cache_dir (default ~/.cache/debias_jax), written atomically, so concurrent runs cannot corrupt it.

Reference statistics are cached the same way, keyed by the extractor's key (which hashes the network weights or
the Inception weight file), the data config and the number of examples.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import traverse_util

from debias_jax import pixels
from debias_jax import storage
from debias_jax.evaluation import fid as fid_lib

FEATURE_SPACES = ("auto", "inception", "standin", "pixels")
STANDIN_DATASETS = ("digits", "photo_patches")
STANDIN_VERSION = 1          # bump whenever StandinNet or the training recipe changes: invalidates caches
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "debias_jax")
MAX_REFERENCE_FEATURES = 10_000   # reference feature vectors kept for precision/recall
MAX_PR_SAMPLES = 50_000           # sample feature vectors used for precision/recall
# Data fields that change how examples are read or augmented in training, not which images evaluation sees.
_NOT_CONTENT_FIELDS = ("random_flip", "num_workers", "tfds_access", "tfds_max_in_memory_gb", "tfds_prepare")


@dataclasses.dataclass(frozen=True)
class StandinRecipe:
  """Everything that determines the trained stand-in network, besides the data."""
  width: int = 16
  feature_dim: int = 64
  steps: int = 400
  batch_size: int = 64
  learning_rate: float = 3e-3
  weight_decay: float = 1e-4
  holdout_fraction: float = 0.2
  seed: int = 0
  max_examples: int = 20_000


# ----------------------------------------------------------------------------------------------------------------
# Feature extractors.


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
  """A named feature map. `apply(images)` takes a batch of float32 NHWC images in [-1, 1] (or uint8) and returns
  {'features': (B, D)} plus, where the space has them, 'logits' (B, K) and 'spatial' (B, S).

  key identifies the exact function (it hashes the weights), so cached reference statistics never pair with
  another network. fn(images) -> features is the plain feature map.
  """
  name: str
  key: str
  apply: Callable[[Any], Mapping[str, Any]]
  batch_size: int = 256
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def fn(self, images) -> np.ndarray:
    return np.asarray(self.apply(images)["features"])

  def extract(self, images, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """All outputs for any number of images, in fixed-size (padded) batches so nothing recompiles."""
    images = np.asarray(images)
    if images.ndim != 4:
      raise ValueError(f"Images must be NHWC (4 dimensions); got shape {images.shape}.")
    return _concat(self._batched(images, batch_size or self.batch_size))

  def _batched(self, images: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, images.shape[0], batch_size):
      batch = images[start:start + batch_size]
      count = batch.shape[0]
      if count < batch_size:
        batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:], batch.dtype)])
      yield {k: np.asarray(v)[:count] for k, v in self.apply(batch).items()}


def _concat(parts: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  parts = list(parts)
  if not parts:
    raise ValueError("No images to extract features from.")
  return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def resolve_feature_space(eval_config, data_config) -> str:
  """eval.feature_space with "auto" resolved: standin for digits/photo_patches, pixels for gmm, else inception."""
  space = eval_config.feature_space
  if space not in FEATURE_SPACES:
    raise ValueError(f"Unknown eval.feature_space={space!r}; valid: {', '.join(FEATURE_SPACES)}.")
  if space != "auto":
    return space
  if data_config.source == "embedded":
    return "standin" if data_config.name in STANDIN_DATASETS else "pixels"
  return "inception"


def get_feature_extractor(eval_config, data_config) -> FeatureExtractor:
  """The feature extractor that eval_config asks for on data_config's images (see the module docstring)."""
  space = resolve_feature_space(eval_config, data_config)
  batch_size = int(eval_config.batch_size)
  if space == "pixels":
    return pixel_extractor(batch_size=batch_size)
  if space == "inception":
    return inception_extractor(eval_config.inception_weights, batch_size=batch_size)
  return standin_extractor(data_config, cache_dir=eval_config.cache_dir, batch_size=batch_size)


def pixel_extractor(batch_size: int = 256) -> FeatureExtractor:
  """Flattened float pixels in [-1, 1]: a Fréchet distance in pixel space."""

  def apply(images):
    return {"features": pixels.to_float(images).reshape(np.shape(images)[0], -1)}

  return FeatureExtractor(name="pixels", key="pixels", apply=apply, batch_size=batch_size)


def inception_extractor(weights_path: str, batch_size: int = 256) -> FeatureExtractor:
  """FID Inception-v3 from a local weight file (`inception.WEIGHTS_FORMAT`); the key hashes the file."""
  from debias_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
  weights_path = storage.absolute(weights_path) if weights_path else ""
  forward, num_classes = inception.load_inception_fn(weights_path)

  def apply(images):
    out = forward(images)
    renamed = {"features": out["pool"], "spatial": out["spatial"]}
    if "logits" in out:
      renamed["logits"] = out["logits"]
    return renamed

  digest = _file_digest(weights_path)
  return FeatureExtractor(name="inception", key=f"inception-{digest[:16]}", apply=apply, batch_size=batch_size,
                          info={"num_classes": num_classes, "weights": weights_path})


# ----------------------------------------------------------------------------------------------------------------
# The stand-in network.


class StandinNet(nn.Module):
  """Small CNN classifier; its features are the global average of the last conv layer (like Inception's pool3,
  they feed a linear classifier), so they carry what separates the classes."""
  num_classes: int
  width: int = 16
  feature_dim: int = 64

  @nn.compact
  def __call__(self, x):
    w = self.width
    h = nn.relu(nn.Conv(w, (3, 3), name="conv1")(x))
    h = nn.relu(nn.Conv(w, (3, 3), strides=(2, 2), name="conv2")(h))
    h = nn.relu(nn.Conv(2 * w, (3, 3), name="conv3")(h))
    h = nn.relu(nn.Conv(2 * w, (3, 3), strides=(2, 2), name="conv4")(h))
    h = nn.relu(nn.Conv(self.feature_dim, (3, 3), name="conv5")(h))
    features = jnp.mean(h, axis=(1, 2))
    return features, nn.Dense(self.num_classes, name="classifier")(features)


@dataclasses.dataclass(frozen=True)
class StandinModel:
  """A trained stand-in: params, architecture, and how well it classifies held-out examples."""
  params: Any
  num_classes: int
  recipe: StandinRecipe
  holdout_accuracy: float
  image_shape: tuple[int, int, int]


def train_standin(images, labels, recipe: StandinRecipe = StandinRecipe(), *,
                  num_classes: int | None = None) -> StandinModel:
  """Trains StandinNet on (images float32 NHWC [-1, 1], int labels), deterministically.

  A holdout_fraction of the examples (after one fixed shuffle) is held out to measure accuracy; the initial
  weights and the training order come from numpy's generator seeded with recipe.seed.
  """
  images = pixels.to_float(images)
  labels = np.asarray(labels).astype(np.int32)
  if images.ndim != 4 or labels.shape != (images.shape[0],):
    raise ValueError(f"Need images (N, H, W, C) and labels (N,); got {images.shape} and {labels.shape}.")
  num_classes = int(num_classes or labels.max() + 1)
  if num_classes < 2:
    raise ValueError("The stand-in network needs at least two classes; use eval.feature_space='pixels'.")
  rng = np.random.default_rng(recipe.seed)
  order = rng.permutation(images.shape[0])[:recipe.max_examples]
  num_holdout = int(round(len(order) * recipe.holdout_fraction))
  train_idx, holdout_idx = order[num_holdout:], order[:num_holdout]

  net, init_optimizer, train_step = _standin_trainer(num_classes, recipe)
  params = _init_params(net, images.shape[1:], recipe.seed)
  opt_state = init_optimizer(params)

  start = time.time()
  stream = np.empty((0,), np.int64)
  for _ in range(recipe.steps):
    if stream.shape[0] < recipe.batch_size:
      stream = np.concatenate([stream, train_idx[rng.permutation(train_idx.shape[0])]])
    batch, stream = stream[:recipe.batch_size], stream[recipe.batch_size:]
    params, opt_state, loss = train_step(params, opt_state, images[batch], labels[batch])
  params = jax.tree.map(np.asarray, params)

  accuracy = float("nan")
  if num_holdout:
    model = StandinModel(params, num_classes, recipe, 0.0, tuple(images.shape[1:]))
    logits = standin_apply_fn(model)(images[holdout_idx])["logits"]
    accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=1) == labels[holdout_idx]))
  logging.info("Stand-in feature network: %d steps in %.1f s, final loss %.4f, held-out accuracy %.4f.",
               recipe.steps, time.time() - start, float(loss), accuracy)
  return StandinModel(params, num_classes, recipe, accuracy, tuple(images.shape[1:]))


@functools.lru_cache(maxsize=8)
def _standin_trainer(num_classes: int, recipe: StandinRecipe):
  """(network, jitted optimizer init, jitted train step), built once per architecture and recipe."""
  net = StandinNet(num_classes, recipe.width, recipe.feature_dim)
  optimizer = optax.adamw(optax.cosine_decay_schedule(recipe.learning_rate, recipe.steps),
                          weight_decay=recipe.weight_decay)

  @jax.jit
  def train_step(params, opt_state, x, y):
    def loss_fn(p):
      _, logits = net.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return net, jax.jit(optimizer.init), train_step


def _init_params(net: nn.Module, image_shape, seed: int):
  """He-normal kernels and zero biases drawn with numpy on the shape tree: deterministic on every platform and
  far cheaper than tracing `net.init` (seconds on a busy CPU)."""
  dummy = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  shapes = jax.eval_shape(net.init, jax.random.key(0), dummy)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=8)
def _standin_forward(num_classes: int, width: int, feature_dim: int):
  net = StandinNet(num_classes, width, feature_dim)

  @jax.jit
  def forward(params, images):
    features, logits = net.apply({"params": params}, images)
    return {"features": features, "logits": logits}

  return forward


def standin_apply_fn(model: StandinModel) -> Callable[[Any], dict[str, jax.Array]]:
  """Jitted images -> {'features', 'logits'} of a trained stand-in."""
  forward = _standin_forward(model.num_classes, model.recipe.width, model.recipe.feature_dim)
  params = jax.device_put(model.params)

  def apply(images):
    images = np.asarray(images)
    if tuple(images.shape[1:]) != model.image_shape:
      raise ValueError(f"The stand-in network was trained on images of shape {model.image_shape}; got "
                       f"{tuple(images.shape[1:])}. Evaluate samples at the data's size and channels.")
    return forward(params, pixels.to_float(images))

  return apply


def save_standin(path: str, model: StandinModel, metadata: Mapping[str, Any] | None = None) -> str:
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, model.params), sep="/")
  meta = {"num_classes": model.num_classes, "recipe": dataclasses.asdict(model.recipe),
          "holdout_accuracy": model.holdout_accuracy, "image_shape": list(model.image_shape),
          "version": STANDIN_VERSION, **(metadata or {})}
  storage.save_npz(path, **{f"param/{k}": v for k, v in flat.items()},
                   metadata=np.asarray(json.dumps(meta, sort_keys=True)))
  return path


def load_standin(path: str) -> StandinModel:
  with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as data:
    meta = json.loads(str(data["metadata"]))
    flat = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
  if meta.get("version") != STANDIN_VERSION:
    raise ValueError(f"{path} holds a stand-in network of version {meta.get('version')}, not {STANDIN_VERSION}.")
  params = traverse_util.unflatten_dict(flat, sep="/")
  return StandinModel(params, int(meta["num_classes"]), StandinRecipe(**meta["recipe"]),
                      float(meta["holdout_accuracy"]), tuple(meta["image_shape"]))


def standin_extractor(data_config, *, cache_dir: str = "", batch_size: int = 256,
                      recipe: StandinRecipe = StandinRecipe()) -> FeatureExtractor:
  """The stand-in feature network for data_config's dataset, trained on first use and cached on disk."""
  images, labels, num_classes = load_dataset_arrays(data_config, max_examples=recipe.max_examples)
  if num_classes < 2:
    raise ValueError(f"eval.feature_space='standin' needs a labelled dataset with >= 2 classes; "
                     f"{data_config.name!r} has {num_classes}. Use eval.feature_space='pixels' (any "
                     "dataset) or 'inception' (with eval.inception_weights).")
  fingerprint = _array_digest(images, labels, json.dumps(dataclasses.asdict(recipe), sort_keys=True))
  name = data_config.name or "data"
  path = resolve_cache_dir(cache_dir) / (f"standin_{name}_{images.shape[1]}px_{images.shape[3]}ch_"
                                         f"v{STANDIN_VERSION}_{fingerprint[:16]}.npz")
  model = None
  if path.exists():
    try:
      model = load_standin(path)
    except (ValueError, OSError, KeyError) as e:
      logging.warning("Ignoring unreadable stand-in cache %s (%s); retraining.", path, e)
  if model is None:
    logging.info("Training the stand-in feature network for %s (%s); cached at %s.", name, images.shape, path)
    model = train_standin(images, labels, recipe, num_classes=num_classes)
    save_standin(path, model, {"dataset": name})
  key = f"standin-{name}-{_tree_digest(model.params)[:16]}"
  return FeatureExtractor(name="standin", key=key, apply=standin_apply_fn(model), batch_size=batch_size,
                          info={"num_classes": model.num_classes, "holdout_accuracy": model.holdout_accuracy,
                                "cache_path": path})


# ----------------------------------------------------------------------------------------------------------------
# Data and reference statistics.


def _eval_batches(data_config, batch_size: int, num_examples: int | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images, labels) of one deterministic pass of the data pipeline's eval iterator, padding dropped.

  Evaluation runs in one process: the whole set is read here (process 0 of 1), whatever the host count.
  """
  from debias_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  for batch in pipeline.create_eval_iterator(data_config, batch_size=batch_size, num_examples=num_examples,
                                             process_index=0, process_count=1):
    mask = np.asarray(batch.get("mask", np.ones(len(batch["image"]), bool)))
    yield np.asarray(batch["image"])[mask], np.asarray(batch["label"])[mask]


def load_dataset_arrays(data_config, max_examples: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
  """(images float32 NHWC, labels int32, num_classes) of up to max_examples examples of the data config."""
  from debias_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  info = pipeline.dataset_info(data_config)
  total = int(info["num_examples"]) if max_examples is None else min(int(info["num_examples"]), max_examples)
  parts = list(_eval_batches(data_config, 1024, total))
  images = np.concatenate([p[0] for p in parts]).astype(np.float32)
  labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
  return images, labels, int(info.get("num_classes") or 0)


def resolve_cache_dir(cache_dir: str = "") -> epath.Path:
  return storage.absolute(cache_dir or DEFAULT_CACHE_DIR)


def reference_statistics(extractor: FeatureExtractor, data_config, num_examples: int | None = None, *,
                         cache_dir: str = "", batch_size: int | None = None) -> fid_lib.ReferenceBatch:
  """Statistics (and up to MAX_REFERENCE_FEATURES feature vectors, for precision/recall) of the first
  num_examples (default: all) examples of the data's eval pass, cached as an .npz in cache_dir.

  Returns a ReferenceBatch with .stats (mu, sigma), .spatial_stats for Inception, and .features.
  """
  data_fields = {k: repr(v) for k, v in sorted(data_config.items()) if k not in _NOT_CONTENT_FIELDS}
  cache_key = _string_digest(json.dumps({"extractor": extractor.key, "data": data_fields,
                                         "num_examples": num_examples}, sort_keys=True))
  path = resolve_cache_dir(cache_dir) / f"reference_{extractor.name}_{cache_key[:16]}.npz"
  if path.exists():
    reference = fid_lib.load_reference_batch(path)
    if reference.metadata.get("feature_key") == extractor.key and reference.stats is not None:
      return reference
  batch_size = batch_size or extractor.batch_size
  accumulator, spatial_accumulator = fid_lib.StatisticsAccumulator(), None
  kept = []
  for images, _ in _eval_batches(data_config, batch_size, num_examples):
    if images.shape[0] == 0:
      continue
    out = extractor.extract(images, batch_size)
    accumulator.update(out["features"])
    if "spatial" in out:
      spatial_accumulator = spatial_accumulator or fid_lib.StatisticsAccumulator()
      spatial_accumulator.update(out["spatial"])
    kept_rows = sum(k.shape[0] for k in kept)
    if kept_rows < MAX_REFERENCE_FEATURES:
      kept.append(out["features"][:MAX_REFERENCE_FEATURES - kept_rows])
  stats = accumulator.result()
  spatial = spatial_accumulator.result() if spatial_accumulator else None
  features = np.concatenate(kept).astype(np.float32)
  fid_lib.save_reference_batch(path, stats=stats, spatial_stats=spatial, features=features,
                               metadata={"feature_key": extractor.key, "dataset": data_config.name})
  return fid_lib.ReferenceBatch(stats=stats, spatial_stats=spatial, features=features,
                                metadata={"feature_key": extractor.key})


def reference_from_npz(extractor: FeatureExtractor, path: str, batch_size: int | None = None
                       ) -> fid_lib.ReferenceBatch:
  """A reference batch file (ADM's, or save_reference_batch's) in the extractor's feature space.

  Stored mu/sigma are used only when they belong to this feature space: files written here record their
  extractor key; ADM's files (no key) are Inception statistics. Otherwise they are recomputed from arr_0.
  """
  reference = fid_lib.load_reference_batch(path)
  key = reference.metadata.get("feature_key")
  stats_match = reference.stats is not None and (key == extractor.key or (key is None and
                                                                        extractor.name == "inception"))
  features = reference.features if key == extractor.key else None
  if stats_match and (features is not None or reference.images is None):
    return dataclasses.replace(reference, features=features)
  if reference.images is None:
    raise ValueError(f"{path} has statistics of another feature space ({key or 'ADM Inception'}) and no images "
                     f"(arr_0) to recompute them with the {extractor.name!r} extractor.")
  out = extractor.extract(reference.images, batch_size)
  stats = reference.stats if stats_match else fid_lib.compute_statistics(out["features"])
  spatial = reference.spatial_stats if stats_match else (
      fid_lib.compute_statistics(out["spatial"]) if "spatial" in out else None)
  return fid_lib.ReferenceBatch(images=reference.images, stats=stats, spatial_stats=spatial,
                                features=out["features"][:MAX_REFERENCE_FEATURES],
                                metadata={"feature_key": extractor.key})


# ----------------------------------------------------------------------------------------------------------------
# Evaluation.


def evaluate_samples(extractor: FeatureExtractor, samples, reference: fid_lib.ReferenceBatch, *,
                     batch_size: int | None = None, pr_k: int = fid_lib.PR_NEIGHBOURHOOD,
                     max_pr_samples: int = MAX_PR_SAMPLES) -> dict[str, float]:
  """FID-style metrics of samples against a reference.

  samples: NHWC images (uint8, or float in [-1, 1]), the path of an .npz with arr_0, or an iterable of such
    image batches (streamed: statistics accumulate batch by batch, so 50k large samples never sit in memory).
  Returns fid and num_samples and, where available: inception_score (the extractor has logits), sfid (spatial
  statistics on both sides), precision and recall (the reference has feature vectors; the first max_pr_samples
  sample features are used). The key `fid` is used in every feature space; extractor.name says which.
  """
  if reference.stats is None:
    raise ValueError("The reference has no statistics; build it with reference_statistics or reference_from_npz.")
  if isinstance(samples, (str, os.PathLike)):
    samples = fid_lib.load_samples_npz(os.fspath(samples))
  if isinstance(samples, (np.ndarray, jax.Array)):
    batches = [np.asarray(samples)]
  else:
    batches = samples
  accumulator, spatial_accumulator = fid_lib.StatisticsAccumulator(), fid_lib.StatisticsAccumulator()
  logits, pr_features = [], []
  num_samples = kept = 0
  for images in batches:
    images = np.asarray(images)
    if images.ndim != 4:
      raise ValueError(f"Samples must be NHWC image batches; got shape {images.shape}.")
    if images.shape[0] == 0:
      continue
    out = extractor.extract(images, batch_size)
    if out["features"].shape[1] != reference.stats.dim:
      raise ValueError(f"Sample features have {out['features'].shape[1]} dimensions but the reference statistics "
                       f"{reference.stats.dim}: they come from different feature spaces.")
    num_samples += images.shape[0]
    accumulator.update(out["features"])
    if "spatial" in out and reference.spatial_stats is not None:
      spatial_accumulator.update(out["spatial"])
    if "logits" in out:
      logits.append(out["logits"])
    if kept < max_pr_samples:
      pr_features.append(out["features"][:max_pr_samples - kept])
      kept += pr_features[-1].shape[0]
  if num_samples < 2:
    raise ValueError(f"FID needs at least 2 samples; got {num_samples}.")
  metrics = {"fid": fid_lib.statistics_distance(accumulator.result(), reference.stats),
             "num_samples": float(num_samples)}
  if logits:
    metrics["inception_score"] = fid_lib.inception_score(np.concatenate(logits))
  if spatial_accumulator.count >= 2:
    metrics["sfid"] = fid_lib.statistics_distance(spatial_accumulator.result(), reference.spatial_stats)
  if reference.features is not None and min(len(reference.features), kept) > pr_k:
    metrics["precision"], metrics["recall"] = fid_lib.precision_recall(
        reference.features, np.concatenate(pr_features), pr_k)
  logging.info("Evaluation in %s space of %d samples: %s", extractor.name, num_samples,
               ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
  return metrics


def reference_from_config(extractor: FeatureExtractor, eval_config, data_config) -> fid_lib.ReferenceBatch:
  """eval.reference_npz if set (e.g. an ADM reference batch), else the data's statistics over eval.num_reference
  examples (0: the whole split), cached in eval.cache_dir."""
  reference_npz = eval_config.reference_npz
  if reference_npz:
    return reference_from_npz(extractor, storage.absolute(reference_npz), int(eval_config.batch_size))
  num_reference = int(eval_config.num_reference) or None
  return reference_statistics(extractor, data_config, num_reference, cache_dir=eval_config.cache_dir)


# ----------------------------------------------------------------------------------------------------------------
# Helpers.


def _string_digest(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def _array_digest(*parts) -> str:
  digest = hashlib.sha256()
  for part in parts:
    if isinstance(part, np.ndarray):
      digest.update(str((part.dtype.str, part.shape)).encode())
      digest.update(np.ascontiguousarray(part).tobytes())
    else:
      digest.update(str(part).encode())
  return digest.hexdigest()


def _tree_digest(tree) -> str:
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, tree), sep="/")
  return _array_digest(*[item for k in sorted(flat) for item in (k, flat[k])])


@functools.lru_cache(maxsize=8)
def _file_digest_cached(path: str, size: int, mtime: float) -> str:
  del size, mtime  # part of the cache key only
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _file_digest(path) -> str:
  stat = epath.Path(path).stat()
  return _file_digest_cached(str(path), stat.length, stat.mtime)
