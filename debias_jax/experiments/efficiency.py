"""Training efficiency and the seed statistics of a comparison: "iterations to match" and the verdict rule.

The paper's headline readout is how many iterations an arm needs to reach the baseline's final quality, as a
fraction of the baseline's budget (it reports about 0.4 for debias against constant). `iterations_to_match`
computes it from the checkpoint curves. The per-seed helpers turn repeats over training seeds into means,
paired differences against the baseline (same seed: same init, data order, t and noise), and a verdict fixed in
advance, so that one lucky seed cannot carry a claim. Pure numpy, float64.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

SUPPORTED, CONTRADICTED, NOT_SUPPORTED = "supported", "contradicted", "not supported"


def _curve(steps, values, name: str) -> tuple[np.ndarray, np.ndarray]:
  steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
  if steps.ndim != 1 or len(steps) == 0 or steps.shape != values.shape:
    raise ValueError(f"{name}: steps and values must be 1-D, non-empty and of equal length, got shapes "
                     f"{steps.shape} and {values.shape}.")
  if np.any(np.diff(steps) <= 0) or not np.all(np.isfinite(steps)):
    raise ValueError(f"{name}: checkpoint steps must be finite and strictly increasing, got {steps.tolist()}.")
  return steps, values


def iterations_to_match(baseline_steps: Sequence[float], baseline_values: Sequence[float],
                        arm_values: Sequence[float], arm_steps: Sequence[float] | None = None, *,
                        higher_is_better: bool = False) -> dict:
  """The first iteration at which the arm's curve reaches the baseline's final value, and its share of the budget.

  The target is baseline_values[-1]; the budget is baseline_steps[-1]. The arm reaches the target at its first
  checkpoint whose value is at least as good (<= target, or >= with higher_is_better); the iteration is then
  interpolated linearly between that checkpoint and the one before (at the first checkpoint itself when it is the
  arm's first). Non-finite values (a diverged or missing evaluation) never count as reaching. arm_steps defaults
  to baseline_steps. Returns {"iteration", "fraction", "target", "budget"}; iteration and fraction are None when
  the arm never reaches the target.
  """
  base_steps, base_values = _curve(baseline_steps, baseline_values, "baseline")
  steps, values = _curve(base_steps if arm_steps is None else arm_steps, arm_values, "arm")
  target, budget = float(base_values[-1]), float(base_steps[-1])
  if not math.isfinite(target):
    raise ValueError(f"The baseline's final value is {target}; there is nothing to match.")
  if budget <= 0:
    raise ValueError(f"The baseline's budget (its last checkpoint step) must be positive, got {budget}.")
  sign = -1.0 if higher_is_better else 1.0
  reached = np.isfinite(values) & (sign * values <= sign * target)
  if not np.any(reached):
    return {"iteration": None, "fraction": None, "target": target, "budget": budget}
  i = int(np.argmax(reached))
  if i == 0 or values[i] == target or not np.isfinite(values[i - 1]):
    iteration = float(steps[i])
  else:
    # values[i - 1] is worse than the target and values[i] at least as good: a proper linear interpolation.
    share = (target - values[i - 1]) / (values[i] - values[i - 1])
    iteration = float(steps[i - 1] + share * (steps[i] - steps[i - 1]))
  return {"iteration": iteration, "fraction": iteration / budget, "target": target, "budget": budget}


def mean_sd(values: Sequence[float]) -> dict:
  """Mean and sample standard deviation (ddof = 1) over seeds; sd is None for a single seed."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or len(values) == 0:
    raise ValueError(f"Expected a non-empty 1-D sequence of per-seed values, got shape {values.shape}.")
  sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return {"mean": float(np.mean(values)), "sd": sd, "n": int(len(values))}


def paired_differences(arm: Mapping[int, float], baseline: Mapping[int, float]) -> dict[int, float]:
  """arm - baseline per training seed; both must hold exactly the same seeds (pairs share init and data order)."""
  if set(arm) != set(baseline):
    raise ValueError(f"Paired differences need the same seeds in both arms: arm has {sorted(arm)}, baseline "
                     f"has {sorted(baseline)}.")
  if not arm:
    raise ValueError("Paired differences need at least one seed.")
  return {seed: float(arm[seed]) - float(baseline[seed]) for seed in sorted(arm)}


def sampling_seed_spread(differences: np.ndarray) -> float:
  """s.d. over sampling seeds of the mean paired difference, from differences[training_seed, sampling_seed].

  This is how much the mean difference moves when only the samples drawn for evaluation change; 0 for a metric
  that draws no samples (the excess x0 error on fixed data and noise). Needs at least 2 sampling seeds.
  """
  differences = np.asarray(differences, np.float64)
  if differences.ndim != 2 or differences.shape[0] < 1 or differences.shape[1] < 2:
    raise ValueError("sampling_seed_spread needs a (training seeds, sampling seeds) array with >= 2 sampling seeds, "
                     f"got shape {differences.shape}.")
  return float(np.std(differences.mean(axis=0), ddof=1))


def verdict(differences: Sequence[float], sampling_spread: float, expected_sign: int) -> dict:
  """The verdict rule, fixed in advance, on paired per-seed differences (arm - baseline).

  seed_spread = s.d.(differences) / sqrt(n): the standard error of the mean paired difference over training
  seeds. noise = sqrt(seed_spread^2 + sampling_spread^2). The claim (the arm differs from the baseline in the
  direction expected_sign, +1 or -1, e.g. -1 for "lower error") is
  - "supported" if every difference has the expected sign and |mean| > 2 noise;
  - "contradicted" if every difference has the opposite sign and |mean| > 2 noise;
  - "not supported" otherwise, and always with fewer than 2 seeds (no seed spread can be measured).
  A difference of exactly 0 has neither sign. With n seeds the signs alone agree by chance with probability
  2^(1 - n) (0.25 at n = 3), which is why the size test is required as well.
  """
  if expected_sign not in (1, -1):
    raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign!r}.")
  differences = np.asarray(differences, np.float64)
  if differences.ndim != 1 or len(differences) == 0 or not np.all(np.isfinite(differences)):
    raise ValueError(f"Expected a non-empty 1-D sequence of finite differences, got {differences.tolist()}.")
  if not (math.isfinite(sampling_spread) and sampling_spread >= 0):
    raise ValueError(f"sampling_spread must be finite and >= 0, got {sampling_spread}.")
  n = len(differences)
  mean = float(differences.mean())
  seed_spread = float(np.std(differences, ddof=1) / math.sqrt(n)) if n > 1 else None
  noise = None if seed_spread is None else math.sqrt(seed_spread ** 2 + sampling_spread ** 2)
  result = NOT_SUPPORTED
  if noise is not None and abs(mean) > 2.0 * noise:
    if np.all(np.sign(differences) == expected_sign):
      result = SUPPORTED
    elif np.all(np.sign(differences) == -expected_sign):
      result = CONTRADICTED
  return {"verdict": result, "mean": mean, "n": n, "seed_spread": seed_spread,
          "sampling_spread": float(sampling_spread), "noise": noise}
