"""`--mode sample`: images from a checkpoint with any sampler, as an ADM-layout .npz and a PNG grid.

    python -m debias_jax.main --mode=sample --config=configs/default.py --workdir=DIR \
        [--config.sampling.sampler=dpm_solver++ --config.sampling.steps=20 --config.sampling.num_samples=1000]

Also the pieces that `--mode eval` and `--mode analyze` share: restoring the params a config describes (after
checking that the config's model and diffusion match the ones trained in the workdir, which shapes alone cannot
tell: an eps model read as a v model gives garbage), class labels, and one deterministic stream of sample batches,
so `sample` and `eval` with the same seed, sampler and steps see the very same images.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Iterator

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import logs
from debias_jax import parallel
from debias_jax import sampling
from debias_jax import storage
from debias_jax.models import unet

SAMPLE_KEY = 0x5A3F          # fold_in(seed key, SAMPLE_KEY) starts every sample stream of sample/eval
MAX_GRID_IMAGES = 64


@dataclasses.dataclass
class Restored:
  """A checkpoint's params ready for sampling: the model, one params tree (replicated over mesh) and its name."""
  model: Any
  params: Any
  step: int
  params_name: str         # "ema0.999" (first EMA rate) or "params" (the raw, non-averaged weights)
  mesh: Any


def restore_params(config, workdir: str, step: int = -1, use_ema: bool = True, mesh=None) -> Restored:
  """The params to sample with from the checkpoint at `step` (-1: the latest): the first EMA copy or the raw ones."""
  mesh = parallel.create_mesh() if mesh is None else mesh
  state = checkpointing.restore_state(config, workdir, None if int(step) < 0 else int(step), mesh)
  params = state.ema_params[0] if use_ema else state.params
  name = f"ema{float(config.ema_rates[0]):g}" if use_ema else "params"
  return Restored(builders.create_model(config), params, int(jax.device_get(state.step)), name, mesh)


def sample_labels(config, num: int, given=()) -> np.ndarray | None:
  """Class labels of `num` samples: None for an unconditional model; `given` repeated, or all classes in turn."""
  num_classes = int(config.data.get("num_classes", 0))
  given = tuple(int(g) for g in (given or ()))
  if num_classes <= 0:
    if given:
      raise config_checks.ConfigError(f"config.sampling.labels={given} is set, but the model is unconditional "
                                      "(data.num_classes=0); leave it empty.")
    return None
  bad = [g for g in given if not 0 <= g < num_classes]
  if bad:
    raise config_checks.ConfigError(f"config.sampling.labels has {bad}, outside [0, {num_classes}) "
                                    f"(data.num_classes={num_classes}).")
  labels = np.asarray(given, np.int32) if given else np.arange(num_classes, dtype=np.int32)
  return np.resize(labels, num).astype(np.int32)


def sample_rng(config) -> jax.Array:
  return jax.random.fold_in(jax.random.key(int(config.seed)), SAMPLE_KEY)


def sample_batches(generator: sampling.Generator, params, num: int, rng, *, batch_size: int, sampler: str,
                   steps, labels: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
  """(float32 NHWC images in [-1, 1], their labels or None) in chunks of batch_size.

  Chunk i is drawn from fold_in(rng, i), so the stream depends only on (rng, batch_size, sampler, steps, labels),
  never on how many samples are asked for: the first n samples of a longer run are those of a run of n.
  """
  for i, start in enumerate(range(0, num, batch_size)):
    count = min(batch_size, num - start)
    chunk_labels = None if labels is None else labels[start:start + count]
    images = generator.generate(params, count, jax.random.fold_in(rng, i), batch_size=batch_size,
                                sampler=sampler, steps=steps, labels=chunk_labels)
    yield images, chunk_labels


def file_stem(step: int, sampler: str, steps, params_name: str, num: int, seed: int) -> str:
  """e.g. step_00003000_ddim_50_ema0.999_n64_seed0 (respacing strings keep their digits: '10,15,20' -> 10-15-20)."""
  steps = re.sub(r"[^A-Za-z0-9.+]+", "-", str(steps))
  return f"step_{step:08d}_{sampler}_{steps}_{params_name}_n{num}_seed{seed}"


def sample_to_files(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Writes config.sampling.num_samples samples of a checkpoint to an .npz (uint8 NHWC arr_0 [+ arr_1 labels]),
  a PNG grid and a JSON of what made them; returns that JSON's content (paths included)."""
  from debias_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
  s = config.sampling
  config_checks.validate(config)
  num = int(s.num_samples)
  labels = sample_labels(config, num, s.get("labels", ()))
  restored = restore_params(config, workdir, int(s.get("checkpoint_step", -1)), bool(s.use_ema))
  generator = sampling.Generator(config, restored.model, restored.mesh)

  start = time.time()
  progress = logs.Progress(f"Sampling ({s.sampler}, {s.steps} steps, step {restored.step})", num)
  images, label_parts = [], []
  for batch, batch_labels in sample_batches(generator, restored.params, num, sample_rng(config),
                                            batch_size=int(s.batch_size), sampler=s.sampler, steps=s.steps,
                                            labels=labels):
    images.append(sampling.to_uint8(batch))
    if batch_labels is not None:
      label_parts.append(batch_labels)
    progress.update(len(batch))
  images = np.concatenate(images)
  seconds = time.time() - start

  out_dir = epath.Path(s.get("output_dir", "") or epath.Path(workdir) / "samples")
  stem = file_stem(restored.step, s.sampler, s.steps, restored.params_name, num, int(config.seed))
  record = {"checkpoint_step": restored.step, "sampler": s.sampler, "steps": str(s.steps),
            "params": restored.params_name, "num_samples": num, "seed": int(config.seed),
            "shape": list(images.shape), "conditional": labels is not None, "seconds": round(seconds, 3),
            "npz": str(out_dir / f"{stem}.npz"), "grid": str(out_dir / f"{stem}.png")}
  if jax.process_index() == 0:
    fid.save_samples_npz(record["npz"], images, np.concatenate(label_parts) if label_parts else None)
    grid = sampling.image_grid(images[:MAX_GRID_IMAGES])
    sampling.save_png(record["grid"], grid, upscale=max(1, 128 // int(config.data.image_size)))
    storage.write_json(out_dir / f"{stem}.json", record)
  logging.info("Wrote %d samples (%s, %s steps, %s of step %d) in %.1f s to %s.", num, s.sampler, s.steps,
               restored.params_name, restored.step, seconds, record["npz"])
  return record
