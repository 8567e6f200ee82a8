"""Sample-quality metrics on feature vectors: Fréchet distance, Inception Score, precision/recall, npz files.

Everything here works on features already extracted (by Inception-v3, the stand-in classifier of `features`, or
raw pixels), so the mathematics is testable without any network. Conventions follow OpenAI's ADM evaluator
(guided-diffusion `evaluations/evaluator.py`), which the paper's numbers come from:
  * statistics: mean and unbiased covariance (np.cov, ddof=1) in float64;
  * Fréchet distance: scipy's sqrtm of sigma1 @ sigma2, retried with eps on the diagonals if it is not finite,
    and an error if the result has a non-negligible imaginary part;
  * Inception Score: exp(mean KL(p(y|x) || p(y))) over splits of 5000 samples, averaged over splits;
  * precision/recall (Kynkäänniemi et al. 2019): each point's ball has the squared distance to its k-th
    nearest neighbour (k = 3, itself excluded) as radius; precision is the fraction of samples inside some
    reference ball, recall the fraction of reference points inside some sample ball;
  * files: samples and reference batches are .npz files with uint8 NHWC images under `arr_0`; reference
    batches may carry `mu`, `sigma` (pool features) and `mu_s`, `sigma_s` (spatial features, for sFID).
"""

from __future__ import annotations

import dataclasses
import collections
import functools
import hashlib
import warnings
import zipfile
from typing import Iterable, Mapping

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from scipy import linalg

from debias_jax import pixels
from debias_jax import storage

ADM_IS_SPLIT_SIZE = 5000
PR_NEIGHBOURHOOD = 3


# ----------------------------------------------------------------------------------------------------------------
# Statistics.


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
  """Mean (D,) and covariance (D, D) of a feature set, float64; num_examples is 0 when unknown (read from file)."""
  mu: np.ndarray
  sigma: np.ndarray
  num_examples: int = 0

  def __post_init__(self):
    mu = np.asarray(self.mu, np.float64)
    sigma = np.asarray(self.sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
      raise ValueError(f"Feature statistics need mu of shape (D,) and sigma of shape (D, D); got mu {mu.shape} "
                       f"and sigma {sigma.shape}.")
    object.__setattr__(self, "mu", mu)
    object.__setattr__(self, "sigma", sigma)

  @property
  def dim(self) -> int:
    return self.mu.shape[0]


def compute_statistics(features) -> FeatureStatistics:
  """Mean and unbiased covariance of features (N, D), N >= 2, in float64 (as np.cov in ADM's evaluator)."""
  features = _as_feature_matrix(features, "features")
  if features.shape[0] < 2:
    raise ValueError(f"A covariance needs at least 2 feature vectors; got {features.shape[0]}.")
  features = features.astype(np.float64)
  # atleast_2d: np.cov of one feature is a scalar, and a (1, 1) covariance is what a 1-d space needs.
  return FeatureStatistics(features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False)), features.shape[0])


