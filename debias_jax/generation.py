"""Generating images: the config's samplers, class labels, and one deterministic stream of sample batches.

The sampler and label builders of `builders` (which makes the model and schedule they run on) live here.

Shared by the training loop (sample grids), `--mode sample`, `--mode eval`, the bias study and the benchmarks, so
that all of them draw the same images for the same (seed, sampler, steps, batch size, labels). A bad config value
raises errors.ConfigError naming the field.
"""

from __future__ import annotations

from typing import Iterator

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from debias_jax import builders
from debias_jax import errors
from debias_jax import parallel
from debias_jax import preemption
from debias_jax.diffusion import samplers
from debias_jax.diffusion.schedules import Schedule

SAMPLE_KEY = 0x5A3F   # fold_in(seed key, SAMPLE_KEY) starts the sample stream of training grids, sample and eval


def model_fn(model, params, labels=None):
  """The network at original timesteps with params (and labels) bound: model_fn(x, t) -> output."""
  return lambda x, t: model.apply({"params": params}, x, t, labels, train=False)


def sampler_options(config, name: str) -> dict:
  """The options sampler `name` gets from config.sampling (eta for DDIM, solver_options for the solvers, clip_x0);
  eval records them beside each result."""
  s = config.sampling
  if name == "ddim":
    options = {"eta": float(s.eta)}
  elif name == "ddpm":
    options = {}
  else:
    options = dict(s.solver_options)
    if "clip_x0" in options:
      raise ValueError("config.sampling.solver_options sets clip_x0; set config.sampling.clip_x0 instead.")
  return {**options, "clip_x0": bool(s.clip_x0)}


def make_sampler(config, schedule: Schedule, name: str | None = None, steps=None):
  """config.sampling's sampler (or the one named, in `steps` steps) as sample(model_fn, x_T, rng) -> x0."""
  s = config.sampling
  name = s.sampler if name is None else name
  return samplers.get_sampler(name, schedule, s.steps if steps is None else steps, target=config.loss.target,
                              var_type=builders.var_type(config), **sampler_options(config, name))


def parse_sampler_steps(entry, field: str) -> tuple[str, str]:
  """A "sampler:steps" entry of config.`field` (e.g. "ddim:50", "dpm_solver++:20") as (sampler, steps)."""
  name, sep, steps = str(entry).partition(":")
  if not sep or not name.strip() or not steps.strip():
    raise errors.ConfigError(f"config.{field} has {entry!r}; write 'sampler:steps', e.g. 'ddim:50' or 'ddpm:100'.")
  return name.strip(), steps.strip()


def eval_samplers(config) -> list[tuple[str, str]]:
  """eval.sampler_steps ("ddim:50", "dpm_solver++:20", ...) as (sampler, steps) pairs; () = config.sampling's."""
  entries = tuple(config.eval.sampler_steps)
  if not entries:
    return [(config.sampling.sampler, str(config.sampling.steps))]
  return [parse_sampler_steps(entry, "eval.sampler_steps") for entry in entries]


def sample_labels(config, num: int, given=()) -> np.ndarray | None:
  """Class labels of `num` samples: None for an unconditional model; `given` repeated, or all classes in turn."""
  num_classes = int(config.data.num_classes)
  given = tuple(int(g) for g in (given or ()))
  if num_classes <= 0:
    if given:
      raise errors.ConfigError(f"config.sampling.labels={given} is set, but the model is unconditional "
                               "(data.num_classes=0); leave it empty.")
    return None
  bad = [g for g in given if not 0 <= g < num_classes]
  if bad:
    raise errors.ConfigError(f"config.sampling.labels has {bad}, outside [0, {num_classes}) "
                             f"(data.num_classes={num_classes}).")
  labels = np.asarray(given, np.int32) if given else np.arange(num_classes, dtype=np.int32)
  return np.resize(labels, num).astype(np.int32)


