"""The comparisons of Yu et al., ECCV 2024, with one command, resumable, ending in a REPORT.md.

    python -m debias_jax.experiments.compare --config configs/compare/quick.py --workdir DIR

A study trains several arms -- a loss weighting with a prediction target -- on the same data, model and step
budget, once for each training seed of compare.seeds (model init, data order, t and noise all follow the seed; the
gmm mixture itself stays fixed), the first seed in DIR/arms/<arm> and every other one in DIR/arms/<arm>-seed<N>, and
measures every (arm, seed) run with the project's own modes:
  1. train: `train.train_and_evaluate` with compare.num_checkpoints evenly spaced checkpoints (all kept);
  2. iterations: `--mode eval`'s Fréchet distance of every checkpoint under compare.eval_sampler, and of the final
     one (compare.final_step, default the last) again with a second sample seed: how much the metric moves by
     sampling noise alone;
  3. exact (compare.exact_every_checkpoint, for gmm): `--mode analyze` restricted to the eval sampler at every
     checkpoint, of the EMA params and of the raw params (WORKDIR/analysis/raw): the exact bias and exact sample
     quality against the known mixture, over training (the EMA's at the final checkpoint is phase 5's study, done
     here with the same compiled programs);
  4. steps: the Fréchet distance at the final checkpoint for every compare.sweep entry ("ddim:10", "ddpm:250", ...);
  5. analysis: `--mode analyze` at the final checkpoint: per-t x0 error, first-step prediction, colour shift
     against the number of sampling steps and, on gmm, the bias against the exact denoiser;
  6. floor: the Fréchet distance of as many real examples as there are samples (the metric's floor at that size);
then `report.write_report` turns the saved results into DIR/REPORT.md (mean ± s.d. over seeds, paired per-seed
differences against constant, "iterations to match" and verdicts by the rule of experiments/efficiency.py). Every phase skips what its output files
already hold, so the same command resumes an interrupted study, and on a finished one only rewrites the report.
A config with a `suite` section (configs/compare/full.py) runs several studies, each in DIR/<name>, and writes a
report over all of them. The driver keeps a persistent XLA compilation cache (DIR/xla_cache by default) so arms
that run the same programs (samplers of one prediction target) compile them once.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import resource
import shlex
import signal
import sys
import time
from typing import Iterator

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np

from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import config_files
from debias_jax import jsonl
from debias_jax import logs
from debias_jax import pixels
from debias_jax import preemption
from debias_jax import runtime
from debias_jax import storage
from debias_jax import train
from debias_jax import xla_cpu
from debias_jax.analysis import study as analysis_study
from debias_jax.evaluation import features
from debias_jax.experiments import plan
from debias_jax.experiments import report
from debias_jax.modes import analyze as analyze_mode
from debias_jax.modes import evaluate as eval_mode


# ----------------------------------------------------------------------------------------------------------------
# Bookkeeping: timings, runs, resumable phases.


@contextlib.contextmanager
def timed(workdir: str, phase: str, arm: str = "", seed: int | None = None) -> Iterator[dict]:
  """Times a phase that did work (set info['skipped'] to leave it out) in DIR/compare/timings.jsonl."""
  info = {"skipped": False}
  start = time.time()
  yield info
  if not info["skipped"]:
    jsonl.append(plan.study_path(workdir, "timings.jsonl"),
                 {"phase": phase, "arm": arm, **({} if seed is None else {"seed": int(seed)}),
                  "seconds": round(time.time() - start, 2), "end": time.time()})


# What makes two trainings the same up to their length: a resumed study must not mix in arms trained otherwise.
TRAINING_FIELDS = ("seed", "data", "model", "diffusion", "loss", "optim", "ema_rates", "train.batch_size",
                   "train.steps_per_call")


def check_same_training(c, directory: str) -> None:
  """Raises ConfigError if the arm in `directory` was trained with another config than `c` (its length aside)."""
  if not (epath.Path(directory) / "config.json").exists():
    return
  differences = config_checks.differences_from_saved(c, checkpointing.load_config(directory), TRAINING_FIELDS,
                                                     ignore=config_checks.OPERATIONAL_FIELDS)
  if differences:
    raise config_checks.ConfigError(
        f"{directory} was trained with another config:\n  " + "\n  ".join(differences) +
        "\nUse a new --workdir for a changed study (or delete that arm's folder to retrain it).")


def train_arm(config, workdir: str, arm: plan.Arm, seed: int) -> None:
  c = plan.arm_config(config, arm, seed)
  directory = plan.run_dir(config, workdir, arm, seed)
  planned = plan.checkpoint_steps(config)
  with timed(workdir, "train", arm.name, seed) as info:
    if set(planned) <= set(checkpointing.saved_steps(directory)):
      info["skipped"] = True
      return
    logging.info("Training arm %s (%s-prediction, weighting %s), seed %d, in %s.", arm.name, arm.target,
                 arm.weighting, seed, directory)
    train.train_and_evaluate(c, directory)   # preemption.Preempted if stopped early
  missing = sorted(set(planned) - set(checkpointing.saved_steps(directory)))
  if missing:
    raise checkpointing.CheckpointError(
        f"Arm {arm.name} finished training but its checkpoints at steps {missing} are gone from "
        f"{checkpointing.checkpoint_dir(directory)} (train.keep_checkpoints too small?). Delete {directory} and "
        f"rerun to train it again.")


def _results_path(directory: str) -> str:
  return str(epath.Path(directory, "eval", eval_mode.RESULTS_FILE))


def _evaluate(c, directory: str, steps: list[int], entries: tuple[str, ...]) -> int:
  """`--mode eval` of (steps x entries) in the arm's directory (it skips what is done); returns the new results."""
  before = len(jsonl.read(_results_path(directory)))
  c = copy.deepcopy(c)
  c.eval.checkpoint_steps = tuple(steps)
  c.eval.sampler_steps = tuple(entries)
  eval_mode.evaluate_checkpoints(c, directory)
  return len(jsonl.read(_results_path(directory))) - before


