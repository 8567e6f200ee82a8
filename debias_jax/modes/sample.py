"""`--mode sample`: images from a checkpoint with any sampler, as an ADM-layout .npz and a PNG grid.

    python -m debias_jax.main --mode=sample --config=configs/default.py --workdir=DIR \
        [--config.sampling.sampler=dpm_solver++ --config.sampling.steps=20 --config.sampling.num_samples=1000]

The images are generation's sample stream, so `sample` and `eval` with the same seed, sampler and steps see the
very same images.
"""

from __future__ import annotations

import re
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import generation
from debias_jax import logs
from debias_jax import pixels
from debias_jax import storage
from debias_jax.evaluation import fid

MAX_GRID_IMAGES = 64


def file_stem(step: int, sampler: str, steps, params_name: str, num: int, seed: int) -> str:
  """e.g. step_00003000_ddim_50_ema0.999_n64_seed0 (respacing strings keep their digits: '10,15,20' -> 10-15-20)."""
  steps = re.sub(r"[^A-Za-z0-9.+]+", "-", str(steps))
  return f"step_{step:08d}_{sampler}_{steps}_{params_name}_n{num}_seed{seed}"


def _draw(config, restored: checkpointing.Restored, labels) -> tuple[np.ndarray, float]:
  """config.sampling.num_samples uint8 images of the sample stream, and the seconds they took."""
  s = config.sampling
  generator = generation.Generator(config, restored.model, restored.mesh)
  start = time.time()
  progress = logs.Progress(f"Sampling ({s.sampler}, {s.steps} steps, step {restored.step})", int(s.num_samples))
  images = []
  for batch, _ in generator.batches(restored.params, int(s.num_samples), generation.sample_rng(config),
                                    batch_size=int(s.batch_size), sampler=s.sampler, steps=s.steps, labels=labels):
    images.append(pixels.to_uint8(batch))
    progress.update(len(batch))
  return np.concatenate(images), time.time() - start


def sample_to_files(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Writes config.sampling.num_samples samples of a checkpoint to an .npz (uint8 NHWC arr_0 [+ arr_1 labels]),
  a PNG grid and a JSON of what made them; returns that JSON's content (paths included)."""
  s = config.sampling
  config_checks.validate(config, "sample")
  num = int(s.num_samples)
  labels = generation.sample_labels(config, num, s.labels)
  restored = checkpointing.restore_params(config, workdir, int(s.checkpoint_step), bool(s.use_ema))
  images, seconds = _draw(config, restored, labels)

  out_dir = epath.Path(s.output_dir or epath.Path(workdir) / "samples")
  stem = file_stem(restored.step, s.sampler, s.steps, restored.params_name, num, int(config.seed))
  record = {"checkpoint_step": restored.step, "sampler": s.sampler, "steps": str(s.steps),
            "params": restored.params_name, "num_samples": num, "seed": int(config.seed),
            "shape": list(images.shape), "conditional": labels is not None, "seconds": round(seconds, 3),
            "npz": str(out_dir / f"{stem}.npz"), "grid": str(out_dir / f"{stem}.png")}
  if jax.process_index() == 0:
    fid.save_samples_npz(record["npz"], images, labels)
    grid = pixels.image_grid(images[:MAX_GRID_IMAGES])
    pixels.save_png(record["grid"], grid, upscale=max(1, 128 // int(config.data.image_size)))
    storage.write_json(out_dir / f"{stem}.json", record)
  logging.info("Wrote %d samples (%s, %s steps, %s of step %d) in %.1f s to %s.", num, s.sampler, s.steps,
               restored.params_name, restored.step, seconds, record["npz"])
  return record
