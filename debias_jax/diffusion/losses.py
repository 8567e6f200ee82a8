"""The training objective: weighted MSE of the prediction target, plus the VLB term for learned variances.

    loss_i = w(t_i) * mean_{C,H,W} (target_i - prediction_i)^2  +  [learned sigma] vb_i * T / 1000

with t uniform over the training chain, w from `weighting.loss_weights` (already converted to the target),
and vb the KL / decoder NLL in bits computed with a stop-gradient on the predicted mean, so the VLB trains only
the variance (Nichol & Dhariwal's hybrid loss, as the authors train). With t_sampling="importance", t is drawn
in proportion to the eps-space weight and loss_i is multiplied by 1 / (T q(t_i)): the same expected objective
(`t_sampling`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.diffusion import reverse, t_sampling as t_sampling_lib, targets
from debias_jax.diffusion.schedules import Schedule

NUM_QUARTERS = 4


def make_loss_fn(schedule: Schedule, weights: np.ndarray, target: str = "eps", learn_sigma: bool = False,
                 t_sampling: str = "uniform"):
  """Returns loss_fn(predict, x0, rng) -> (mean loss, per-example terms).

  predict(x_t, t) is the model at original timesteps t (float32, shape (B,)); the per-example terms are the
  arrays `loss`, `mse`, `vb` and `t` that `metric_sums` turns into logged metrics (with importance sampling,
  `loss` carries the multiplier and `mse`, `vb` do not).
  """
  targets.check_target(target)
  t_sampling_lib.check_t_sampling(t_sampling)
  weights = np.asarray(weights)
  if weights.shape != (schedule.num_steps,):
    raise ValueError(f"Expected one weight per step ({schedule.num_steps}), got shape {weights.shape}.")
  var_type = "learned_range" if learn_sigma else "fixed_small"
  q = multiplier = None
  if t_sampling == "importance":
    q, multiplier = t_sampling_lib.importance_tables(schedule, weights, target)

  def loss_fn(predict: Callable, x0, rng):
    t_rng, noise_rng = jax.random.split(rng)
    if q is None:
      steps = jax.random.randint(t_rng, (x0.shape[0],), 0, schedule.num_steps)
    else:
      steps = t_sampling_lib.sample_steps(t_rng, q, (x0.shape[0],))
    noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    x_t = targets.q_sample(schedule, x0, steps, noise)
    model_output = predict(x_t, jnp.asarray(schedule.timesteps, jnp.float32)[steps]).astype(jnp.float32)
    prediction, var_values = reverse.split_output(model_output, learn_sigma)
    mse = reverse.mean_over_pixels((targets.regression_target(target, schedule, x0, noise, steps)
                                    - prediction) ** 2)
    loss = jnp.asarray(weights, jnp.float32)[steps] * mse
    vb = jnp.zeros_like(mse)
    if learn_sigma:
      frozen = jnp.concatenate([jax.lax.stop_gradient(prediction), var_values], axis=-1)
      out = reverse.p_mean_variance(schedule, target, var_type, frozen, x_t, steps, clip_x0=False)
      vb = reverse.vb_terms_bits(schedule, x0, x_t, steps, out["mean"], out["log_variance"])
      vb = vb * (schedule.num_train_timesteps / 1000.0)
      loss = loss + vb
    if multiplier is not None:
      loss = jnp.asarray(multiplier, jnp.float32)[steps] * loss
    return jnp.mean(loss), {"loss": loss, "mse": mse, "vb": vb, "t": steps}

  return loss_fn


def metric_sums(terms: dict, num_steps: int) -> dict:
  """Sums and counts of the per-example terms, overall and per quarter of the t range (loss_q0..loss_q3).

  Sums and counts (not means) so that metrics can be added over steps and devices and divided once when logged.
  """
  quarter = jnp.minimum(terms["t"] * NUM_QUARTERS // num_steps, NUM_QUARTERS - 1)
  count = jnp.float32(terms["loss"].shape[0])
  sums = {name: (jnp.sum(terms[name]), count) for name in ("loss", "mse", "vb")}
  for q in range(NUM_QUARTERS):
    mask = (quarter == q).astype(jnp.float32)
    sums[f"loss_q{q}"] = (jnp.sum(terms["loss"] * mask), jnp.sum(mask))
  return sums


def finalize_metrics(sums: dict) -> dict:
  """Means from accumulated (sum, count) pairs; a quarter with no examples is left out."""
  return {name: float(total) / float(count) for name, (total, count) in sums.items() if float(count) > 0}
