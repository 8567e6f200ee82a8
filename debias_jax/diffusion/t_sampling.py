"""Importance sampling of the timestep: t drawn in proportion to the eps-space weight, the weight divided back out.

The objective is E_{t ~ U}[w(t) L(t)] = (1/T) sum_t w(t) L(t), with w the weight on the trained target's MSE
(`weighting.loss_weights`). Drawing t from q(t) = w_eps(t) / sum_s w_eps(s) instead, and multiplying each
example's loss by m(t) = 1 / (T q(t)), gives E_q[m(t) w(t) L(t)] = sum_t q(t) w(t) L(t) / (T q(t)) = the same
objective, exactly, term by term; only the variance of its minibatch estimate changes. q follows the eps-space
weight (not the target's) so that the effective per-example weight m(t) w(t) is constant for eps-prediction:
every draw counts alike, where uniform sampling with debias spends 10% of its draws on t < 100, which carry 0.1%
of the weight on the linear schedule. The multiplier applies to the whole per-example loss (the VLB term of learned
variances included), so the expected total loss is unchanged as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.diffusion import weighting
from debias_jax.diffusion.schedules import Schedule

T_SAMPLINGS = ("uniform", "importance")
DEFAULT_BANDS = (100, 500)      # t < 100, 100 <= t < 500, t >= 500 (on T = 1000)


def check_t_sampling(name: str) -> str:
  if name not in T_SAMPLINGS:
    raise ValueError(f"Unknown t sampling {name!r}; valid: {', '.join(T_SAMPLINGS)} (config.loss.t_sampling).")
  return name


def eps_space_weights(schedule: Schedule, weights: np.ndarray, target: str) -> np.ndarray:
  """The eps-space weight behind a per-step weight table on `target`'s MSE (as `make_loss_fn` receives it)."""
  weights = np.asarray(weights, np.float64)
  if weights.shape != (schedule.num_steps,):
    raise ValueError(f"Expected one weight per step ({schedule.num_steps}), got shape {weights.shape}.")
  return weights / weighting.eps_to_target_factor(target, schedule.snr)


def proposal(eps_weights: np.ndarray) -> np.ndarray:
  """q(t) = w_eps(t) / sum w_eps, float64; every weight must be positive and finite (every t must be drawable)."""
  eps_weights = np.asarray(eps_weights, np.float64)
  if eps_weights.ndim != 1 or len(eps_weights) == 0 or not np.all(np.isfinite(eps_weights) & (eps_weights > 0)):
    raise ValueError("Importance sampling of t needs a positive, finite eps-space weight at every step; got "
                     f"min {np.min(eps_weights)}, max {np.max(eps_weights)}. Use loss.t_sampling='uniform'.")
  return eps_weights / eps_weights.sum()


def multipliers(q: np.ndarray) -> np.ndarray:
  """m(t) = 1 / (T q(t)): the factor on a loss drawn at t ~ q that makes its expectation the uniform one."""
  q = np.asarray(q, np.float64)
  return 1.0 / (len(q) * q)


def importance_tables(schedule: Schedule, weights: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
  """(q, m): the proposal over the schedule's steps and the per-step multiplier, float64, for a weight table."""
  q = proposal(eps_space_weights(schedule, weights, target))
  return q, multipliers(q)


def sample_steps(rng, q: np.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
  """Step indices drawn from q (int32, `shape`); traceable (q is a host table, baked into the program)."""
  logits = jnp.asarray(np.log(np.asarray(q, np.float64)), jnp.float32)
  return jax.random.categorical(rng, logits, shape=shape).astype(jnp.int32)


def band_shares(eps_weights: np.ndarray, edges: tuple[int, ...] = DEFAULT_BANDS) -> np.ndarray:
  """Share of the total eps-space weight in each band of steps [0, e0), [e0, e1), ..., [e_last, T); float64."""
  eps_weights = np.asarray(eps_weights, np.float64)
  bounds = [0, *edges, len(eps_weights)]
  if any(lo >= hi for lo, hi in zip(bounds[:-1], bounds[1:])):
    raise ValueError(f"Band edges {edges} must increase strictly inside (0, {len(eps_weights)}).")
  return np.array([eps_weights[lo:hi].sum() for lo, hi in zip(bounds[:-1], bounds[1:])]) / eps_weights.sum()


def weight_share_table(schedule: Schedule, edges: tuple[int, ...] = DEFAULT_BANDS, **options) -> dict[str, list]:
  """band_shares of every weighting's eps-space weight on `schedule` (options: weighting.loss_weights' keywords)."""
  return {name: band_shares(weighting.loss_weights(schedule, name, "eps", **options), edges).tolist()
          for name in weighting.WEIGHTINGS}
