"""The reverse step p(x_{i-1} | x_i) predicted from a model output, and the Gaussian terms of the VLB.

Variance types (guided-diffusion's names):
  learned_range: the model's extra C channels v in [-1, 1] interpolate the log-variance between the posterior
                 variance (v = -1) and beta (v = 1);
  fixed_small:   the posterior variance (log clipped at step 0);
  fixed_large:   beta, with step 0 set to the posterior variance of step 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.diffusion import targets
from debias_jax.diffusion.schedules import Schedule

VAR_TYPES = ("learned_range", "fixed_small", "fixed_large")


def check_var_type(var_type: str) -> str:
  if var_type not in VAR_TYPES:
    raise ValueError(f"Unknown variance type {var_type!r}; valid types: {', '.join(VAR_TYPES)}.")
  return var_type


def split_output(model_output, learn_sigma: bool):
  """(mean-part prediction, variance values or None) of a model output; learned sigma doubles the channels."""
  if not learn_sigma:
    return model_output, None
  prediction, var_values = jnp.split(model_output, 2, axis=-1)
  return prediction, var_values


def q_posterior_mean(schedule: Schedule, x0, x_t, steps):
  """Mean of q(x_{i-1} | x_i, x0)."""
  return (targets.gather(schedule.posterior_mean_coef1, steps, x_t.ndim) * x0
          + targets.gather(schedule.posterior_mean_coef2, steps, x_t.ndim) * x_t)


def log_variance(schedule: Schedule, var_type: str, steps, ndim: int, var_values=None):
  """Log-variance of p(x_{i-1} | x_i) for each example, broadcastable to a rank-`ndim` batch."""
  min_log = targets.gather(schedule.posterior_log_variance_clipped, steps, ndim)
  if var_type == "learned_range":
    max_log = targets.gather(np.log(schedule.betas), steps, ndim)
    fraction = (var_values + 1.0) / 2.0
    return fraction * max_log + (1.0 - fraction) * min_log
  if var_type == "fixed_small":
    return min_log
  if var_type == "fixed_large":
    large = np.append(schedule.posterior_variance[1] if schedule.num_steps > 1 else schedule.betas[0],
                      schedule.betas[1:])
    return targets.gather(np.log(large), steps, ndim)
  check_var_type(var_type)


def p_mean_variance(schedule: Schedule, target: str, var_type: str, model_output, x_t, steps,
                    clip_x0: bool = False):
  """Mean, log-variance and the x0/eps estimates of the reverse step from one model output.

  With var_type "learned_range" the output carries 2C channels; otherwise C.
  """
  prediction, var_values = split_output(model_output, var_type == "learned_range")
  x0 = targets.predict_x0(target, schedule, prediction, x_t, steps)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
  return {
      "mean": q_posterior_mean(schedule, x0, x_t, steps),
      "log_variance": log_variance(schedule, var_type, steps, x_t.ndim, var_values),
      "x0": x0,
      "eps": targets.eps_from_x0(schedule, x0, x_t, steps),
  }


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_standard_normal_cdf(x):
  """guided-diffusion's tanh approximation of the normal CDF, (1 + tanh(u)) / 2 with
  u = sqrt(2/pi) (x + 0.044715 x^3), written as the identical sigmoid(2u), which keeps its tails in float32."""
  return jax.nn.sigmoid(2.0 * np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """log P(x) of 8-bit data scaled to [-1, 1] under a Gaussian integrated over each pixel's bin (nats).

  The approximate CDF F satisfies 1 - F(z) = F(-z), so the mass of a bin above the mean is taken as
  F(-lower) - F(-upper): the same number as F(upper) - F(lower), without float32 cancellation near F = 1.
  """
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  upper = inv_stdv * (centered + 1.0 / 255.0)
  lower = inv_stdv * (centered - 1.0 / 255.0)
  cdf = _approx_standard_normal_cdf
  log_cdf_upper = jnp.log(jnp.maximum(cdf(upper), 1e-12))
  log_one_minus_cdf_lower = jnp.log(jnp.maximum(cdf(-lower), 1e-12))
  bin_mass = jnp.where(centered > 0, cdf(-lower) - cdf(-upper), cdf(upper) - cdf(lower))
  log_bin_mass = jnp.log(jnp.maximum(bin_mass, 1e-12))
  return jnp.where(x < -0.999, log_cdf_upper, jnp.where(x > 0.999, log_one_minus_cdf_lower, log_bin_mass))


def mean_over_pixels(x):
  """Mean over every axis but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def vb_terms_bits(schedule: Schedule, x0, x_t, steps, mean, log_var):
  """Per-example VLB term in bits/dim: KL to the true posterior, or the decoder NLL at step 0."""
  true_mean = q_posterior_mean(schedule, x0, x_t, steps)
  true_log_var = targets.gather(schedule.posterior_log_variance_clipped, steps, x_t.ndim)
  kl = mean_over_pixels(normal_kl(true_mean, true_log_var, mean, log_var)) / np.log(2.0)
  nll = -mean_over_pixels(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / np.log(2.0)
  return jnp.where(steps == 0, nll, kl)