def evaluate_iterations(config, workdir: str, arm: plan.Arm, seed: int) -> None:
  c, directory = plan.arm_config(config, arm, seed), plan.run_dir(config, workdir, arm, seed)
  entry = ":".join(plan.eval_sampler(config))
  steps = plan.checkpoint_steps(config)
  with timed(workdir, "iterations", arm.name, seed) as info:
    info["skipped"] = not _evaluate(c, directory, steps, (entry,))
  offset = int(config.compare.second_seed_offset)
  if offset:
    c2 = copy.deepcopy(c)
    c2.seed = int(c.seed) + offset
    with timed(workdir, "second_seed", arm.name, seed) as info:
      info["skipped"] = not _evaluate(c2, directory, [plan.final_step(config)], (entry,))


def evaluate_sweep(config, workdir: str, arm: plan.Arm, seed: int) -> None:
  sweep = tuple(config.compare.sweep)
  if not sweep:
    return
  c, directory = plan.arm_config(config, arm, seed), plan.run_dir(config, workdir, arm, seed)
  with timed(workdir, "steps", arm.name, seed) as info:
    info["skipped"] = not _evaluate(c, directory, [plan.final_step(config)], sweep)


def analysis_path(directory: str, step: int, use_ema: bool = True) -> str:
  return str(analysis_study.output_dir(directory, use_ema) / f"step_{step:08d}.json")


def _analysis_covers(path: str, samplers: tuple[str, ...], steps: tuple[int, ...]) -> bool:
  if not epath.Path(path).exists():
    return False
  result = storage.read_json(path)
  curves = result.get("color_shift", {}).get("samplers", {})
  return all(name in curves and set(steps) <= {int(r["steps"]) for r in curves[name]} for name in samplers)


def _analyze(analyzer, directory: str, step: int, samplers: tuple[str, ...], steps: tuple[int, ...], workdir: str,
             phase: str, arm: plan.Arm, seed: int, use_ema: bool = True, figures: bool = True) -> None:
  """One study of a checkpoint unless its file covers it; `analyzer()` gives the run's analyze_mode.Analyzer (made
  on first use, so a finished study compiles nothing)."""
  with timed(workdir, phase, arm.name, seed) as info:
    if _analysis_covers(analysis_path(directory, step, use_ema), samplers, steps):
      info["skipped"] = True
      return
    analyzer().analyze(step, use_ema, samplers, steps, figures)


