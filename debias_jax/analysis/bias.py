"""The bias of a denoiser, measured per noise level (the paper's central claim): pure functions, jitted.

A model's x0 estimate is x0_hat(x_t, t) = predict_x0(model output); on data x0 with fresh noise eps, bucket by bucket
of timesteps, we measure
  x0_mse    = E ||x0_hat - x0||^2 / D          (per-pixel mean squared error; the paper's "x0 error")
  x0_signed = E mean_{h,w}(x0_hat - x0)        (per channel: a colour/brightness shift of the estimate)
  eps_mse   = E ||eps_hat - eps||^2 / D
and, given the exact posterior mean x0*(x_t, t) = E[x0 | x_t] (known for the Gaussian mixture), the bias itself,
with no data noise:
  bias_mse    = E ||x0_hat - x0*||^2 / D,   bias_signed = E mean_{h,w}(x0_hat - x0*),
  bayes_mse   = E ||x0* - x0||^2 / D        (the irreducible posterior variance; x0_mse ~ bayes_mse + bias_mse).
Every example is noised once in every bucket (t uniform inside the bucket), so buckets compare on the same data.
The functions return sums over the batch (and a count) so batches of any number and padding accumulate exactly.
Estimates are unclipped: the sampler's [-1, 1] clipping would hide exactly the error being measured.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.diffusion import reverse
from debias_jax.diffusion import targets
from debias_jax.diffusion.schedules import Schedule

BUCKET_KINDS = ("t", "log_snr")
Buckets = tuple[tuple[int, int], ...]   # inclusive (t_min, t_max) per bucket, in increasing t (decreasing SNR)


def make_buckets(schedule: Schedule, num_buckets: int, by: str = "t") -> Buckets:
  """Disjoint, non-empty ranges of timesteps covering [0, T): equal in t, or equal in log SNR ("log_snr").

  Equal log-SNR ranges resolve the high-noise end, where the paper's bias lives; empty ranges are dropped, so
  fewer than num_buckets may come back.
  """
  if by not in BUCKET_KINDS:
    raise ValueError(f"Unknown bucketing {by!r}; valid: {', '.join(BUCKET_KINDS)} (config.analysis.bucket_by).")
  num_steps = schedule.num_steps
  if not isinstance(num_buckets, (int, np.integer)) or not 1 <= num_buckets <= num_steps:
    raise ValueError(f"config.analysis.num_buckets={num_buckets!r} must be an integer in [1, {num_steps}].")
  if by == "t":
    edges = np.round(np.linspace(0, num_steps, num_buckets + 1)).astype(np.int64)
  else:
    log_snr = schedule.log_snr                       # decreasing in t
    levels = np.linspace(log_snr[0], log_snr[-1], num_buckets + 1)[1:-1]
    # First t whose log SNR falls below each level.
    edges = np.concatenate([[0], np.searchsorted(-log_snr, -levels, side="right"), [num_steps]])
  edges = np.unique(edges)
  return tuple((int(lo), int(hi) - 1) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo)


def bucket_info(schedule: Schedule, buckets: Buckets) -> list[dict]:
  """t range and SNR range of each bucket (geometric-mean SNR: the mean log SNR over the bucket's timesteps)."""
  snr, log_snr = schedule.snr, schedule.log_snr
  return [{"t_min": lo, "t_max": hi, "snr_max": float(snr[lo]), "snr_min": float(snr[hi]),
           "snr_geomean": float(np.exp(np.mean(log_snr[lo:hi + 1])))} for lo, hi in buckets]


def _check_buckets(buckets: Buckets, schedule: Schedule) -> None:
  for lo, hi in buckets:
    if not 0 <= lo <= hi < schedule.num_steps:
      raise ValueError(f"Bucket ({lo}, {hi}) is not a range of timesteps in [0, {schedule.num_steps}).")


def _channel_mean(x):
  """(B, H, W, C) -> (B, C)."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def _pixel_mean(x):
  """(B, H, W, C) -> (B,)."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def x0_error_terms(model_fn: Callable, schedule: Schedule, target: str, x0, rng, buckets: Buckets, *,
                   learn_sigma: bool = False, mask=None, reference_fn: Callable | None = None) -> dict:
  """Per-bucket sums over the batch of the errors in the module docstring; traceable (jit it with the caller).

  model_fn(x_t, t) -> output at original timesteps t (float32 (B,)); with learn_sigma the output has 2C channels
  and the first C are read. reference_fn(x_t, t) -> E[x0 | x_t] adds the bias terms. mask (B,) drops padding.
  Returns arrays with a leading bucket axis: count (n,), x0_mse, eps_mse (n,), x0_signed (n, C), and with a
  reference bias_mse, bayes_mse (n,), bias_signed (n, C).
  """
  _check_buckets(buckets, schedule)
  x0 = jnp.asarray(x0, jnp.float32)
  batch = x0.shape[0]
  weight = jnp.ones((batch,), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  lows = jnp.asarray([lo for lo, _ in buckets], jnp.int32)
  highs = jnp.asarray([hi for _, hi in buckets], jnp.int32)

  def one_bucket(_, inputs):
    index, lo, hi = inputs
    t_key, noise_key = jax.random.split(jax.random.fold_in(rng, index))
    steps = jax.random.randint(t_key, (batch,), lo, hi + 1)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    x_t = targets.q_sample(schedule, x0, steps, noise)
    t = jnp.asarray(schedule.timesteps, jnp.float32)[steps]
    output, _ = reverse.split_output(model_fn(x_t, t).astype(jnp.float32), learn_sigma)
    x0_hat = targets.predict_x0(target, schedule, output, x_t, steps)
    eps_hat = targets.predict_eps(target, schedule, output, x_t, steps)
    sums = {"count": jnp.sum(weight),
            "x0_mse": jnp.sum(weight * _pixel_mean((x0_hat - x0) ** 2)),
            "eps_mse": jnp.sum(weight * _pixel_mean((eps_hat - noise) ** 2)),
            "x0_signed": jnp.sum(weight[:, None] * _channel_mean(x0_hat - x0), axis=0)}
    if reference_fn is not None:
      x0_star = jnp.asarray(reference_fn(x_t, t), jnp.float32)
      sums["bias_mse"] = jnp.sum(weight * _pixel_mean((x0_hat - x0_star) ** 2))
      sums["bias_signed"] = jnp.sum(weight[:, None] * _channel_mean(x0_hat - x0_star), axis=0)
      sums["bayes_mse"] = jnp.sum(weight * _pixel_mean((x0_star - x0) ** 2))
    return None, sums

  indices = jnp.arange(len(buckets), dtype=jnp.int32)
  _, sums = jax.lax.scan(one_bucket, None, (indices, lows, highs))
  return sums


def finalize_sums(sums: dict) -> dict[str, np.ndarray]:
  """Per-bucket means from (accumulated) sums: every entry divided by the bucket's count."""
  sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
  count = sums["count"]
  if np.any(count <= 0):
    raise ValueError("A bucket has no examples; give at least one unmasked example.")
  return {k: (v / count.reshape(count.shape + (1,) * (v.ndim - 1)) if k != "count" else v)
          for k, v in sums.items()}


def accumulate(total: dict | None, sums: dict) -> dict:
  sums = {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}
  return sums if total is None else {k: total[k] + sums[k] for k in total}


def first_step_prediction(model_fn: Callable, schedule: Schedule, target: str, x_T, *,
                          learn_sigma: bool = False):
  """x0_hat at the first sampling step: the model at t = T-1 on pure noise x_T, as every sampler starts.

  Ideally this is E[x0 | x_T], within sqrt(alpha_bar_{T-1}) (0.006 on the linear schedule) of the data mean.
  """
  steps = jnp.full((x_T.shape[0],), schedule.num_steps - 1, jnp.int32)
  t = jnp.asarray(schedule.timesteps, jnp.float32)[steps]
  output, _ = reverse.split_output(model_fn(x_T, t).astype(jnp.float32), learn_sigma)
  return targets.predict_x0(target, schedule, output, x_T, steps)


def mean_prediction_stats(x0_hat: np.ndarray, data_mean: np.ndarray, reference: np.ndarray | None = None) -> dict:
  """How far first-step predictions (N, H, W, C) sit from the data mean (H, W, C), in [-1, 1] units.

  mean_prediction_mse: per-pixel squared distance of the average prediction from the data mean;
  per_sample_mse: E over samples of the per-pixel squared distance; channel_shift: the average prediction's
  per-channel spatial mean minus the data's. reference (N, H, W, C): the exact E[x0 | x_T] of each sample.
  """
  x0_hat = np.asarray(x0_hat, np.float64)
  data_mean = np.asarray(data_mean, np.float64)
  average = x0_hat.mean(axis=0)
  out = {"num_samples": int(x0_hat.shape[0]),
         "mean_prediction_mse": float(np.mean((average - data_mean) ** 2)),
         "per_sample_mse": float(np.mean((x0_hat - data_mean) ** 2)),
         "channel_shift": (average - data_mean).mean(axis=(0, 1)).tolist(),
         "data_channel_mean": data_mean.mean(axis=(0, 1)).tolist(),
         "prediction_channel_mean": average.mean(axis=(0, 1)).tolist()}
  if reference is not None:
    reference = np.asarray(reference, np.float64)
    out["bias_mse"] = float(np.mean((x0_hat - reference) ** 2))
    out["bias_channel_shift"] = (x0_hat - reference).mean(axis=(0, 1, 2)).tolist()
  return out


def bucket_table(schedule: Schedule, buckets: Buckets, means: dict) -> list[dict]:
  """One JSON-ready row per bucket: its t and SNR ranges and the mean errors."""
  rows = bucket_info(schedule, buckets)
  for i, row in enumerate(rows):
    for name, values in means.items():
      value = np.asarray(values[i])
      row[name] = int(value) if name == "count" else (value.tolist() if value.ndim else float(value))
  return rows