class StatisticsAccumulator:
  """Streaming mean and covariance, so statistics of many batches never need all features in memory.

  Merges per-batch means and centred scatter matrices (Chan et al.'s parallel update) in float64, which avoids
  the cancellation of the naive E[xx^T] - mu mu^T when features have a large mean. The result equals
  `compute_statistics` on the concatenated features up to float64 rounding.
  """

  def __init__(self):
    self.count = 0
    self._mean = None
    self._scatter = None

  def update(self, features) -> None:
    features = _as_feature_matrix(features, "features").astype(np.float64)
    n = features.shape[0]
    if n == 0:
      return
    batch_mean = features.mean(axis=0)
    centred = features - batch_mean
    batch_scatter = centred.T @ centred
    if self._mean is None:
      self.count, self._mean, self._scatter = n, batch_mean, batch_scatter
      return
    if batch_mean.shape != self._mean.shape:
      raise ValueError(f"Feature dimension changed between batches: {self._mean.shape[0]} then "
                       f"{batch_mean.shape[0]}.")
    total = self.count + n
    delta = batch_mean - self._mean
    self._scatter = self._scatter + batch_scatter + np.outer(delta, delta) * (self.count * n / total)
    self._mean = self._mean + delta * (n / total)
    self.count = total

  def result(self) -> FeatureStatistics:
    if self.count < 2:
      raise ValueError(f"A covariance needs at least 2 feature vectors; got {self.count}.")
    return FeatureStatistics(self._mean.copy(), self._scatter / (self.count - 1), self.count)


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance.


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2).

  The product of two covariances estimated from few samples is often singular; as in the TTUR/ADM code, if
  scipy's sqrtm returns non-finite values (or, here, a root that does not square back to the product to 1e-5)
  the square root is retried with eps added to both diagonals, and a result whose diagonal has an imaginary
  part above 1e-3 is an error rather than silently dropped.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape:
    raise ValueError(f"The two mean vectors differ in length: {mu1.shape} vs {mu2.shape}; both statistics must "
                     "come from the same feature extractor.")
  if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
    raise ValueError(f"Covariances {sigma1.shape} and {sigma2.shape} do not match the mean length "
                     f"{mu1.shape[0]}.")
  if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
    raise ValueError("Feature statistics contain NaN or inf (non-finite samples or features?).")

  diff = mu1 - mu2
  covmean = _sqrtm_product(sigma1, sigma2)
  if covmean is None:
    logging.warning("Fréchet distance: sqrtm(sigma1 @ sigma2) failed (singular product); adding %g to the "
                    "covariance diagonals.", eps)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = _sqrtm_product(sigma1 + offset, sigma2 + offset, check=False)
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm(sigma1 @ sigma2) has an imaginary component of up to "
                       f"{np.max(np.abs(covmean.imag)):.3g}: the covariances are not valid (positive "
                       "semi-definite) or far too few samples were used.")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm_product(sigma1, sigma2, check: bool = True, tolerance: float = 1e-5):
  """scipy's sqrtm of sigma1 @ sigma2, or None if it is not finite or does not square back to the product.

  scipy >= 1.16 warns on every singular input and no longer returns its error estimate; a rank-deficient
  product (dead features, fewer samples than dimensions) is normal here and its square root usually exact, so
  the warning is silenced and the result checked directly.
  """
  product = sigma1 @ sigma2
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    root = linalg.sqrtm(product)
  if not check:
    return root
  if not np.isfinite(root).all():
    return None
  scale = max(np.linalg.norm(product), np.finfo(np.float64).tiny)
  if np.linalg.norm(root @ root - product) > tolerance * scale:
    return None
  return root


def statistics_distance(stats1: FeatureStatistics, stats2: FeatureStatistics, eps: float = 1e-6) -> float:
  """`frechet_distance` of two FeatureStatistics."""
  return frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma, eps=eps)


# ----------------------------------------------------------------------------------------------------------------
# Inception Score.


def inception_score(logits, split_size: int = ADM_IS_SPLIT_SIZE) -> float:
  """exp(E_x KL(p(y|x) || p(y))) from class logits (N, K), averaged over consecutive splits of split_size.

  Computed from log-softmax in float64, so confident predictions (probabilities that underflow to 0) stay finite;
  ADM's evaluator takes np.log of the softmax instead, which agrees wherever that is finite.
  """
  logits = _as_feature_matrix(logits, "logits").astype(np.float64)
  if logits.shape[0] == 0:
    raise ValueError("The Inception Score needs at least one sample.")
  if split_size < 1:
    raise ValueError(f"split_size must be >= 1, got {split_size}.")
  log_p = logits - _logsumexp(logits, axis=1)
  scores = []
  for start in range(0, log_p.shape[0], split_size):
    part = log_p[start:start + split_size]
    log_marginal = _logsumexp(part, axis=0) - np.log(part.shape[0])
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
  m = np.max(x, axis=axis, keepdims=True)
  return m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


# ----------------------------------------------------------------------------------------------------------------
# Precision and recall (Kynkäänniemi et al., 2019).