def _analyzer(config, workdir: str, arm: plan.Arm, seed: int):
  """(the run's directory, a function making its Analyzer once, when first called)."""
  c, directory = plan.arm_config(config, arm, seed), plan.run_dir(config, workdir, arm, seed)
  return directory, functools.cache(lambda: analyze_mode.Analyzer(c, directory))


def analysis_settings(config) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """The final bias study's samplers and step counts; on gmm they include the eval sampler, so the exact sample
  quality of the last checkpoint continues the curve over iterations."""
  samplers = tuple(config.analysis.samplers)
  steps = tuple(int(s) for s in config.analysis.sampling_steps)
  if plan.exact_every_checkpoint(config):
    name, count = plan.eval_sampler(config)
    samplers = samplers + ((name,) if name not in samplers else ())
    steps = tuple(sorted(set(steps) | {int(count)}))
  return samplers, steps


def analyze_checkpoints(config, workdir: str, arm: plan.Arm, seed: int) -> None:
  """The bias study with the eval sampler only (gmm: exact metrics) at every checkpoint, of the EMA params and of
  the raw params, which the EMA lags behind early on; at the final checkpoint the EMA's study is phase 5's full
  one. One Analyzer serves them all (programs compiled once, each checkpoint restored once)."""
  if not plan.exact_every_checkpoint(config):
    return
  directory, analyzer = _analyzer(config, workdir, arm, seed)
  name, count = plan.eval_sampler(config)
  for step in plan.checkpoint_steps(config):
    if step == plan.final_step(config):
      _analyze(analyzer, directory, step, *analysis_settings(config), workdir, "analysis", arm, seed)
    else:
      _analyze(analyzer, directory, step, (name,), (int(count),), workdir, "exact", arm, seed, figures=False)
    _analyze(analyzer, directory, step, (name,), (int(count),), workdir, "exact_raw", arm, seed, use_ema=False,
             figures=False)


def analyze_last(config, workdir: str, arm: plan.Arm, seed: int) -> None:
  directory, analyzer = _analyzer(config, workdir, arm, seed)
  _analyze(analyzer, directory, plan.final_step(config), *analysis_settings(config), workdir, "analysis", arm, seed)


def data_floor(config, workdir: str) -> dict:
  """The Fréchet distance of eval.num_samples real examples against the evaluation's reference, cached.

  gmm: fresh samples of the test split (independent of the reference). Other data: a random subset of the split
  the reference is computed on, so this slightly underestimates the floor of independent samples.
  """
  num = int(config.eval.num_samples)
  space = features.resolve_feature_space(config.eval, config.data)
  path = plan.study_path(workdir, "data_floor.json")
  key = {"num_samples": num, "feature_space": space, "data": config.data.name, "seed": int(config.seed)}
  if epath.Path(path).exists():
    saved = storage.read_json(path)
    if saved.get("key") == key:
      return saved
  with timed(workdir, "floor"):
    extractor = features.get_feature_extractor(config.eval, config.data)
    reference = features.reference_from_config(extractor, config.eval, config.data)
    data_config = copy.deepcopy(config.data)
    if plan.is_exact_dataset(config):
      data_config.split = "test"
      images, _, _ = features.load_dataset_arrays(data_config, num)
      independent = True
    else:
      images, _, _ = features.load_dataset_arrays(data_config)
      rng = np.random.default_rng(int(config.seed))
      images = images[rng.choice(len(images), size=min(num, len(images)), replace=False)]
      independent = False
    metrics = features.evaluate_samples(extractor, pixels.to_uint8(images), reference)
  record = {"key": key, "independent_of_reference": independent,
            **{k: float(v) for k, v in metrics.items()}}
  if jax.process_index() == 0:
    storage.write_json(path, record)
  return record


# ----------------------------------------------------------------------------------------------------------------
# Drivers.


PHASES = ("train", "iterations", "exact", "steps", "analysis", "floor")