def fed_labels(config, num: int) -> np.ndarray:
  """The labels a compiled program is fed for `num` samples: all classes in turn (zeros, unused, if
  unconditional)."""
  labels = sample_labels(config, num)
  return np.zeros(num, np.int32) if labels is None else labels


def sample_rng(config) -> jax.Array:
  return jax.random.fold_in(jax.random.key(int(config.seed)), SAMPLE_KEY)


class Generator:
  """Draws images over a mesh with one compiled program per (sampler, steps), each built once per Generator."""

  def __init__(self, config, model, mesh, schedule: Schedule | None = None):
    self.config, self.model, self.mesh = config, model, mesh
    self.schedule = builders.schedule(config) if schedule is None else schedule
    self.conditional = int(config.data.num_classes) > 0
    self.image_shape = (int(config.data.image_size),) * 2 + (int(config.data.channels),)
    self._programs = {}   # (sampler, steps) -> jitted program; per instance, so it goes with the Generator

  def program(self, sampler: str | None = None, steps=None):
    """jit(params, x_T, labels, rng) -> images for (sampler, steps) (default: config.sampling's)."""
    s = self.config.sampling
    key = (s.sampler if sampler is None else sampler, str(s.steps if steps is None else steps))
    if key not in self._programs:
      sample = make_sampler(self.config, self.schedule, *key)

      def run(params, x_T, labels, rng):
        return sample(model_fn(self.model, params, labels if self.conditional else None), x_T, rng)

      batch = parallel.batch_sharding(self.mesh)
      self._programs[key] = jax.jit(run, in_shardings=(parallel.replicated(self.mesh), batch, batch, None),
                                    out_shardings=batch)
    return self._programs[key]

  def labels(self, num: int) -> np.ndarray:
    return fed_labels(self.config, num)

  def batches(self, params, num: int, rng, *, batch_size: int | None = None, sampler: str | None = None,
              steps=None, labels: np.ndarray | None = None,
              stop=None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(float32 NHWC images in [-1, 1] on the host, their labels or None) per batch of batch_size (default:
    sampling.batch_size, rounded down to a multiple of the devices); labels default to sample_labels.

    Batch i is drawn from fold_in(rng, i), so the stream depends only on (rng, batch size, sampler, steps, labels),
    never on `num`: the first n samples of a longer run are those of a run of n (bit for bit where n is a multiple
    of the batch size; a shorter last batch is another program, equal up to float rounding). With a StopRequest
    `stop`, a SIGTERM ends it promptly with preemption.Preempted, even mid-batch.
    """
    devices = self.mesh.devices.size
    batch_size = int(batch_size or self.config.sampling.batch_size)
    batch_size = max(devices, batch_size - batch_size % devices)
    fn = self.program(sampler, steps)
    labels = sample_labels(self.config, num) if labels is None else np.asarray(labels, np.int32)
    for i, start in enumerate(range(0, num, batch_size)):
      count = min(batch_size, num - start)
      padded = count + (-count) % devices
      key = jax.random.fold_in(rng, i)
      x_T = jax.random.normal(jax.random.fold_in(key, 0), (padded,) + self.image_shape, jnp.float32)
      chunk = None if labels is None else labels[start:start + count]
      fed = np.zeros(padded, np.int32) if chunk is None else np.resize(chunk, padded)
      images = preemption.run_until_stopped(
          lambda: jax.block_until_ready(fn(params, x_T, jnp.asarray(fed), jax.random.fold_in(key, 1))),
          stop, "sampling")
      if not images.is_fully_addressable:  # multi-host: every process gets every image
        images = multihost_utils.process_allgather(images, tiled=True)
      yield np.asarray(jax.device_get(images))[:count], chunk

  def generate(self, params, num: int, rng, **kwargs) -> np.ndarray:
    """All `num` images of `batches` (same arguments) as one float32 NHWC array; the same rng, the same images."""
    out = [images for images, _ in self.batches(params, num, rng, **kwargs)]
    return np.concatenate(out) if out else np.zeros((0,) + self.image_shape, np.float32)