def _squared_distances(a, b):
  """Pairwise squared Euclidean distances (A, B), clipped at 0, with full-precision matmul on any backend."""
  dots = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  sq = jnp.sum(a * a, axis=1)[:, None] - 2.0 * dots + jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(sq, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_neighbour_distance(rows, cols, k):
  """Squared distance of each row to its k-th nearest column; index 0 of the sorted distances is the point
  itself (distance 0) when rows are drawn from cols."""
  return -jax.lax.top_k(-_squared_distances(rows, cols), k + 1)[0][:, k]


@jax.jit
def _inside_any_ball(rows, centres, radii):
  return jnp.any(_squared_distances(rows, centres) <= radii[None, :], axis=1)


def _row_blocks(num_rows: int, num_cols: int, max_elements: int) -> int:
  return int(max(1, min(num_rows, max_elements // max(num_cols, 1))))


def _padded_row_batches(x: np.ndarray, rows: int) -> Iterable[tuple[int, int, np.ndarray]]:
  """Fixed-size row blocks (the last one zero-padded), so the jitted distance compiles once per shape."""
  for start in range(0, x.shape[0], rows):
    block = x[start:start + rows]
    n = block.shape[0]
    if n < rows:
      block = np.concatenate([block, np.zeros((rows - n, x.shape[1]), x.dtype)], axis=0)
    yield start, n, block


def manifold_radii(features, k: int = PR_NEIGHBOURHOOD, *, max_block_elements: int = 1 << 25) -> np.ndarray:
  """Squared distance from each feature vector (N, D) to its k-th nearest neighbour, itself excluded: (N,)."""
  features = _as_feature_matrix(features, "features").astype(np.float32)
  n = features.shape[0]
  if n <= k:
    raise ValueError(f"k-NN radii with k={k} need more than {k} feature vectors; got {n}.")
  rows = _row_blocks(n, n, max_block_elements)
  radii = np.empty((n,), np.float32)
  cols = jnp.asarray(features)
  for start, count, block in _padded_row_batches(features, rows):
    radii[start:start + count] = np.asarray(_kth_neighbour_distance(jnp.asarray(block), cols, k))[:count]
  return radii


def fraction_inside(points, centres, radii, *, max_block_elements: int = 1 << 25) -> float:
  """Fraction of `points` within (<=) the squared radius of at least one of `centres`."""
  points = _as_feature_matrix(points, "points").astype(np.float32)
  centres = _as_feature_matrix(centres, "centres").astype(np.float32)
  radii = np.asarray(radii, np.float32)
  if points.shape[1] != centres.shape[1]:
    raise ValueError(f"Feature dimensions differ: {points.shape[1]} vs {centres.shape[1]}.")
  if radii.shape != (centres.shape[0],):
    raise ValueError(f"radii must have shape ({centres.shape[0]},); got {radii.shape}.")
  rows = _row_blocks(points.shape[0], centres.shape[0], max_block_elements)
  cols, radii = jnp.asarray(centres), jnp.asarray(radii)
  hits = 0
  for _, count, block in _padded_row_batches(points, rows):
    hits += int(np.sum(np.asarray(_inside_any_ball(jnp.asarray(block), cols, radii))[:count]))
  return hits / points.shape[0]


_REFERENCE_RADII: collections.OrderedDict = collections.OrderedDict()
_REFERENCE_RADII_ENTRIES = 4


def reference_radii(features, k: int = PR_NEIGHBOURHOOD) -> np.ndarray:
  """manifold_radii of a reference set, memoised by content: every evaluation of a run scores against the same
  reference, and its k-NN radii are the expensive part (10,000 points: ~22 s on one CPU core)."""
  features = np.ascontiguousarray(_as_feature_matrix(features, "features"), np.float32)
  key = (hashlib.sha256(features.tobytes()).hexdigest(), features.shape, int(k))
  if key not in _REFERENCE_RADII:
    _REFERENCE_RADII[key] = manifold_radii(features, k)
    while len(_REFERENCE_RADII) > _REFERENCE_RADII_ENTRIES:
      _REFERENCE_RADII.popitem(last=False)
  _REFERENCE_RADII.move_to_end(key)
  return _REFERENCE_RADII[key]


def precision_recall(reference_features, sample_features, k: int = PR_NEIGHBOURHOOD) -> tuple[float, float]:
  """Improved precision and recall of samples against a reference set, both in [0, 1].

  precision: fraction of samples inside the k-NN balls of the reference set (are samples realistic?);
  recall: fraction of reference points inside the k-NN balls of the samples (is the data covered?).
  """
  reference_features = _as_feature_matrix(reference_features, "reference_features")
  sample_features = _as_feature_matrix(sample_features, "sample_features")
  ref_radii = reference_radii(reference_features, k)
  sample_radii = manifold_radii(sample_features, k)
  precision = fraction_inside(sample_features, reference_features, ref_radii)
  recall = fraction_inside(reference_features, sample_features, sample_radii)
  return precision, recall


# ----------------------------------------------------------------------------------------------------------------
# npz files in ADM's layout.


def save_samples_npz(path: str, images, labels=None) -> str:
  """Writes images (N, H, W, C), uint8 or float in [-1, 1], as uint8 `arr_0` (+ int `arr_1` labels if given),
  the layout of guided-diffusion's image_sample.py that ADM's evaluator reads. Returns the path."""
  images = pixels.to_uint8(images)
  if images.ndim != 4:
    raise ValueError(f"Samples must be NHWC (4 dimensions); got shape {images.shape}.")
  arrays = {"arr_0": images}
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],):
      raise ValueError(f"labels must have shape ({images.shape[0]},); got {labels.shape}.")
    arrays["arr_1"] = labels
  storage.save_npz(path, **arrays)
  return path


def load_samples_npz(path: str) -> np.ndarray:
  """uint8 NHWC images from `arr_0` of an .npz file (ADM's sample/reference batch layout)."""
  with _open_npz(path) as data:
    if "arr_0" not in data.files:
      raise ValueError(f"{path} has no `arr_0` array (found {data.files}); sample batches store uint8 NHWC "
                       "images under arr_0 (see save_samples_npz).")
    images = data["arr_0"]
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"{path}: arr_0 must be uint8 NHWC images; got {images.dtype} of shape {images.shape}.")
  return images


@dataclasses.dataclass(frozen=True)
class ReferenceBatch:
  """Contents of an ADM-style reference .npz: any of images (arr_0), pool statistics (mu, sigma), spatial
  statistics (mu_s, sigma_s), and, written by this package only, `features` kept for precision/recall."""
  images: np.ndarray | None = None
  stats: FeatureStatistics | None = None
  spatial_stats: FeatureStatistics | None = None
  features: np.ndarray | None = None
  metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)