def run_study(config, workdir: str, *, command: str = "", phases: tuple[str, ...] = PHASES) -> str:
  """Runs (or resumes) one study in workdir and writes its REPORT.md; returns the report's path."""
  config_checks.validate_study(config)
  arms = plan.study_arms(config)
  seeds = plan.study_seeds(config)
  runs = [(arm, seed) for arm in arms for seed in seeds]
  for arm, seed in runs:   # before anything is written: a refused study leaves the saved one as it was
    check_same_training(plan.arm_config(config, arm, seed), plan.run_dir(config, workdir, arm, seed))
  start = time.time()
  usage = resource.getrusage(resource.RUSAGE_SELF)
  cpu_start = usage.ru_utime + usage.ru_stime
  run = {"command": command, "start": start, "load_start": list(os.getloadavg()), "phases": list(phases)}
  if jax.process_index() == 0:
    storage.write_atomic(plan.study_path(workdir, "config.json"), config.to_json_best_effort(indent=2))
  completed = False
  try:
    steps = {"train": train_arm, "iterations": evaluate_iterations, "exact": analyze_checkpoints,
             "steps": evaluate_sweep, "analysis": analyze_last}
    progress = logs.Progress(f"Study {workdir}", sum(len(runs) for p in phases if p in steps) + ("floor" in phases),
                             "phases of (arm, seed) runs", every_seconds=0.0)
    for phase in PHASES:
      if phase not in phases:
        continue
      if phase == "floor":
        data_floor(config, workdir)
        progress.update()
        continue
      for arm, seed in runs:
        steps[phase](config, workdir, arm, seed)
        progress.update()
      logging.info("Study %s: phase %s done (%.0f s so far); writing the interim report.", workdir, phase,
                   time.time() - start)
      report.write_report(config, workdir, current_run=dict(run, seconds=time.time() - start), figures=False)
    completed = True
  finally:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    run.update(end=time.time(), seconds=round(time.time() - start, 2), completed=completed,
               load_end=list(os.getloadavg()), cpu_seconds=round(usage.ru_utime + usage.ru_stime - cpu_start, 2))
    if completed:
      path = report.write_report(config, workdir, current_run=run)
    jsonl.append(plan.study_path(workdir, "runs.jsonl"), run)
  return path


def run(config, workdir: str, *, command: str = "", phases: tuple[str, ...] = PHASES) -> str:
  """A study, or every study of a suite (config.suite: name -> study config, each in workdir/name)."""
  if "suite" in config:
    names = list(config.suite.keys())
    for name in names:
      run_study(config.suite[name], str(epath.Path(workdir) / name), command=command, phases=phases)
    return report.write_suite_report(config, workdir, names)
  return run_study(config, workdir, command=command, phases=phases)


def command_line(argv: list[str]) -> str:
  return " ".join(["python -m debias_jax.experiments.compare"] + [shlex.quote(a) for a in argv[1:]])


FLAGS = flags.FLAGS


def _stop_on_sigterm(signum, frame):
  del signum, frame
  raise preemption.Preempted("Stopped by SIGTERM.")   # unwinds, so the run's wall time is recorded


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  previous_handler = signal.signal(signal.SIGTERM, _stop_on_sigterm)
  studies = [FLAGS.config.suite[name] for name in FLAGS.config.suite] if "suite" in FLAGS.config else [FLAGS.config]
  xla_cpu.prefer_wide_vectors()   # before JAX starts its backends
  xla_cpu.reuse_freed_memory()
  xla_cpu.cores_as_devices([b for c in studies for b in (c.train.batch_size, c.sampling.batch_size,
                                                          c.analysis.batch_size)])
  cache = FLAGS.compilation_cache or str(epath.Path(FLAGS.workdir) / "xla_cache")
  runtime.setup(cache)
  bad = [p for p in FLAGS.phases if p not in PHASES]
  if bad:
    raise app.UsageError(f"--phases has {bad}; valid: {', '.join(PHASES)}.")
  try:
    path = run(FLAGS.config, FLAGS.workdir, command=command_line(sys.argv), phases=tuple(FLAGS.phases))
  except preemption.Preempted as e:
    preemption.exit_preempted(e)
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
  logging.info("Report: %s", path)
  print(f"Report written to {path}")


def define_flags() -> None:
  """The command line's flags; defined only when run as a program, so importing this module next to
  debias_jax.main (which has its own --config and --workdir) never defines a flag twice."""
  config_files.DEFINE_config_file("config", None, "A configs/compare/*.py preset.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory of the study; rerunning the same command resumes it.")
  flags.DEFINE_string("compilation_cache", "", "Persistent XLA compilation cache ('' = WORKDIR/xla_cache, "
                      "'none' = off).")
  flags.DEFINE_list("phases", list(PHASES), f"Phases to run, in their fixed order ({', '.join(PHASES)}); "
                    "the report is always written.")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
