"""The paper's bias study of one checkpoint's params (driven by `--mode analyze`, debias_jax/modes/analyze.py):

1. Per noise level (config.analysis.num_buckets buckets of t, or of log SNR), on num_examples data examples with
   fresh noise: the x0 error E|x0_hat - x0|^2, its signed per-channel mean E[x0_hat - x0] and the eps error,
   with each bucket's SNR range (`bias.x0_error_terms`).
2. The first sampling step: x0_hat(x_T, T-1) on num_samples draws of x_T against the data mean.
3. Colour/mean shift of samples against the number of sampling steps, for each of analysis.samplers and
   analysis.sampling_steps: per-image channel means of samples against the data's (`color.color_shift`).
4. On data.name='gmm', against the exact posterior mean E[x0|x_t]: the bias itself per bucket and at the first
   step, the exact sample quality (log-likelihood under the mixture, MMD to true samples), and the colour shift
   of the exact denoiser under the same sampler (the discretisation error alone, which no training can remove).
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import generation
from debias_jax import logs
from debias_jax import parallel
from debias_jax import pixels
from debias_jax import storage
from debias_jax.analysis import bias
from debias_jax.analysis import color
from debias_jax.analysis import exact_denoiser
from debias_jax.analysis import exact_metrics
from debias_jax.analysis import plots
from debias_jax.data import pipeline

ANALYSIS_KEY = 0xB1A5
RAW_PARAMS_DIR = "raw"
STRIP_IMAGES = 16            # images per row of the samples-vs-steps strip


def output_dir(workdir: str, use_ema: bool) -> epath.Path:
  """Where the study of a workdir's EMA params (WORKDIR/analysis) or raw params (WORKDIR/analysis/raw) goes."""
  out = epath.Path(workdir) / "analysis"
  return out if use_ema else out / RAW_PARAMS_DIR


def _process_slice(array: np.ndarray) -> np.ndarray:
  """This process's rows of a global host array (every process holds the whole array)."""
  per_process = array.shape[0] // jax.process_count()
  return array[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]


def _fetch(x) -> np.ndarray:
  if jax.process_count() > 1 and not x.is_fully_replicated:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


