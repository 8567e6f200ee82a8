"""`--mode eval`: FID-style metrics of a workdir's checkpoints under one or more samplers, resumably.

    python -m debias_jax.main --mode=eval --config=configs/default.py --workdir=DIR \
        [--config.eval.checkpoint_steps="(1000,3000)" --config.eval.sampler_steps="('ddim:50','ddpm:100')"]

For every requested checkpoint (eval.checkpoint_steps; empty: all in the workdir) and every sampler:steps pair
(eval.sampler_steps; empty: sampling.sampler with sampling.steps), eval.num_samples samples are drawn (the same
stream as `--mode sample` with the same seed), quantised to uint8 as saved images are, and scored with
features.evaluate_samples: the Fréchet distance in the configured feature space, and the Inception Score,
precision and recall where that space has them. Each result is one line of WORKDIR/eval/results.jsonl that
names its checkpoint step, sampler, steps, sample count, feature space and reference; TensorBoard scalars go to
WORKDIR/eval. A rerun skips every combination already in the file, so a preempted evaluation resumes.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from absl import logging
from etils import epath
import jax
import ml_collections

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import generation
from debias_jax import jsonl
from debias_jax import logs
from debias_jax import parallel
from debias_jax import pixels
from debias_jax import storage
from debias_jax import summaries
from debias_jax.evaluation import features

RESULTS_FILE = "results.jsonl"
# The fields that identify a result: a rerun skips a combination whose key is already in the results file.
KEY_FIELDS = ("checkpoint_step", "sampler", "steps", "sampler_options", "params", "num_samples", "seed",
              "feature_space", "reference")


def _build_each(pairs, build: Callable) -> None:
  for name, steps in pairs:
    try:
      build(name, steps)
    except (ValueError, TypeError) as e:
      raise config_checks.ConfigError(f"config.eval.sampler_steps: cannot build {name}:{steps} ({e}).") from e


def available_steps(workdir: str) -> list[int]:
  """The checkpoint steps in workdir, or a CheckpointError saying what to run first."""
  steps = checkpointing.saved_steps(workdir)
  if not steps:
    raise checkpointing.CheckpointError(
        f"No checkpoints in {storage.absolute(checkpointing.checkpoint_dir(workdir))}. Train first: python -m debias_jax.main "
        f"--config=<the config> --workdir={workdir} (--mode train), then rerun --mode eval.")
  return steps


def _requested_steps(config, workdir: str) -> list[int]:
  available = available_steps(workdir)
  requested = [int(s) for s in config.eval.checkpoint_steps] or available
  missing = [s for s in requested if s not in available]
  if missing:
    raise checkpointing.CheckpointError(f"No checkpoint at steps {missing} in {workdir}; it holds {available}. "
                                        f"Set config.eval.checkpoint_steps to some of those, or () for all.")
  return requested


def _reference_name(config) -> str:
  ev, d = config.eval, config.data
  if ev.reference_npz:
    return f"npz:{storage.absolute(ev.reference_npz)}"
  num = int(ev.num_reference)
  return f"data:{d.source}/{d.name}/{d.split}/{num if num else 'all'}"


def result_key(record: dict) -> str:
  return json.dumps({k: record.get(k) for k in KEY_FIELDS}, sort_keys=True)


def planned_results(config, checkpoint_steps: list[int], pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
  """What each result records about how it was made, in order: checkpoint by checkpoint, then sampler."""
  ev = config.eval
  base = {"params": checkpointing.params_name(config, bool(config.sampling.use_ema)),
          "num_samples": int(ev.num_samples), "seed": int(config.seed),
          "feature_space": features.resolve_feature_space(ev, config.data), "reference": _reference_name(config)}
  return [dict(base, checkpoint_step=step, sampler=name, steps=steps,
               sampler_options=generation.sampler_options(config, name))
          for step in checkpoint_steps for name, steps in pairs]


class _Scorer:
  """Draws and scores one planned combination at a time, restoring each checkpoint once."""

  def __init__(self, config, workdir: str, generator: generation.Generator):
    self.config, self.workdir, self.generator = config, workdir, generator
    self.extractor = features.get_feature_extractor(config.eval, config.data)
    self.reference = features.reference_from_config(self.extractor, config.eval, config.data)
    self.restored = None

  def _images(self, item: dict, progress: logs.Progress):
    for images, _ in self.generator.batches(
        self.restored.params, item["num_samples"], generation.sample_rng(self.config),
        batch_size=int(self.config.sampling.batch_size), sampler=item["sampler"], steps=item["steps"]):
      progress.update(len(images))
      yield pixels.to_uint8(images)

  def score(self, item: dict, label: str) -> dict[str, float]:
    if self.restored is None or self.restored.step != item["checkpoint_step"]:
      self.restored = checkpointing.restore_params(self.config, self.workdir, item["checkpoint_step"],
                                                   bool(self.config.sampling.use_ema), self.generator.mesh)
    progress = logs.Progress(f"{label} (step {item['checkpoint_step']}, {item['sampler']} {item['steps']} steps)",
                             item["num_samples"])
    metrics = features.evaluate_samples(self.extractor, self._images(item, progress), self.reference,
                                        pr_k=int(self.config.eval.pr_k))
    if int(metrics["num_samples"]) != item["num_samples"]:
      raise RuntimeError(f"Scored {metrics['num_samples']} samples instead of {item['num_samples']}.")
    return {k: float(v) for k, v in metrics.items() if k != "num_samples"}


def evaluate_checkpoints(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Evaluates the requested (checkpoint, sampler, steps) combinations not yet in WORKDIR/eval/results.jsonl;
  returns the records of all requested combinations, old and new, in order."""
  config_checks.validate(config, "eval")
  pairs = generation.eval_samplers(config)
  generator = generation.Generator(config, builders.create_model(config), parallel.create_mesh())
  _build_each(pairs, generator.program)   # each sampler built once, before anything is restored or drawn
  out_dir = epath.Path(workdir) / "eval"
  path = out_dir / RESULTS_FILE
  planned = planned_results(config, _requested_steps(config, workdir), pairs)
  done = {result_key(r): r for r in jsonl.read(path)}
  todo = [p for p in planned if result_key(p) not in done]
  logging.info("Evaluation of %s: %d combinations, %d already in %s.", workdir, len(planned),
               len(planned) - len(todo), path)
  if todo:
    scorer = _Scorer(config, workdir, generator)
    writer = summaries.create_writer(out_dir, is_main=jax.process_index() == 0)
    for index, item in enumerate(todo):
      start = time.time()
      metrics = scorer.score(item, f"Eval {index + 1}/{len(todo)}")
      record = {**item, **metrics, "seconds": round(time.time() - start, 3)}
      jsonl.append(path, record)
      writer.write_scalars(item["checkpoint_step"], {f"{item['feature_space']}/{k}/{item['sampler']}_{item['steps']}":
                                                     v for k, v in metrics.items()})
      writer.flush()
      done[result_key(record)] = record
      logging.info("Step %d, %s %s steps, %d samples in %s space: %s (%.1f s).", item["checkpoint_step"],
                   item["sampler"], item["steps"], item["num_samples"], item["feature_space"],
                   ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), record["seconds"])
    writer.close()
  return [done[result_key(p)] for p in planned]