def save_reference_batch(path: str, *, stats: FeatureStatistics | None = None, images=None,
                         spatial_stats: FeatureStatistics | None = None, features=None,
                         metadata: Mapping[str, str] | None = None) -> str:
  """Writes a reference batch: keys `arr_0` (uint8 NHWC), `mu`, `sigma`, `mu_s`, `sigma_s` as ADM's evaluator
  reads them, plus optional `features` (float32, for precision/recall) and `meta_<name>` strings."""
  arrays = {}
  if images is not None:
    arrays["arr_0"] = pixels.to_uint8(images)
  if stats is not None:
    arrays["mu"], arrays["sigma"] = stats.mu, stats.sigma
    arrays["num_examples"] = np.asarray(stats.num_examples, np.int64)
  if spatial_stats is not None:
    arrays["mu_s"], arrays["sigma_s"] = spatial_stats.mu, spatial_stats.sigma
  if features is not None:
    arrays["features"] = _as_feature_matrix(features, "features").astype(np.float32)
  for key, value in (metadata or {}).items():
    arrays[f"meta_{key}"] = np.asarray(str(value))
  if not arrays:
    raise ValueError("Nothing to save: give at least one of stats, images, spatial_stats, features.")
  storage.save_npz(path, **arrays)
  return path


def load_reference_batch(path: str) -> ReferenceBatch:
  """Reads an ADM reference batch (e.g. VIRTUAL_imagenet256_labeled.npz) or one written by save_reference_batch.

  ADM's files hold `arr_0` and, for the published ones, `mu`, `sigma`, `mu_s`, `sigma_s`; any subset is
  accepted, and a file with none of them is an error.
  """
  with _open_npz(path) as data:
    files = set(data.files)
    if not files & {"arr_0", "mu", "features"}:
      raise ValueError(f"{path} is not a reference batch: it has none of arr_0 (images), mu/sigma (statistics) or "
                       f"features; found {sorted(files)}.")
    stats = spatial = images = features = None
    count = int(data["num_examples"]) if "num_examples" in files else 0
    if "mu" in files:
      if "sigma" not in files:
        raise ValueError(f"{path} has `mu` but no `sigma`.")
      stats = FeatureStatistics(data["mu"], data["sigma"], count)
    if "mu_s" in files and "sigma_s" in files:
      spatial = FeatureStatistics(data["mu_s"], data["sigma_s"])
    if "arr_0" in files:
      images = data["arr_0"]
    if "features" in files:
      features = data["features"]
    metadata = {key[len("meta_"):]: str(data[key]) for key in files if key.startswith("meta_")}
  return ReferenceBatch(images=images, stats=stats, spatial_stats=spatial, features=features, metadata=metadata)


class _open_npz:
  """np.load of an .npz with errors that say what is wrong with the file."""

  def __init__(self, path):
    self.path = epath.Path(path)
    self.file = self.data = None

  def __enter__(self):
    if not self.path.exists():
      raise FileNotFoundError(f"No such .npz file: {self.path}")
    self.file = self.path.open("rb")   # local or gs://; members are read lazily
    try:
      self.data = np.load(self.file, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
      self.file.close()
      raise ValueError(f"{self.path} is not a readable .npz file ({e}).") from e
    if not hasattr(self.data, "files"):
      self.file.close()
      raise ValueError(f"{self.path} holds a single .npy array, not an .npz archive of named arrays.")
    return self.data

  def __exit__(self, *exc):
    self.data.close()
    self.file.close()
    return False


def _as_feature_matrix(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array (num_examples, dim); got shape {x.shape}.")
  return x
