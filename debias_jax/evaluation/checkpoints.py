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
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import generate
from debias_jax import jsonl
from debias_jax import logs
from debias_jax import parallel
from debias_jax import sampling
from debias_jax import storage
from debias_jax import summaries
from debias_jax.evaluation import features

RESULTS_FILE = "results.jsonl"
# The fields that identify a result: a rerun skips a combination whose key is already in the results file.
KEY_FIELDS = ("checkpoint_step", "sampler", "steps", "sampler_options", "params", "num_samples", "seed",
              "feature_space", "reference")


def parse_sampler_steps(config) -> list[tuple[str, str]]:
  """eval.sampler_steps ("ddim:50", "dpm_solver++:20", ...) as (sampler, steps) pairs, each checked to build."""
  entries = tuple(config.eval.get("sampler_steps", ()) or ())
  if not entries:
    pairs = [(config.sampling.sampler, str(config.sampling.steps))]
  else:
    pairs = []
    for entry in entries:
      name, sep, steps = str(entry).partition(":")
      if not sep or not name or not steps:
        raise config_checks.ConfigError(f"config.eval.sampler_steps has {entry!r}; write 'sampler:steps', e.g. "
                                        f"'ddim:50' or 'ddpm:100'.")
      pairs.append((name.strip(), steps.strip()))
  schedule = builders.schedule(config)
  for name, steps in pairs:
    try:
      sampling.make_sampler(config, schedule, name, steps)
    except (ValueError, TypeError) as e:
      raise config_checks.ConfigError(f"config.eval.sampler_steps: cannot build {name}:{steps} ({e}).") from e
  return pairs


def available_steps(workdir: str) -> list[int]:
  """The checkpoint steps in workdir, or a CheckpointError saying what to run first."""
  directory = checkpointing.checkpoint_dir(workdir)
  steps = []
  if epath.Path(directory).is_dir():
    checkpointer = checkpointing.Checkpointer(directory, async_save=False)
    steps = sorted(checkpointer.all_steps())
    checkpointer.close()
  if not steps:
    raise checkpointing.CheckpointError(
        f"No checkpoints in {storage.absolute(directory)}. Train first: python -m debias_jax.main "
        f"--config=<the config> --workdir={workdir} (--mode train), then rerun --mode eval.")
  return steps


def _sampler_options(config, name: str) -> dict:
  s = config.sampling
  if name == "ddim":
    options = {"eta": float(s.eta)}
  elif name == "ddpm":
    options = {}
  else:
    options = dict(s.get("solver_options", {}))
  return {**options, "clip_x0": bool(s.clip_x0)}


def _reference_name(config) -> str:
  ev, d = config.eval, config.data
  if ev.get("reference_npz", ""):
    return f"npz:{storage.absolute(ev.reference_npz)}"
  num = int(ev.get("num_reference", 0))
  return f"data:{d.get('source', 'embedded')}/{d.name}/{d.get('split', 'train')}/{num if num else 'all'}"


def result_key(record: dict) -> str:
  return json.dumps({k: record.get(k) for k in KEY_FIELDS}, sort_keys=True)


def _counted(batches, progress: logs.Progress):
  for images, _ in batches:
    progress.update(len(images))
    yield images


def evaluate_checkpoints(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Evaluates the requested (checkpoint, sampler, steps) combinations not yet in WORKDIR/eval/results.jsonl;
  returns the records of all requested combinations, old and new, in order."""
  config_checks.validate(config)
  ev = config.eval
  pairs = parse_sampler_steps(config)
  available = available_steps(workdir)
  requested = [int(s) for s in (ev.get("checkpoint_steps", ()) or ())] or available
  missing = [s for s in requested if s not in available]
  if missing:
    raise checkpointing.CheckpointError(f"No checkpoint at steps {missing} in {workdir}; it holds {available}. "
                                        f"Set config.eval.checkpoint_steps to some of those, or () for all.")

  out_dir = epath.Path(workdir) / "eval"
  path = out_dir / RESULTS_FILE
  done = {result_key(r): r for r in jsonl.read(path)}
  use_ema = bool(config.sampling.use_ema)
  params_name = f"ema{float(config.ema_rates[0]):g}" if use_ema else "params"
  base = {"params": params_name, "num_samples": int(ev.num_samples), "seed": int(config.seed),
          "feature_space": features.resolve_feature_space(ev, config.data), "reference": _reference_name(config)}
  plan = [dict(base, checkpoint_step=step, sampler=name, steps=steps, sampler_options=_sampler_options(config, name))
          for step in requested for name, steps in pairs]
  todo = [p for p in plan if result_key(p) not in done]
  logging.info("Evaluation of %s: %d combinations, %d already in %s.", workdir, len(plan), len(plan) - len(todo), path)
  if not todo:
    return [done[result_key(p)] for p in plan]

  extractor = features.get_feature_extractor(ev, config.data)
  reference = features.reference_from_config(extractor, ev, config.data)
  mesh = parallel.create_mesh()
  writer = summaries.create_writer(out_dir, is_main=jax.process_index() == 0)
  generator = None
  labels = generate.sample_labels(config, int(ev.num_samples))
  restored = None
  for index, item in enumerate(todo):
    if restored is None or restored.step != item["checkpoint_step"]:
      restored = generate.restore_params(config, workdir, item["checkpoint_step"], use_ema, mesh)
      generator = generator or sampling.Generator(config, restored.model, mesh)
    start = time.time()
    batches = generate.sample_batches(generator, restored.params, int(ev.num_samples), generate.sample_rng(config),
                                      batch_size=int(config.sampling.batch_size), sampler=item["sampler"],
                                      steps=item["steps"], labels=labels)
    progress = logs.Progress(f"Eval {index + 1}/{len(todo)} (step {item['checkpoint_step']}, {item['sampler']} "
                             f"{item['steps']} steps)", item["num_samples"])
    metrics = features.evaluate_samples(extractor, (sampling.to_uint8(images) for images in
                                                    _counted(batches, progress)),
                                        reference, pr_k=int(ev.get("pr_k", 3)))
    record = {**item, **{k: float(v) for k, v in metrics.items() if k != "num_samples"},
              "seconds": round(time.time() - start, 3)}
    if int(metrics["num_samples"]) != item["num_samples"]:
      raise RuntimeError(f"Scored {metrics['num_samples']} samples instead of {item['num_samples']}.")
    jsonl.append(path, record)
    tag = f"{item['sampler']}_{item['steps']}"
    writer.write_scalars(item["checkpoint_step"], {f"{base['feature_space']}/{k}/{tag}": v for k, v in metrics.items()
                                                   if k != "num_samples"})
    writer.flush()
    done[result_key(record)] = record
    logging.info("Step %d, %s %s steps, %d samples in %s space: %s (%.1f s).", item["checkpoint_step"],
                 item["sampler"], item["steps"], item["num_samples"], base["feature_space"],
                 ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), record["seconds"])
  writer.close()
  return [done[result_key(p)] for p in plan]
