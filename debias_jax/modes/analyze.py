"""`--mode analyze`: the paper's bias study (debias_jax/analysis/study.py) of one checkpoint of a workdir.

    python -m debias_jax.main --mode=analyze --config=configs/default.py --workdir=DIR

Writes WORKDIR/analysis/step_XXXXXXXX.json, PNG figures beside it, and TensorBoard scalars and images (logdir
WORKDIR/analysis, at the checkpoint's step, so several checkpoints form curves). With sampling.use_ema=False (the
raw, non-averaged weights) all of it goes to WORKDIR/analysis/raw instead.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import parallel
from debias_jax import pixels
from debias_jax import storage
from debias_jax import summaries
from debias_jax.analysis import study


def _save_figures(figures: dict[str, np.ndarray], stem: str, image_size: int) -> dict[str, str]:
  """Writes each figure to STEM_NAME.png (sample strips enlarged to about 64 px per image); returns the paths."""
  paths = {}
  for name, image in figures.items():
    path = f"{stem}_{name}.png"
    upscale = max(1, 64 // image_size) if name.startswith("samples_") else 1
    pixels.save_png(path, image, upscale=upscale)
    paths[name] = path
  return paths


def analyze(config: ml_collections.ConfigDict, workdir: str, figures: bool = True) -> dict[str, Any]:
  """Runs the study on config.analysis.checkpoint_step of `workdir`; returns what it writes to the JSON file.

  figures=False leaves out the PNG figures and TensorBoard images (matplotlib takes seconds per analysis; a
  comparison analysing every checkpoint of every run reads only the numbers)."""
  mesh = parallel.create_mesh()
  config_checks.validate(config, "analyze", mesh.devices.size)
  restored = checkpointing.restore_params(config, workdir, int(config.analysis.checkpoint_step),
                                          bool(config.sampling.use_ema), mesh)
  run = study.AnalysisRun(config, restored)
  out_dir = study.output_dir(workdir, bool(config.sampling.use_ema))
  writer = summaries.create_writer(out_dir, is_main=jax.process_index() == 0)
  logging.info("Analysing %s of step %d in %s.", restored.params_name, restored.step, workdir)
  parts, seconds = study.measure(run, writer)
  result = study.result_record(config, workdir, run, parts, seconds)
  images = study.figures(config, run, parts) if figures else {}
  stem = str(out_dir / f"step_{restored.step:08d}")
  if jax.process_index() == 0:
    result["figures"] = _save_figures(images, stem, int(config.data.image_size))
    storage.write_json(stem + ".json", result)
  writer.write_scalars(restored.step, study.scalars(result))
  writer.write_images(restored.step, {name: image[None] for name, image in images.items()})
  writer.flush()
  logging.info("Wrote %s.json (%s).", stem, ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
  return result
