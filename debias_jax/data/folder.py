"""Image-folder source: every .jpg/.jpeg/.png under a directory (recursively), decoded lazily per batch.

Only the sorted list of paths is held in memory; a batch is decoded by a thread pool (PIL releases the GIL while
decoding and resizing) and ADM-resized (`images.adm_resize`). Labels come from the top-level sub-folder names
(sorted, so the mapping is stable) when every image sits inside a sub-folder; otherwise the folder is unlabelled.
An unreadable file raises `UnreadableImageError` naming its path when the batch that needs it is read.
"""

from __future__ import annotations

import concurrent.futures
import os

from etils import epath
import numpy as np

from debias_jax import pixels
from debias_jax import storage
from debias_jax.data import base
from debias_jax.data import images as images_lib


def _walk(root: epath.Path):
  """(folder, sub-folders, files) under root; local folders follow symbolic links (epath's walk does not)."""
  if storage.is_remote(root):
    yield from root.walk()
  else:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
      yield epath.Path(dirpath), dirnames, filenames


def list_image_files(root) -> list[str]:
  """Sorted relative paths ('/'-separated) of all images under root, local or on an object store (extension match
  is case-insensitive; hidden files and folders skipped)."""
  root = epath.Path(root)
  paths = []
  for folder, dirnames, filenames in _walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for name in filenames:
      if not name.startswith(".") and name.lower().endswith(images_lib.IMAGE_EXTENSIONS):
        paths.append(str((folder / name).relative_to(root)))
  return sorted(paths)


class FolderSource(base.Source):
  """Images of a directory tree, ADM-resized to image_size, optionally labelled by top-level sub-folder."""

  lazy = True

  def __init__(self, root: str, image_size: int, channels: int, num_workers: int | None = None):
    if not root:
      raise ValueError("data.data_dir is empty: set it to the image folder, e.g. --config.data.data_dir=/data/ffhq.")
    if not epath.Path(root).is_dir():
      raise FileNotFoundError(f"data.data_dir={root!r} is not a directory; point it at the folder of images.")
    images_lib.pil_mode(channels)
    relative = list_image_files(root)
    if not relative:
      raise FileNotFoundError(f"No .jpg, .jpeg or .png files found under data.data_dir={root!r}.")
    self.root = root
    self.paths = [str(epath.Path(root) / p) for p in relative]
    self.num_examples = len(self.paths)
    self.image_shape = (image_size, image_size, channels)
    top = [p.split("/", 1)[0] if "/" in p else None for p in relative]
    if all(t is not None for t in top):
      self.label_names = sorted(set(top))
      index = {name: i for i, name in enumerate(self.label_names)}
      self.labels = np.asarray([index[t] for t in top], np.int32)
      self.num_classes = len(self.label_names)
    else:
      self.label_names = None
      self.labels = np.zeros(self.num_examples, np.int32)
      self.num_classes = 0
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=num_workers or min(16, os.cpu_count() or 1), thread_name_prefix="image_folder")

  def read(self, indices):
    indices = np.asarray(indices)
    size, _, channels = self.image_shape
    decoded = self._pool.map(lambda i: images_lib.load_image_file(self.paths[i], size, channels), indices.tolist())
    images = np.stack(list(decoded)) if len(indices) else np.zeros((0,) + self.image_shape, np.uint8)
    return pixels.to_float(images), self.labels[indices]

  def info(self):
    return {"root": self.root}
