"""Image helpers shared by the folder and tfds sources: decoding and ADM-style resizing (scaling: pixels.py)."""

from __future__ import annotations

from etils import epath
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class UnreadableImageError(ValueError):
  """An image file that cannot be decoded; the message names the file and what to do."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"Cannot read image file {path!r}: {reason}. Remove or replace this file "
                     "(the data pipeline does not skip files silently, so that every run sees the same dataset).")
    self.path = path


def adm_resize(image: Image.Image, image_size: int) -> np.ndarray:
  """Resizes and centre-crops like guided-diffusion: the preprocessing behind the paper's 256 px datasets.

  Box-filter halvings while the short side is at least 2 * image_size (cheap, alias-free), then one bicubic
  resize that brings the short side to exactly image_size, then a centre crop of the long side.
  Returns a uint8 array (image_size, image_size, channels of the PIL mode).
  """
  while min(image.size) >= 2 * image_size:
    image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
  scale = image_size / min(image.size)
  new_size = (max(image_size, round(image.width * scale)), max(image_size, round(image.height * scale)))
  image = image.resize(new_size, resample=Image.Resampling.BICUBIC)
  array = np.asarray(image)
  top = (array.shape[0] - image_size) // 2
  left = (array.shape[1] - image_size) // 2
  return array[top:top + image_size, left:left + image_size]


def pil_mode(channels: int) -> str:
  if channels == 1:
    return "L"
  if channels == 3:
    return "RGB"
  raise ValueError(f"Images with {channels} channels are not supported; use 1 (grey) or 3 (RGB).")


def load_image_file(path: str, image_size: int, channels: int) -> np.ndarray:
  """Decodes one file, converts it to grey or RGB and ADM-resizes it: uint8 (image_size, image_size, channels)."""
  try:
    with epath.Path(path).open("rb") as f, Image.open(f) as image:   # local or gs://
      image.load()
      image = image.convert(pil_mode(channels))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise UnreadableImageError(path, f"{type(e).__name__}: {e}") from e
  return adm_resize(image, image_size).reshape(image_size, image_size, channels)


def resize_array(array: np.ndarray, image_size: int) -> np.ndarray:
  """ADM-resizes a decoded uint8 (H, W, C) array unless it already has the target size."""
  if array.shape[0] == image_size and array.shape[1] == image_size:
    return array
  channels = array.shape[-1]
  image = Image.fromarray(array[..., 0] if channels == 1 else array)
  return adm_resize(image, image_size).reshape(image_size, image_size, channels)
