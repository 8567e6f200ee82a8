"""Loss weightings over timesteps, defined once in eps-space and converted to the trained target.

The MSE of the three targets differ by exact factors (from x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps):
    ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2,   ||v - v_hat||^2 = (1 + SNR) ||x0 - x0_hat||^2.
So an eps-space weight w gives the same objective as the weight w * SNR on the x0-MSE and w * SNR / (1 + SNR)
on the v-MSE; `loss_weights` returns the per-step weight for the target being trained.
"""

from __future__ import annotations

import numpy as np

from debias_jax.diffusion.schedules import Schedule
from debias_jax.diffusion.targets import check_target

WEIGHTINGS = ("constant", "debias", "snr", "p2", "min_snr")
# Each weighting written as a function of SNR (k = p2_k, γ = p2_gamma or min_snr_gamma), for reports: "eps" is
# `eps_space_weight`, "x0" the equal weight on the x0-MSE (times SNR, `eps_to_target_factor`).
FORMULAS = {
    "constant": {"eps": "1", "x0": "SNR"},
    "debias": {"eps": "1/√SNR", "x0": "√SNR"},
    "snr": {"eps": "1/SNR", "x0": "1"},
    "p2": {"eps": "1/(k+SNR)^γ", "x0": "SNR/(k+SNR)^γ"},
    "min_snr": {"eps": "min(SNR,γ)/SNR", "x0": "min(SNR,γ)"},
}


def eps_space_weight(name: str, snr: np.ndarray, *, p2_k: float = 1.0, p2_gamma: float = 1.0,
                     min_snr_gamma: float = 5.0) -> np.ndarray:
  """Weight on the eps-MSE as a function of SNR (float64)."""
  snr = np.asarray(snr, np.float64)
  if name == "constant":
    return np.ones_like(snr)
  if name == "debias":
    return 1.0 / np.sqrt(snr)
  if name == "snr":
    return 1.0 / snr
  if name == "p2":
    return 1.0 / (p2_k + snr) ** p2_gamma
  if name == "min_snr":
    return np.minimum(snr, min_snr_gamma) / snr
  raise ValueError(f"Unknown weighting {name!r}; valid weightings: {', '.join(WEIGHTINGS)}.")


def eps_to_target_factor(target: str, snr: np.ndarray) -> np.ndarray:
  """Factor turning an eps-MSE weight into the weight that gives the same objective on `target`'s MSE."""
  check_target(target)
  snr = np.asarray(snr, np.float64)
  return {"eps": np.ones_like(snr), "x0": snr, "v": snr / (1.0 + snr)}[target]


def loss_weights(schedule: Schedule, weighting: str, target: str = "eps", *, p2_k: float = 1.0,
                 p2_gamma: float = 1.0, min_snr_gamma: float = 5.0, snr_clamp: float | None = None,
                 normalize: bool = False) -> np.ndarray:
  """Per-step weight on the MSE of `target`, float64, shape (num_steps,).

  snr_clamp: if set, the weighting sees SNR clipped to [1/snr_clamp, snr_clamp] (bounds the weights, e.g. for
    zero-terminal-SNR schedules); the conversion to the target uses the true SNR, so it stays exact.
  normalize: scale the eps-space weights to mean 1 over the steps (the authors did not).
  """
  snr = schedule.snr
  weighted_snr = snr if not snr_clamp else np.clip(snr, 1.0 / snr_clamp, snr_clamp)
  weights = eps_space_weight(weighting, weighted_snr, p2_k=p2_k, p2_gamma=p2_gamma, min_snr_gamma=min_snr_gamma)
  if normalize:
    weights = weights / weights.mean()
  return weights * eps_to_target_factor(target, snr)
