"""Offline datasets built from data that ships inside installed packages: nothing is ever downloaded.

- `digits`: scikit-learn's 1,797 handwritten digits (8x8 grey, 17 levels 0..16, labels 0-9). Native at 8 px; at
  16 px the default upsamples bilinearly (smooth strokes, values stay in [-1, 1]); `data.digits_upsample="nearest"`
  copies each pixel into a 2x2 block (exactly the 17 levels), `"pad"` centres the 8x8 digit on a -1 background.
- `photo_patches`: RGB patches cut on a fixed grid from colour photographs shipped in scikit-image (astronaut,
  coffee, chelsea, rocket, motorcycle, immunohistochemistry) and scikit-learn (china, flower), at several scales
  (each photo is first shrunk so its short side is 2, 3, 4, 6 or 8 patch widths), stride half a patch. About 4,800
  patches at 16 or 32 px; label = index of the photograph (8 classes), for a small feature network.
- `gmm`: samples of `gmm.make_gmm` (the exact-denoiser benchmark), split "train" (data.gmm_num_train samples) or
  "test" (data.gmm_num_test fresh samples), drawn deterministically from data.gmm_seed.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from debias_jax.data import base
from debias_jax.data import gmm as gmm_lib

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "immunohistochemistry", "china", "flower")
PHOTO_SCALES = (2, 3, 4, 6, 8)           # short side of the shrunk photo, in patch widths
DIGITS_UPSAMPLE_MODES = ("bilinear", "nearest", "pad")


@functools.lru_cache(maxsize=4)
def digits_arrays(image_size: int, upsample: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
  """float32 (1797, s, s, 1) in [-1, 1] and int32 labels, s in {8, 16}."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]   # 0..16 -> [-1, 1]
  labels = digits.target.astype(np.int32)
  if image_size == 8:
    return _read_only(images), _read_only(labels)
  if image_size != 16:
    raise ValueError(f"digits exists at image_size 8 or 16, not {image_size}.")
  if upsample == "nearest":
    images = images.repeat(2, axis=1).repeat(2, axis=2)
  elif upsample == "pad":
    images = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), constant_values=-1.0)
  elif upsample == "bilinear":
    images = np.stack([np.asarray(Image.fromarray(im[..., 0], mode="F").resize((16, 16), Image.Resampling.BILINEAR))
                       for im in images])[..., None]
    images = np.clip(images, -1.0, 1.0)
  else:
    raise ValueError(f"Unknown data.digits_upsample={upsample!r}; valid: {', '.join(DIGITS_UPSAMPLE_MODES)}.")
  return _read_only(images.astype(np.float32)), _read_only(labels)


def _read_only(array: np.ndarray) -> np.ndarray:
  array.setflags(write=False)   # cached and shared: a caller must not be able to change the dataset
  return array


def _load_photo(name: str) -> np.ndarray:
  if name in ("china", "flower"):
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    return datasets.load_sample_image(f"{name}.jpg")
  from skimage import data  # pylint: disable=g-import-not-at-top
  if name == "motorcycle":
    return data.stereo_motorcycle()[0]
  return getattr(data, name)()


@functools.lru_cache(maxsize=4)
def photo_patch_arrays(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 (N, s, s, 3) patches and int32 labels (photo index), in a fixed order (photo, scale, row, column)."""
  stride = image_size // 2
  patches, labels = [], []
  for label, name in enumerate(PHOTO_NAMES):
    photo = Image.fromarray(np.ascontiguousarray(_load_photo(name)[..., :3]))
    for scale in PHOTO_SCALES:
      short = scale * image_size
      factor = short / min(photo.size)
      size = (max(short, round(photo.width * factor)), max(short, round(photo.height * factor)))
      array = np.asarray(photo.resize(size, Image.Resampling.BICUBIC))
      for top in range(0, array.shape[0] - image_size + 1, stride):
        for left in range(0, array.shape[1] - image_size + 1, stride):
          patches.append(array[top:top + image_size, left:left + image_size])
          labels.append(label)
  return _read_only(np.stack(patches)), _read_only(np.asarray(labels, np.int32))


def gmm_from_config(data_config) -> gmm_lib.GaussianMixture:
  d = data_config
  return _cached_gmm(int(d.image_size), int(d.channels), int(d.gmm_components), int(d.gmm_rank),
                     float(d.gmm_noise_std), int(d.gmm_seed))


@functools.lru_cache(maxsize=4)
def _cached_gmm(*args) -> gmm_lib.GaussianMixture:
  return gmm_lib.make_gmm(*args)


def create_embedded_source(data_config) -> base.Source:
  """Builds one of the embedded datasets (the config was validated by config_checks.validate_data)."""
  d = data_config
  if d.name == "digits":
    images, labels = digits_arrays(int(d.image_size), d.digits_upsample)
    return base.ArraySource(images, labels, num_classes=10, label_names=[str(i) for i in range(10)])
  if d.name == "photo_patches":
    images, labels = photo_patch_arrays(int(d.image_size))
    return base.ArraySource(images, labels, num_classes=len(PHOTO_NAMES), label_names=list(PHOTO_NAMES))
  if d.name == "gmm":
    mixture = gmm_from_config(d)
    images, labels = _gmm_samples(mixture, d.split, int(d.gmm_num_train), int(d.gmm_num_test), int(d.gmm_seed))
    return base.ArraySource(images, labels, num_classes=mixture.num_components, extra_info={"gmm": mixture})
  raise ValueError(f"Unknown embedded dataset data.name={d.name!r}.")


@functools.lru_cache(maxsize=4)
def _gmm_samples(mixture, split, num_train, num_test, seed):
  n = num_train if split == "train" else num_test
  split_key = 0 if split == "train" else 1
  images, labels = mixture.sample(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5A3B, split_key))), n)
  return _read_only(images), _read_only(labels)
