"""A study's plan, from its config alone: the arms, the checkpoint steps, the samplers and where each result lives.

Both the driver (compare.py) and the report (report.py) read a study through these functions, so they agree on
what a study holds without importing each other.
"""

from __future__ import annotations

import copy
import dataclasses

from etils import epath
import ml_collections

from debias_jax import errors
from debias_jax import generation
from debias_jax.diffusion import targets
from debias_jax.diffusion import weighting

STUDY_DIR = "compare"          # DIR/compare: timings, runs, the data floor, the study's config
ARMS_DIR = "arms"
REPORT_FILE = "REPORT.md"
EXACT_DATASET = "gmm"


@dataclasses.dataclass(frozen=True)
class Arm:
  """One row of the comparison: a weighting (with its loss options) trained on one prediction target."""
  name: str
  target: str
  weighting: str
  options: tuple[tuple[str, float | str], ...] = ()   # config.loss fields

  @property
  def directory(self) -> str:
    return self.name.replace("@", "-at-")


# The arms a researcher expects (the ones the paper compares). x0 and v are prediction targets; their weights:
#  - x0: the standard x0 objective, an unweighted x0-MSE = weighting "snr" (eps-space 1/SNR);
#  - v: the debias objective in v form (v-MSE weight sqrt(SNR)/(1+SNR), x0-space sqrt(SNR)): the same objective
#    as the debias arm with another network output, so it tests whether the gain is the weight's alone. The plain
#    unweighted v-MSE (eps-space 1 + 1/SNR) is not among weighting.WEIGHTINGS; any weighting@target pair can be
#    added as an arm, e.g. "constant@v".
#  - debias_is: debias's objective with t drawn in proportion to the weight (loss.t_sampling = "importance") and the
#    loss divided by that proposal: the same expected objective, other gradient noise.
ARMS = {
    "constant": Arm("constant", "eps", "constant"),
    "debias": Arm("debias", "eps", "debias"),
    "p2": Arm("p2", "eps", "p2", (("p2_k", 1.0), ("p2_gamma", 1.0))),
    "min_snr": Arm("min_snr", "eps", "min_snr", (("min_snr_gamma", 5.0),)),
    "x0": Arm("x0", "x0", "snr"),
    "v": Arm("v", "v", "debias"),
    "debias_is": Arm("debias_is", "eps", "debias", (("t_sampling", "importance"),)),
}


def parse_arm(spec: str) -> Arm:
  """A name of ARMS, or "weighting@target" (e.g. "constant@v": the loss section's other options as configured)."""
  spec = str(spec).strip()
  if spec in ARMS:
    return ARMS[spec]
  name, sep, target = spec.partition("@")
  if sep and name in weighting.WEIGHTINGS and target in targets.TARGETS:
    return Arm(spec, target, name)
  raise errors.ConfigError(
      f"config.compare.arms has {spec!r}; use one of {', '.join(ARMS)} or 'weighting@target' with a weighting in "
      f"{', '.join(weighting.WEIGHTINGS)} and a target in {', '.join(targets.TARGETS)} (e.g. 'constant@v').")


def parse_sampler(entry: str, field: str) -> tuple[str, str]:
  return generation.parse_sampler_steps(entry, f"compare.{field}")


def study_arms(config) -> list[Arm]:
  arms = [parse_arm(a) for a in config.compare.arms]
  names = [a.name for a in arms]
  if not arms or len(set(names)) != len(names):
    raise errors.ConfigError(f"config.compare.arms={tuple(config.compare.arms)} must name at least one arm, "
                             f"each once.")
  return arms


def checkpoint_steps(config) -> list[int]:
  """compare.num_checkpoints evenly spaced steps ending at train.num_steps."""
  n, total = int(config.compare.num_checkpoints), int(config.train.num_steps)
  per_call = int(config.train.steps_per_call)
  if n < 1 or total % n:
    raise errors.ConfigError(f"config.compare.num_checkpoints={n} must be >= 1 and divide "
                             f"config.train.num_steps={total}.")
  every = total // n
  if every % per_call:
    raise errors.ConfigError(f"The checkpoint interval {every} (train.num_steps / compare.num_checkpoints) "
                             f"is not a multiple of train.steps_per_call={per_call}.")
  return [every * (i + 1) for i in range(n)]


def final_step(config) -> int:
  """The checkpoint of the sampling-steps sweep, the second sample seed and the bias analysis (default: the last)."""
  steps = checkpoint_steps(config)
  step = int(config.compare.final_step) or steps[-1]
  if step not in steps:
    raise errors.ConfigError(f"config.compare.final_step={step} is not one of the checkpoints {steps} "
                             f"(0 = the last).")
  return step


def is_exact_dataset(config) -> bool:
  return config.data.source == "embedded" and config.data.name == EXACT_DATASET


def exact_every_checkpoint(config) -> bool:
  """Whether the exact bias study runs at every checkpoint (gmm only: it needs the known mixture)."""
  return is_exact_dataset(config) and bool(config.compare.exact_every_checkpoint)


def eval_sampler(config) -> tuple[str, str]:
  name, steps = parse_sampler(config.compare.eval_sampler, "eval_sampler")
  if not steps.isdigit():
    raise errors.ConfigError(f"config.compare.eval_sampler={config.compare.eval_sampler!r}: the steps must "
                             f"be a plain number (the bias study takes it as one).")
  return name, steps


def study_seeds(config) -> list[int]:
  """compare.seeds, the training seeds every arm runs with (default: the config's own seed, one run per arm)."""
  seeds = config.compare.get("seeds") or (config.seed,)
  try:
    seeds = [int(s) for s in seeds]
  except (TypeError, ValueError) as e:
    raise errors.ConfigError(f"config.compare.seeds={tuple(seeds)} must be integers, e.g. (0, 1, 2).") from e
  if len(set(seeds)) != len(seeds):
    raise errors.ConfigError(f"config.compare.seeds={tuple(seeds)} names a seed twice; give each once.")
  return seeds


def arm_config(config, arm: Arm, seed: int | None = None) -> ml_collections.ConfigDict:
  """The training config of one arm: the study's config without its compare section, with the arm's loss and
  (if given) the training seed, which sets model init, data order, t and noise."""
  c = copy.deepcopy(config)
  with c.unlocked():
    if "compare" in c:
      del c["compare"]
    if seed is not None:
      c.seed = int(seed)
    c.loss.target = arm.target
    c.loss.weighting = arm.weighting
    for key, value in arm.options:
      c.loss[key] = value
    steps = checkpoint_steps(config)
    c.train.checkpoint_every = steps[0]
    # Every planned checkpoint must survive; an interruption can add one off-grid checkpoint per resume.
    c.train.keep_checkpoints = max(int(c.train.keep_checkpoints), len(steps) + 10)
  return c


def study_path(workdir: str, *parts: str) -> str:
  return str(epath.Path(workdir, STUDY_DIR, *parts))


def arm_dir(workdir: str, arm: Arm, suffix: str = "") -> str:
  return str(epath.Path(workdir, ARMS_DIR, arm.directory + suffix))


def seed_suffix(config, seed: int) -> str:
  """The first of compare.seeds trains in DIR/arms/<arm> (a single-seed study's layout, so such a study resumes
  when seeds are added); every other seed in DIR/arms/<arm>-seed<seed>."""
  return "" if int(seed) == study_seeds(config)[0] else f"-seed{int(seed)}"


def run_dir(config, workdir: str, arm: Arm, seed: int) -> str:
  """Where one (arm, training seed) run lives."""
  return arm_dir(workdir, arm, seed_suffix(config, seed))
