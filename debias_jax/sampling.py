"""Generating images from params with the config's sampler, batched over all devices, and image grids.

Shared by the training loop (sample grids), `--mode sample`, evaluation and analysis.
"""

from __future__ import annotations

import functools
import io
import math

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from debias_jax import parallel
from debias_jax import preemption
from debias_jax import storage
from debias_jax.diffusion import samplers
from debias_jax.diffusion.schedules import Schedule


def training_schedule(config) -> Schedule:
  return Schedule.named(config.diffusion.schedule, int(config.diffusion.num_timesteps))


def var_type(config) -> str:
  return "learned_range" if config.model.learn_sigma else "fixed_small"


def model_fn(model, params, labels=None):
  """The network at original timesteps with params (and labels) bound: model_fn(x, t) -> output."""
  return lambda x, t: model.apply({"params": params}, x, t, labels, train=False)


def make_sampler(config, schedule: Schedule, sampler: str | None = None, steps=None):
  """config.sampling's sampler (or the one named) as sample(model_fn, x_T, rng) -> x0."""
  s = config.sampling
  name = s.sampler if sampler is None else sampler
  if name in ("ddpm", "ddim"):
    options = {"eta": float(s.eta)} if name == "ddim" else {}
  else:
    options = dict(s.get("solver_options", {}))
  return samplers.get_sampler(name, schedule, s.steps if steps is None else steps, target=config.loss.target,
                              var_type=var_type(config), clip_x0=bool(s.clip_x0), **options)


class Generator:
  """Draws images with one compiled program per (sampler, steps), over a mesh; labels cycle through classes."""

  def __init__(self, config, model, mesh, schedule: Schedule | None = None):
    self.config, self.model, self.mesh = config, model, mesh
    self.schedule = training_schedule(config) if schedule is None else schedule
    self.num_classes = int(config.data.get("num_classes", 0))
    self.image_shape = (int(config.data.image_size),) * 2 + (int(config.data.channels),)

  @functools.lru_cache(maxsize=16)
  def _compiled(self, sampler: str | None, steps):
    sample = make_sampler(self.config, self.schedule, sampler, steps)

    def run(params, x_T, labels, rng):
      return sample(model_fn(self.model, params, labels if self.num_classes else None), x_T, rng)

    batch = parallel.batch_sharding(self.mesh)
    return jax.jit(run, in_shardings=(parallel.replicated(self.mesh), batch, batch, None), out_shardings=batch)

  def generate(self, params, num: int, rng, *, batch_size: int | None = None, sampler: str | None = None,
               steps=None, labels=None, stop=None) -> np.ndarray:
    """`num` images as float32 NHWC in [-1, 1] (host numpy); the same rng gives the same images.

    With a preemption.StopRequest `stop`, a SIGTERM ends it promptly with preemption.Preempted, even mid-batch.
    """
    devices = self.mesh.devices.size
    batch_size = int(batch_size or self.config.sampling.batch_size)
    batch_size = max(devices, batch_size - batch_size % devices)
    fn = self._compiled(sampler, None if steps is None else str(steps))
    if labels is None:
      labels = np.arange(num) % max(self.num_classes, 1)
    out = []
    for i, start in enumerate(range(0, num, batch_size)):
      count = min(batch_size, num - start)
      padded = count + (-count) % devices
      key = jax.random.fold_in(rng, i)
      x_T = jax.random.normal(jax.random.fold_in(key, 0), (padded,) + self.image_shape, jnp.float32)
      batch_labels = np.resize(np.asarray(labels[start:start + count], np.int32), padded)
      images = preemption.run_until_stopped(
          lambda: jax.block_until_ready(fn(params, x_T, jnp.asarray(batch_labels), jax.random.fold_in(key, 1))),
          stop, "sampling")
      if not images.is_fully_addressable:  # multi-host: every process gets every image
        images = multihost_utils.process_allgather(images, tiled=True)
      out.append(np.asarray(jax.device_get(images))[:count])
    return np.concatenate(out) if out else np.zeros((0,) + self.image_shape, np.float32)


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8, rounding as ADM does ((x + 1) * 127.5, clipped)."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 1) -> np.ndarray:
  """uint8 NHWC images tiled into one HWC (C = 1 or 3) grid with a padding border."""
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