class AnalysisRun:
  """The pieces of a study of one model: schedule, data statistics and the sharded programs, compiled once and
  reused for every params it is given (the checkpoints of a run, EMA and raw), as are the exact denoiser's
  samples, which depend on no params at all."""

  def __init__(self, config, model, mesh):
    self.config, self.model, self.mesh = config, model, mesh
    self.a = config.analysis
    self.schedule = builders.schedule(config)
    self.target = config.loss.target
    self.learn_sigma = bool(config.model.learn_sigma)
    self.num_classes = int(config.data.num_classes)
    self.image_shape = (int(config.data.image_size),) * 2 + (int(config.data.channels),)
    is_gmm = config.data.source == "embedded" and config.data.name == "gmm"
    self.mixture = pipeline.get_gmm(config.data) if is_gmm else None
    self.reference_fn = (exact_denoiser.posterior_mean_fn(self.mixture, self.schedule) if self.mixture is not None
                         else None)
    self.rng = jax.random.fold_in(jax.random.key(int(config.seed)), ANALYSIS_KEY)
    self.batch = parallel.batch_sharding(self.mesh)
    self.replicated = parallel.replicated(self.mesh)
    self.buckets = bias.make_buckets(self.schedule, int(self.a.num_buckets), self.a.bucket_by)
    self.error_fn = jax.jit(self._x0_error_terms, in_shardings=(self.replicated,) + (self.batch,) * 3 + (None,),
                            out_shardings=self.replicated)
    self.first_step_fn = jax.jit(self._first_step_prediction, in_shardings=(self.replicated, self.batch, self.batch),
                                 out_shardings=self.batch)
    self.generator = generation.Generator(config, model, mesh, self.schedule)
    self._exact = {}

  def _model_fn(self, params, labels):
    return generation.model_fn(self.model, params, labels if self.num_classes else None)

  def _x0_error_terms(self, params, x0, labels, mask, rng):
    return bias.x0_error_terms(self._model_fn(params, labels), self.schedule, self.target, x0, rng, self.buckets,
                               learn_sigma=self.learn_sigma, mask=mask, reference_fn=self.reference_fn)

  def _first_step_prediction(self, params, x_T, labels):
    return bias.first_step_prediction(self._model_fn(params, labels), self.schedule, self.target, x_T,
                                      learn_sigma=self.learn_sigma)

  # ----- 1. per-t errors, and the data statistics every later part compares with -----

  def x0_errors(self, params) -> tuple[dict, dict]:
    sums, image_sum, square_sum, data_means, kept = None, 0.0, 0.0, [], []
    keep_images = self.mixture is not None          # true samples, the reference of the exact scores
    available = int(pipeline.dataset_info(self.config.data)["num_examples"])
    if int(self.a.num_examples) > available:
      logging.warning("config.analysis.num_examples=%d exceeds the %d examples of the data; using all of them.",
                      int(self.a.num_examples), available)
    num_examples = min(int(self.a.num_examples), available)
    iterator = pipeline.create_eval_iterator(self.config.data, batch_size=int(self.a.batch_size),
                                             num_examples=num_examples, process_index=0, process_count=1)
    progress = logs.Progress("Analysis: x0 error per t bucket", num_examples, "examples")
    for i, batch in enumerate(iterator):
      local = {name: _process_slice(np.asarray(batch[name])) for name in ("image", "label", "mask")}
      arrays = parallel.global_batch(local, self.mesh)
      sums = bias.accumulate(sums, self.error_fn(params, arrays["image"], arrays["label"], arrays["mask"],
                                                 jax.random.fold_in(self.rng, i)))
      images = np.asarray(batch["image"])[np.asarray(batch["mask"])]
      image_sum = image_sum + images.astype(np.float64).sum(axis=0)
      square_sum = square_sum + (images.astype(np.float64) ** 2).sum(axis=0)
      data_means.append(color.channel_means(images))
      if keep_images:
        kept.append(images)
      progress.update(len(images))
    means = bias.finalize_sums(sums)
    count = int(means["count"][0])
    data = {"mean_image": image_sum / count, "channel_means": np.concatenate(data_means),
            "images": np.concatenate(kept) if kept else None, "num_examples": count}
    # The x0 error of always predicting the data mean: where an ideal denoiser's error tends as SNR -> 0.
    data_variance = float(np.mean(square_sum / count - (image_sum / count) ** 2))
    table = {"bucket_by": self.a.bucket_by, "num_examples": count, "units": "[-1, 1] pixel values",
             "data_variance": data_variance, "buckets": bias.bucket_table(self.schedule, self.buckets, means)}
    return table, data

  # ----- 2. the first sampling step -----

  def first_step(self, params, data: dict) -> dict:
    num, devices = int(self.a.num_samples), self.mesh.devices.size
    x_T = np.asarray(jax.random.normal(jax.random.fold_in(self.rng, 0xF1), (num,) + self.image_shape))
    # Padded with zeros to a multiple of the device count (batch_size is one, so every chunk splits evenly).
    padded = np.concatenate([x_T, np.zeros(((-num) % devices,) + self.image_shape, x_T.dtype)])
    labels = generation.fed_labels(self.config, len(padded))
    chunk = int(self.a.batch_size)
    outputs = []
    for start in range(0, len(padded), chunk):
      part = {"x": padded[start:start + chunk], "label": labels[start:start + chunk]}
      arrays = parallel.global_batch({k: _process_slice(v) for k, v in part.items()}, self.mesh)
      outputs.append(_fetch(self.first_step_fn(params, arrays["x"], arrays["label"])))
    x0_hat = np.concatenate(outputs)[:num]
    reference = None
    if self.mixture is not None:
      alpha_bar = float(self.schedule.alphas_cumprod[-1])
      reference = np.asarray(self.mixture.posterior_mean(jnp.asarray(x_T), alpha_bar))
    out = bias.mean_prediction_stats(x0_hat, data["mean_image"], reference)
    out["t"] = int(self.schedule.timesteps[-1])
    out["alpha_bar"] = float(self.schedule.alphas_cumprod[-1])
    if self.mixture is not None:
      out["exact_data_mean_mse"] = float(np.mean((x0_hat.mean(axis=0) - self.mixture.mean) ** 2))
    return out

  # ----- 3. colour shift vs sampling steps -----

  def color_shift(self, params, step: int, samplers, sampling_steps, data: dict,
                  writer) -> tuple[dict, dict, dict]:
    labels = generation.sample_labels(self.config, int(self.a.num_samples))
    results, exact_results, strips = {}, {}, {}
    progress = logs.Progress("Analysis: colour shift", len(samplers) * len(sampling_steps), "sampler settings",
                             every_seconds=0.0)
    for name in samplers:
      results[name], exact_results[name], strip = [], [], []
      for steps in sampling_steps:
        start = time.time()
        images = self.generator.generate(
            params, int(self.a.num_samples), jax.random.fold_in(self.rng, 0xC0),
            batch_size=int(self.a.batch_size), sampler=name, steps=str(steps), labels=labels)
        row = {"sampler": name, "steps": int(steps), "seconds": round(time.time() - start, 3),
               **color.color_shift_from_means(color.channel_means(images), data["channel_means"])}
        if self.mixture is not None:
          row.update(exact_denoiser.sample_quality(self.mixture, images, data["images"]))
          row.update(exact_metrics.component_tv(self.mixture, images))
          exact = self._exact_samples(name, steps)
          exact_results[name].append({"sampler": name, "steps": int(steps),
                                      **color.color_shift_from_means(color.channel_means(exact),
                                                                     data["channel_means"]),
                                      **exact_denoiser.sample_quality(self.mixture, exact, data["images"]),
                                      **exact_metrics.component_tv(self.mixture, exact)})
        results[name].append(row)
        strip.append(pixels.to_uint8(images[:STRIP_IMAGES]))
        logging.info("Colour shift, %s with %s steps: %s", name, steps,
                     {k: v for k, v in row.items() if k in ("channel_shift", "channel_fd", "mmd")})
        progress.update()
        writer.write_images(step, {f"samples/{name}/steps{int(steps):04d}":
                                   pixels.image_grid(strip[-1], columns=STRIP_IMAGES)[None]})
      strips[name] = np.concatenate(strip)
    return results, (exact_results if self.mixture is not None else {}), strips

  def _exact_samples(self, name: str, steps) -> np.ndarray:
    """Samples of the exact denoiser of the mixture, with the same sampler settings as the model's (computed once
    per setting)."""
    if (name, int(steps)) not in self._exact:
      self._exact[(name, int(steps))] = self._sample_exact_denoiser(name, steps)
    return self._exact[(name, int(steps))]

  def _sample_exact_denoiser(self, name: str, steps) -> np.ndarray:
    exact = exact_denoiser.exact_model_fn(self.mixture, self.schedule, self.target)
    if self.learn_sigma:   # the variance channel at -1 means the posterior variance (fixed_small) for DDPM
      model_fn = lambda x, t: jnp.concatenate([exact(x, t), -jnp.ones_like(x)], axis=-1)
    else:
      model_fn = exact
    sample = generation.make_sampler(self.config, self.schedule, name, str(steps))
    run = jax.jit(lambda x_T, key: sample(model_fn, x_T, key))
    key = jax.random.fold_in(self.rng, 0xE0)
    x_T = jax.random.normal(jax.random.fold_in(key, 0), (int(self.a.num_samples),) + self.image_shape)
    return np.asarray(run(x_T, jax.random.fold_in(key, 1)))


