"""The exact-denoiser benchmark on the embedded Gaussian mixture (data.name='gmm'): ground truth for the bias study.

For mixture data, E[x0 | x_t] is known in closed form (`data.gmm.GaussianMixture.posterior_mean`), so
- `exact_model_fn` is the optimal network in any prediction target (optionally with a deliberate per-channel x0
  shift, the kind of bias the paper describes), for checking the analysis and as the zero-bias reference sampler;
- `posterior_mean_fn` is the reference against which a trained model's bias is measured (`bias.x0_error_terms`);
- `sample_quality` scores samples exactly: mean log-likelihood under the true mixture against that of true samples,
  and a kernel MMD to true samples.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.data.gmm import GaussianMixture
from debias_jax.diffusion import targets
from debias_jax.diffusion.schedules import Schedule


def _steps(t):
  return jnp.round(jnp.asarray(t)).astype(jnp.int32)


def posterior_mean_fn(mixture: GaussianMixture, schedule: Schedule) -> Callable:
  """reference_fn(x_t, t) = E[x0 | x_t] at original timesteps t of the training schedule."""
  alphas_cumprod = np.asarray(schedule.alphas_cumprod, np.float32)

  def reference_fn(x_t, t):
    return mixture.posterior_mean(x_t, jnp.asarray(alphas_cumprod)[_steps(t)])

  return reference_fn


def exact_model_fn(mixture: GaussianMixture, schedule: Schedule, target: str = "eps", x0_shift=None) -> Callable:
  """model_fn(x_t, t) of the optimal denoiser in `target` form, whose x0 estimate is E[x0 | x_t] + x0_shift.

  schedule is the training schedule (model functions take original timesteps, also on respaced chains);
  x0_shift broadcasts against (H, W, C), e.g. a per-channel vector (C,).
  """
  targets.check_target(target)
  reference_fn = posterior_mean_fn(mixture, schedule)
  shift = None if x0_shift is None else jnp.asarray(x0_shift, jnp.float32)

  def model_fn(x_t, t):
    x0 = reference_fn(x_t, t)
    if shift is not None:
      x0 = x0 + shift
    steps = _steps(t)
    if target == "x0":
      return x0
    if target == "eps":
      return targets.predict_eps("x0", schedule, x0, x_t, steps)
    return targets.predict_v("x0", schedule, x0, x_t, steps)

  return model_fn


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def mmd_squared(x, y, bandwidth: float) -> float:
  """Unbiased squared MMD between sample sets x (N, D) and y (M, D) with the kernel exp(-|a-b|^2 / (2 bw^2))."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2 or len(y) < 2:
    raise ValueError("The MMD needs at least 2 points in each set.")
  kernel = lambda a, b: np.exp(-_squared_distances(a, b) / (2.0 * bandwidth ** 2))
  kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
  n, m = len(x), len(y)
  return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
               - 2.0 * kxy.mean())


def median_bandwidth(y) -> float:
  """The median distance between distinct points of y: the usual scale of an RBF kernel."""
  y = np.asarray(y, np.float64).reshape(len(y), -1)
  distances = np.sqrt(_squared_distances(y, y)[np.triu_indices(len(y), k=1)])
  return float(np.median(distances))


def log_likelihood(mixture: GaussianMixture, images, batch_size: int = 1024) -> np.ndarray:
  """Exact log p(x) under the mixture, nats per image, float64 (N,)."""
  images = np.asarray(images, np.float32)
  parts = [np.asarray(jax.device_get(mixture.log_prob(images[i:i + batch_size])), np.float64)
           for i in range(0, len(images), batch_size)]
  return np.concatenate(parts) if parts else np.zeros((0,))


def sample_quality(mixture: GaussianMixture, samples, reference, bandwidth: float | None = None) -> dict:
  """Exact scores of samples (float NHWC) against true samples `reference` of the same mixture.

  log_likelihood: mean log p(sample) per dimension (nats); log_likelihood_data: the same for the true samples;
  log_likelihood_gap = data - samples (0 for exact samples up to sampling noise; a mode-seeking sampler can go
  negative, so read it with the MMD). mmd: unbiased squared MMD with an RBF kernel whose bandwidth is the median
  distance between reference points (fixed by the reference, so values compare across models).
  """
  samples, reference = np.asarray(samples, np.float32), np.asarray(reference, np.float32)
  dim = mixture.dim
  ll_samples = log_likelihood(mixture, samples).mean() / dim
  ll_data = log_likelihood(mixture, reference).mean() / dim
  bandwidth = median_bandwidth(reference) if bandwidth is None else float(bandwidth)
  flat = lambda x: x.reshape(len(x), -1)
  return {"log_likelihood": float(ll_samples), "log_likelihood_data": float(ll_data),
          "log_likelihood_gap": float(ll_data - ll_samples),
          "mmd": mmd_squared(flat(samples), flat(reference), bandwidth), "mmd_bandwidth": bandwidth,
          "num_samples": int(len(samples)), "num_reference": int(len(reference))}
