"""Exact quality metrics on the Gaussian-mixture dataset (data.name='gmm'), for curves over checkpoints.

The mixture is known in closed form, so four quantities need no learned feature space and no second model:
- excess x0 error per log-SNR bucket, E|x0_hat - E[x0|x_t]|^2 / D: the bias itself, with the irreducible
  posterior variance removed (`bias.x0_error_terms` against `gmm.posterior_mean_fn`);
- MMD^2 between samples and true samples (unbiased, Gaussian kernel; bandwidth fixed in advance by the median
  heuristic on the TRUE samples, so it is the same for every model scored against the same reference);
- the mean log-likelihood gap under the true mixture, mean log p(true) - mean log p(samples), nats per dimension;
- the total-variation distance between the sampled component frequencies (exact responsibilities p(k|x) averaged
  over the samples) and the mixture weights: a mode-dropping or mode-reweighting score.
This module only assembles them: the mixture maths lives in data/gmm.py, the per-bucket errors in analysis/bias.py
and the MMD and log-likelihood in analysis/exact_denoiser.py.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.analysis import bias
from debias_jax.analysis import exact_denoiser
from debias_jax.data.gmm import GaussianMixture
from debias_jax.diffusion.schedules import Schedule

DEFAULT_NUM_BUCKETS = 8


@functools.partial(jax.jit, static_argnames=("model_fn", "mixture", "schedule", "target", "buckets", "learn_sigma"))
def _excess_sums(params, x0, rng, mask, *, model_fn, mixture, schedule, target, buckets, learn_sigma):
  return bias.x0_error_terms(lambda x_t, t: model_fn(params, x_t, t), schedule, target, x0, rng, buckets,
                             learn_sigma=learn_sigma, mask=mask,
                             reference_fn=exact_denoiser.posterior_mean_fn(mixture, schedule))


def excess_x0_error(model_fn: Callable, params, mixture: GaussianMixture, schedule: Schedule, target: str, x0,
                    rng, *, num_buckets: int = DEFAULT_NUM_BUCKETS, learn_sigma: bool = False,
                    batch_size: int = 256) -> dict:
  """E|x0_hat - E[x0|x_t]|^2 / D per bucket of equal log-SNR width, on the data x0 (N, H, W, C).

  model_fn(params, x_t, t) -> model output at original timesteps t; params are traced (one compilation serves
  every checkpoint of a run). Each example is noised once per bucket from rng (the same rng gives the same x_t for
  every model, so arms compare on identical inputs). Returns "buckets": one row per bucket (t and SNR range,
  excess_x0_error, and x0_mse, bayes_mse for reading it: x0_mse ~ bayes_mse + excess), and "mean": the plain
  average of the buckets' excess errors (every log-SNR range counts equally).
  """
  x0 = np.asarray(x0, np.float32)
  if x0.ndim != 4 or len(x0) == 0:
    raise ValueError(f"x0 must be a non-empty batch of images (N, H, W, C), got shape {x0.shape}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  buckets = bias.make_buckets(schedule, num_buckets, by="log_snr")
  total = None
  for index, start in enumerate(range(0, len(x0), batch_size)):
    batch = x0[start:start + batch_size]
    mask = np.zeros((batch_size,), np.float32)
    mask[:len(batch)] = 1.0
    padded = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:], np.float32)])
    sums = _excess_sums(params, padded, jax.random.fold_in(rng, index), mask, model_fn=model_fn, mixture=mixture,
                        schedule=schedule, target=target, buckets=buckets, learn_sigma=learn_sigma)
    total = bias.accumulate(total, sums)
  means = bias.finalize_sums(total)
  rows = bias.bucket_table(schedule, buckets, {"count": means["count"], "excess_x0_error": means["bias_mse"],
                                               "x0_mse": means["x0_mse"], "bayes_mse": means["bayes_mse"]})
  return {"buckets": rows, "mean": float(np.mean(means["bias_mse"]))}


@functools.partial(jax.jit, static_argnums=0)
def _responsibilities(mixture: GaussianMixture, x):
  """p(k | x) of clean images x (B, H, W, C) -> (B, K), from the mixture's own component densities."""
  flat, alpha_bar, _ = mixture._prepare(x, 1.0)  # pylint: disable=protected-access
  log_normal, _ = mixture._components(flat, alpha_bar)  # pylint: disable=protected-access
  return jax.nn.softmax(log_normal + jnp.log(jnp.asarray(mixture.weights, flat.dtype)), axis=-1)


def responsibilities(mixture: GaussianMixture, images, batch_size: int = 1024) -> np.ndarray:
  """Exact p(k | x) for images (N, H, W, C), float64 (N, K); rows sum to 1."""
  images = np.asarray(images, np.float32)
  parts = [np.asarray(jax.device_get(_responsibilities(mixture, images[i:i + batch_size])), np.float64)
           for i in range(0, len(images), batch_size)]
  return np.concatenate(parts) if parts else np.zeros((0, mixture.num_components))


def component_tv(mixture: GaussianMixture, samples) -> dict:
  """0.5 sum_k |mean_n p(k|x_n) - w_k|: how far the samples' share of each component is from the weights.

  Soft frequencies (exact responsibilities, not argmax labels) so overlapping components are not double-counted;
  true samples score O(sqrt(K / N)), not 0.
  """
  resp = responsibilities(mixture, samples)
  if len(resp) == 0:
    raise ValueError("component_tv needs at least one sample.")
  frequencies = resp.mean(axis=0)
  return {"component_tv": float(0.5 * np.abs(frequencies - np.asarray(mixture.weights, np.float64)).sum()),
          "component_frequencies": frequencies.tolist()}


def sample_metrics(mixture: GaussianMixture, samples, reference, bandwidth: float | None = None) -> dict:
  """The sample-based exact metrics of generated images against true samples `reference` of the same mixture.

  mmd2: unbiased MMD^2, kernel exp(-|a-b|^2 / (2 bw^2)), bw = median distance between reference points unless
  given (stated in mmd_bandwidth); log_likelihood_gap: mean log p(reference) - mean log p(samples), nats per
  dimension (0 for exact samples up to sampling noise; negative for a sampler that over-concentrates on modes,
  so read it with the MMD); component_tv: see `component_tv`. Non-finite samples are an error (a diverged model
  has no likelihood to report).
  """
  samples = np.asarray(samples, np.float32)
  if not np.all(np.isfinite(samples)):
    raise ValueError(f"{int(np.sum(~np.isfinite(samples)))} sample values are not finite; the exact metrics "
                     "are undefined for them.")
  quality = exact_denoiser.sample_quality(mixture, samples, reference, bandwidth)
  out = {"mmd2": quality["mmd"], "mmd_bandwidth": quality["mmd_bandwidth"],
         "log_likelihood_gap": quality["log_likelihood_gap"], "log_likelihood": quality["log_likelihood"],
         "log_likelihood_data": quality["log_likelihood_data"], "num_samples": quality["num_samples"],
         "num_reference": quality["num_reference"]}
  out.update(component_tv(mixture, samples))
  return out

