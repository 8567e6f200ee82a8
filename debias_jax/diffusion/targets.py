"""Prediction targets (eps, x0, v) and the conversions between a model's output and x0, eps and v.

With a = sqrt(alpha_bar_t) and s = sqrt(1 - alpha_bar_t):  x_t = a x0 + s eps,  v = a eps - s x0,
x0 = (x_t - s eps) / a = a x_t - s v,  eps = (x_t - a x0) / s = s x_t + a v.
Coefficients are gathered per example from a `Schedule` at integer step indices and broadcast over C, H, W.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from debias_jax.diffusion.schedules import Schedule

TARGETS = ("eps", "x0", "v")


def check_target(target: str) -> str:
  if target not in TARGETS:
    raise ValueError(f"Unknown prediction target {target!r}; valid targets: {', '.join(TARGETS)}.")
  return target


def gather(table: np.ndarray, steps: jnp.ndarray, ndim: int) -> jnp.ndarray:
  """table[steps] as float32, shaped (B, 1, ..., 1) to broadcast against a rank-`ndim` batch."""
  values = jnp.asarray(table, jnp.float32)[steps]
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _coefficients(schedule: Schedule, steps, ndim):
  return (gather(schedule.sqrt_alphas_cumprod, steps, ndim),
          gather(schedule.sqrt_one_minus_alphas_cumprod, steps, ndim))


def q_sample(schedule: Schedule, x0, steps, noise):
  """x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps."""
  a, s = _coefficients(schedule, steps, x0.ndim)
  return a * x0 + s * noise


def regression_target(target: str, schedule: Schedule, x0, noise, steps):
  """What a model with this prediction target is trained to output."""
  if target == "eps":
    return noise
  if target == "x0":
    return x0
  if target == "v":
    a, s = _coefficients(schedule, steps, x0.ndim)
    return a * noise - s * x0
  check_target(target)


def predict_x0(target: str, schedule: Schedule, prediction, x_t, steps):
  if target == "x0":
    return prediction
  a, s = _coefficients(schedule, steps, x_t.ndim)
  if target == "eps":
    return (x_t - s * prediction) / a
  if target == "v":
    return a * x_t - s * prediction
  check_target(target)


def predict_eps(target: str, schedule: Schedule, prediction, x_t, steps):
  if target == "eps":
    return prediction
  a, s = _coefficients(schedule, steps, x_t.ndim)
  if target == "x0":
    return (x_t - a * prediction) / s
  if target == "v":
    return s * x_t + a * prediction
  check_target(target)


def predict_v(target: str, schedule: Schedule, prediction, x_t, steps):
  if target == "v":
    return prediction
  a, s = _coefficients(schedule, steps, x_t.ndim)
  x0 = predict_x0(target, schedule, prediction, x_t, steps)
  eps = predict_eps(target, schedule, prediction, x_t, steps)
  return a * eps - s * x0


def eps_from_x0(schedule: Schedule, x0, x_t, steps):
  """The eps consistent with x_t and a (possibly clipped) x0."""
  return predict_eps("x0", schedule, x0, x_t, steps)
