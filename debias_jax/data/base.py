"""The random-access interface that every data source implements, and the in-memory source.

Every source (embedded arrays, an image folder, a tfds dataset) is a finite, indexable collection. The pipeline
decides which indices make up each batch from (seed, step) alone, so exact resumption, per-process reading and
multi-host equivalence hold for all sources at once instead of being re-proved per backend.
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

import numpy as np

from debias_jax import pixels


class Source(abc.ABC):
  """A finite dataset of images (H, W, C) with optional integer labels, read by index."""

  num_examples: int
  image_shape: tuple[int, int, int]
  num_classes: int = 0                 # 0: unlabelled (labels read as zeros)
  label_names: Sequence[str] | None = None
  lazy: bool = False                   # True when reading decodes files, so batches are worth prefetching

  @abc.abstractmethod
  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns images float32 (n, H, W, C) in [-1, 1] and labels int32 (n,) for int indices in [0, num_examples)."""

  def info(self) -> dict[str, Any]:
    return {}


class ArraySource(Source):
  """A dataset held in memory: uint8 images (scaled on read) or float32 images already in [-1, 1]."""

  def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, num_classes: int = 0,
               label_names: Sequence[str] | None = None, extra_info: dict[str, Any] | None = None):
    if images.ndim != 4:
      raise ValueError(f"Expected images of shape (N, H, W, C), got {images.shape}.")
    if images.dtype not in (np.uint8, np.float32):
      raise ValueError(f"Images must be uint8 or float32, got {images.dtype}.")
    self.images = images
    self.labels = (np.zeros(len(images), np.int32) if labels is None else np.asarray(labels, np.int32))
    if self.labels.shape != (len(images),):
      raise ValueError(f"Expected {len(images)} labels, got shape {self.labels.shape}.")
    self.num_examples = len(images)
    self.image_shape = tuple(images.shape[1:])
    self.num_classes = num_classes
    self.label_names = label_names
    self._extra_info = dict(extra_info or {})

  def info(self):
    return self._extra_info

  def read(self, indices):
    images = self.images[indices]
    if images.dtype == np.uint8:
      images = pixels.to_float(images)
    return images, self.labels[indices]
