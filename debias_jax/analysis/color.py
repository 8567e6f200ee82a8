"""Colour (mean) shift of samples: per-image channel means of samples against the data's (the paper's colour shift at few steps).

Values are on the 0-255 scale of saved images, as the paper reports them (natural faces sit near R-G = +17..+25,
B-G = -10..+5; a constant-weight model at 2-10 steps reaches B-G = +99). Inputs are NHWC images, uint8 or floats
in [-1, 1] (clipped to it, as saving would). For one-channel data the shift is a brightness shift.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from debias_jax.evaluation import fid


def channel_means(images) -> np.ndarray:
  """(N, C) per-image mean of every channel on the 0-255 scale (float64)."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"Images must be NHWC (4 dimensions); got shape {images.shape}.")
  if images.dtype == np.uint8:
    values = images.astype(np.float64)
  else:
    values = (np.clip(images.astype(np.float64), -1.0, 1.0) + 1.0) * 127.5
  return values.mean(axis=(1, 2))


def _differences(means: np.ndarray) -> dict[str, float]:
  """Mean R-G and B-G of RGB channel means (empty for other channel counts)."""
  if means.shape[1] != 3:
    return {}
  return {"r_minus_g": float(np.mean(means[:, 0] - means[:, 1])),
          "b_minus_g": float(np.mean(means[:, 2] - means[:, 1]))}


def color_stats(images) -> dict:
  """Summary of one set's channel means: mean and standard deviation per channel, and R-G / B-G for RGB."""
  return color_stats_from_means(channel_means(images))


def color_stats_from_means(means) -> dict:
  """`color_stats` from per-image channel means (N, C)."""
  means = np.asarray(means, np.float64)
  return {"num_images": int(means.shape[0]), "channel_mean": means.mean(axis=0).tolist(),
          "channel_std": means.std(axis=0).tolist(), **_differences(means)}


def color_shift(samples, data) -> dict:
  """How the samples' per-image channel means differ from the data's (both on the 0-255 scale).

  channel_shift: difference of the average channel means, per channel;
  r_minus_g_shift / b_minus_g_shift (RGB): difference of the average R-G and B-G;
  channel_w1: 1-d Wasserstein distance between the two distributions of each channel's per-image mean
    (a pure shift by d gives exactly |d|);
  channel_fd: Fréchet distance between Gaussians fitted to the C-d per-image channel means (squared units;
    a pure shift by the vector d gives |d|^2).
  """
  return color_shift_from_means(channel_means(samples), channel_means(data))


def color_shift_from_means(sample_means, data_means) -> dict:
  """`color_shift` from per-image channel means (N, C) and (M, C) already computed with `channel_means`."""
  sample_means, data_means = np.asarray(sample_means, np.float64), np.asarray(data_means, np.float64)
  if sample_means.shape[1] != data_means.shape[1]:
    raise ValueError(f"Samples have {sample_means.shape[1]} channels, the data {data_means.shape[1]}.")
  if min(len(sample_means), len(data_means)) < 2:
    raise ValueError("The colour shift needs at least 2 samples and 2 data images.")
  out = {"num_samples": int(len(sample_means)), "num_data": int(len(data_means)),
         "channel_shift": (sample_means.mean(axis=0) - data_means.mean(axis=0)).tolist(),
         "channel_w1": [float(stats.wasserstein_distance(sample_means[:, c], data_means[:, c]))
                        for c in range(sample_means.shape[1])],
         "channel_fd": float(fid.statistics_distance(fid.compute_statistics(sample_means),
                                                     fid.compute_statistics(data_means)))}
  sample_diff, data_diff = _differences(sample_means), _differences(data_means)
  for name in sample_diff:
    out[name] = sample_diff[name]
    out[name + "_data"] = data_diff[name]
    out[name + "_shift"] = sample_diff[name] - data_diff[name]
  return out