HIGH_NOISE_SNR, LOW_NOISE_SNR, FEW_STEPS = 0.1, 1.0, 10


def summarize(result: dict) -> dict[str, float]:
  """Headline numbers (what the paper predicts): errors at high noise (bucket SNR < 0.1) and low noise
  (SNR >= 1), the first-step distance from the data mean, and the largest channel shift of samples with at most
  10 steps."""
  rows = result["x0_error"]["buckets"]
  out = {}
  for name in ("x0_mse", "bias_mse"):
    if name in rows[0]:
      high = [r[name] for r in rows if r["snr_geomean"] < HIGH_NOISE_SNR]
      low = [r[name] for r in rows if r["snr_geomean"] >= LOW_NOISE_SNR]
      if high:
        out[f"{name}_high_noise"] = float(np.mean(high))
      if low:
        out[f"{name}_low_noise"] = float(np.mean(low))
  out["first_step_mse"] = result["first_step"]["per_sample_mse"]
  for sampler_name, curve in result["color_shift"]["samplers"].items():
    few = [r for r in curve if r["steps"] <= FEW_STEPS]
    if few:
      out[f"{sampler_name}_max_channel_shift_few_steps"] = float(max(np.max(np.abs(r["channel_shift"])) for r in few))
  return out


def scalars(result: dict) -> dict[str, float]:
  """The TensorBoard view of a result: one scalar per bucket, first-step figure and (sampler, steps) figure."""
  out = {f"summary/{k}": v for k, v in result["summary"].items()}
  for row in result["x0_error"]["buckets"]:
    tag = f"t{row['t_min']:04d}-{row['t_max']:04d}"
    for name in ("x0_mse", "eps_mse", "bias_mse", "bayes_mse"):
      if name in row:
        out[f"{name}/{tag}"] = row[name]
    for c, value in enumerate(row["x0_signed"]):
      out[f"x0_signed_c{c}/{tag}"] = value
  for name in ("mean_prediction_mse", "per_sample_mse", "bias_mse"):
    if name in result["first_step"]:
      out[f"first_step/{name}"] = result["first_step"][name]
  for group, curves in (("color", result["color_shift"]["samplers"]),
                        ("color_exact", result["color_shift"].get("exact_denoiser", {}))):
    for sampler_name, rows in curves.items():
      for row in rows:
        prefix = f"{group}/{sampler_name}/steps{row['steps']:04d}"
        for name in ("channel_fd", "r_minus_g_shift", "b_minus_g_shift", "mmd", "log_likelihood_gap",
                     "component_tv"):
          if name in row:
            out[f"{prefix}/{name}"] = row[name]
        for c, value in enumerate(row["channel_shift"]):
          out[f"{prefix}/channel_shift_c{c}"] = value
  return out


