"""Images as arrays: uint8 levels <-> floats in [-1, 1], image grids and PNG files.

The one place for these conversions, so that data, samples, saved .npz files and feature extractors agree to the
bit. numpy and PIL only: the data pipeline and the metrics use it without importing the sampling stack.
"""

from __future__ import annotations

import io
import math

import numpy as np

from debias_jax import storage


def to_uint8(images) -> np.ndarray:
  """Float images in [-1, 1] to uint8: round((x + 1) * 127.5), clipped to [0, 255]; uint8 passes through.

  Rounding makes uint8 -> to_float -> to_uint8 exact. (guided-diffusion's sampling script truncates instead,
  which shifts its saved samples down by half a level on average.)
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"Images must be uint8 or float in [-1, 1]; got dtype {images.dtype}.")
  return np.clip(np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_float(images) -> np.ndarray:
  """uint8 images [0, 255] to float32 [-1, 1]: the float32 nearest to k / 127.5 - 1 (k - 127.5 is exact, so one
  rounding); float images pass through as float32."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return (images.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"Images must be uint8 or float in [-1, 1]; got dtype {images.dtype}.")
  return images.astype(np.float32)


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 1) -> np.ndarray:
  """uint8 NHWC images tiled into one HWC (C = 1 or 3) grid with a white padding border."""
  n, h, w, c = images.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[padding + r * (h + padding):padding + r * (h + padding) + h,
         padding + col * (w + padding):padding + col * (w + padding) + w] = image
  return grid


def save_png(path, image: np.ndarray, upscale: int = 1) -> None:
  """A uint8 HWC image (C = 1, 3 or 4) as a PNG file, local or on an object store, nearest-upscaled."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if upscale > 1:
    image = np.repeat(np.repeat(image, upscale, axis=0), upscale, axis=1)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  storage.write_atomic(path, buffer.getvalue())
