"""`--mode analyze`: the paper's bias study (debias_jax/analysis/study.py) of one checkpoint of a workdir.

    python -m debias_jax.main --mode=analyze --config=configs/default.py --workdir=DIR

Writes WORKDIR/analysis/step_XXXXXXXX.json, PNG figures beside it, and TensorBoard scalars and images (logdir
WORKDIR/analysis, at the checkpoint's step, so several checkpoints form curves). With sampling.use_ema=False (the
raw, non-averaged weights) all of it goes to WORKDIR/analysis/raw instead.
"""

from __future__ import annotations

import copy
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from debias_jax import builders
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


class Analyzer:
  """Studies checkpoints of one workdir, EMA or raw params, with one study.AnalysisRun: its programs compile once
  for all of them, and a checkpoint is restored once for both params (a comparison studies every checkpoint of
  every run twice)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.mesh = parallel.create_mesh()
    config_checks.validate(config, "analyze", self.mesh.devices.size)
    self.run = study.AnalysisRun(config, builders.create_model(config), self.mesh)
    self._last_restored = (None, None)   # (requested step, train state)

  def _params(self, step: int, use_ema: bool) -> checkpointing.Restored:
    if self._last_restored[0] != step:
      self._last_restored = (None, None)   # one state in memory at a time
      self._last_restored = (step, checkpointing.restore_state(self.config, self.workdir,
                                                               None if step < 0 else step, self.mesh))
    return checkpointing.params_of(self.config, self._last_restored[1], use_ema, self.mesh, self.run.model)

  def analyze(self, step: int, use_ema: bool, samplers, sampling_steps, figures: bool = True) -> dict[str, Any]:
    """The study of the checkpoint at `step` (-1: the latest), the colour shift with each of `samplers` at each of
    `sampling_steps`; returns what it writes to the JSON file. figures=False leaves out the PNG figures and
    TensorBoard images (matplotlib takes seconds per analysis; a comparison analysing every checkpoint of every
    run reads only the numbers)."""
    config = copy.deepcopy(self.config)
    config.analysis.checkpoint_step, config.sampling.use_ema = int(step), bool(use_ema)
    config.analysis.samplers, config.analysis.sampling_steps = tuple(samplers), tuple(sampling_steps)
    config_checks.validate(config, "analyze", self.mesh.devices.size)
    restored = self._params(int(step), bool(use_ema))
    out_dir = study.output_dir(self.workdir, bool(use_ema))
    writer = summaries.create_writer(out_dir, is_main=jax.process_index() == 0)
    logging.info("Analysing %s of step %d in %s.", restored.params_name, restored.step, self.workdir)
    parts, seconds = study.measure(self.run, restored, config.analysis.samplers, config.analysis.sampling_steps,
                                   writer)
    result = study.result_record(config, self.workdir, self.run, restored, parts, seconds)
    images = study.figures(config, restored, parts) if figures else {}
    stem = str(out_dir / f"step_{restored.step:08d}")
    if jax.process_index() == 0:
      result["figures"] = _save_figures(images, stem, int(config.data.image_size))
      storage.write_json(stem + ".json", result)
    writer.write_scalars(restored.step, study.scalars(result))
    writer.write_images(restored.step, {name: image[None] for name, image in images.items()})
    writer.flush()
    logging.info("Wrote %s.json (%s).", stem, ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return result


def analyze(config: ml_collections.ConfigDict, workdir: str, figures: bool = True) -> dict[str, Any]:
  """Runs the study on config.analysis.checkpoint_step of `workdir` with config.sampling.use_ema's params."""
  a = config.analysis
  return Analyzer(config, workdir).analyze(int(a.checkpoint_step), bool(config.sampling.use_ema), a.samplers,
                                           a.sampling_steps, figures)