def measure(run: AnalysisRun, restored: checkpointing.Restored, samplers, sampling_steps,
            writer) -> tuple[dict, dict]:
  """The three parts of the study of `restored`'s params in turn, the colour shift with each of `samplers` at
  each of `sampling_steps`: (their results, the seconds each took)."""
  seconds, parts = {}, {}
  start = time.time()
  parts["x0_error"], parts["data"] = run.x0_errors(restored.params)
  seconds["x0_error"] = time.time() - start
  start = time.time()
  parts["first_step"] = run.first_step(restored.params, parts["data"])
  seconds["first_step"] = time.time() - start
  start = time.time()
  parts["shifts"], parts["exact_shifts"], parts["strips"] = run.color_shift(
      restored.params, restored.step, samplers, sampling_steps, parts["data"], writer)
  seconds["color_shift"] = time.time() - start
  return parts, seconds


def result_record(config, workdir: str, run: AnalysisRun, restored: checkpointing.Restored, parts: dict,
                  seconds: dict) -> dict[str, Any]:
  """The JSON record of the study (without its figures' paths), with its headline summary."""
  d, loss = config.data, config.loss
  result = {
      "checkpoint_step": restored.step, "params": restored.params_name, "workdir": str(storage.absolute(workdir)),
      "data": {"source": d.source, "name": d.name, "split": d.split, "image_shape": list(run.image_shape),
               "num_examples": parts["data"]["num_examples"]},
      "model": {"target": loss.target, "weighting": loss.weighting, "schedule": config.diffusion.schedule,
                "num_timesteps": int(config.diffusion.num_timesteps), "learn_sigma": run.learn_sigma},
      "x0_error": parts["x0_error"],
      "first_step": parts["first_step"],
      "color_shift": {"units": "0-255", "data": color.color_stats_from_means(parts["data"]["channel_means"]),
                      "num_samples": int(config.analysis.num_samples), "clip_x0": bool(config.sampling.clip_x0),
                      "samplers": parts["shifts"]},
      "seconds": {k: round(v, 2) for k, v in seconds.items()},
  }
  if parts["exact_shifts"]:
    result["color_shift"]["exact_denoiser"] = parts["exact_shifts"]
  result["summary"] = summarize(result)
  return result


def figures(config, restored: checkpointing.Restored, parts: dict) -> dict[str, np.ndarray]:
  """The study's figures as images: x0 error and signed error per bucket, colour shift, sample strips."""
  x0_error = parts["x0_error"]
  title = f"{config.loss.weighting} ({config.loss.target}), step {restored.step}, {restored.params_name}"
  curves = dict(parts["shifts"])
  curves.update({f"{k} (exact denoiser)": v for k, v in parts["exact_shifts"].items()})
  figures = {"x0_error": plots.x0_error_figure(x0_error["buckets"], title, x0_error["data_variance"]),
             "signed_error": plots.signed_error_figure(x0_error["buckets"], title),
             "color_shift": plots.color_shift_figure(curves, title)}
  for name, strip in parts["strips"].items():
    figures[f"samples_{name}"] = pixels.image_grid(strip, columns=STRIP_IMAGES)
  return figures
