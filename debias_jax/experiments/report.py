"""REPORT.md of a comparison study, rebuilt from the results its phases saved (nothing is recomputed).

The tables and figures are those of the paper's experiments: the metric against training iterations, against
the number of sampling steps, the per-t x0 error and the colour shift of samples, plus on the Gaussian mixture the
exact bias and exact sample quality. Every arm runs once per training seed (compare.seeds): tables show
mean ± s.d. over seeds and the paired per-seed differences against constant, and each of the paper's claims gets
a verdict by the rule of experiments/efficiency.py (stated in the report before the numbers), next to the
"iterations to match" readout. Missing results (an unfinished study) show as a dash.
"""

from __future__ import annotations

import math
import os
import re
import time
from typing import Sequence

from etils import epath
import numpy as np
from matplotlib.figure import Figure

from debias_jax import builders
from debias_jax import jsonl
from debias_jax import pixels
from debias_jax import storage
from debias_jax.analysis import plots
from debias_jax.analysis import study as analysis_study
from debias_jax.diffusion import weighting
from debias_jax.diffusion import t_sampling
from debias_jax.experiments import efficiency
from debias_jax.experiments import plan

FIGURES_DIR = "figures"
DASH = "—"
# The bias study's bands (what the paper predicts): debias should be clearly better below HIGH_NOISE_SNR; colour
# shift is judged at the paper's 2-10 sampling steps.
HIGH_NOISE_SNR = analysis_study.HIGH_NOISE_SNR
LOW_NOISE_SNR = analysis_study.LOW_NOISE_SNR
FEW_STEPS = analysis_study.FEW_STEPS
ARM_NOTES = {
    "constant": "ε-prediction, unweighted ε-MSE (the DDPM baseline)",
    "debias": "ε-prediction with the debias weight",
    "p2": "ε-prediction with the P2 weight",
    "min_snr": "ε-prediction with the Min-SNR weight",
    "x0": "x0-prediction, the standard unweighted x0-MSE (= ε-space weight SNR)",
    "v": "debias, v-form: v-prediction trained with debias's weight (same objective as `debias`, other network "
         "output); not plain v-prediction, whose unweighted v-MSE is ε-space weight 1 + 1/SNR",
    "debias_is": "ε-prediction with debias's objective, t drawn in proportion to its weight and the loss divided "
                 "by that proposal (loss.t_sampling = importance): the same expected loss, other gradient noise",
}


def describe_arm(arm: plan.Arm) -> str:
  """What an arm trains, in words: its target and whose weight (ARM_NOTES for the named arms)."""
  if arm.name in ARM_NOTES:
    return ARM_NOTES[arm.name]
  return f"{arm.target}-prediction with {arm.weighting}'s ε-space weight (converted to the {arm.target}-MSE)"


# ----------------------------------------------------------------------------------------------------------------
# Formatting.


def fmt(value, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return DASH
  if isinstance(value, (list, tuple)):
    return "/".join(f"{v:+.{max(1, digits - 2)}f}" for v in value)
  value = float(value)
  if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
    return f"{value:.{digits - 1}e}"
  return f"{value:.{digits}g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A markdown table; a "|" inside a cell (as in E|x̂0 − x0|²) is escaped so it does not end the cell."""
  line = lambda cells: "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
  return "\n".join([line(header), "|" + "---|" * len(header)] + [line(row) for row in rows])


def _row_with_best(label: str, values: Sequence[float | None], lower_is_better: bool = True) -> list[str]:
  """Cells of one table row; the best finite value in bold."""
  finite = [v for v in values if v is not None and math.isfinite(v)]
  best = (min(finite) if lower_is_better else max(finite)) if finite else None
  cells = [label]
  for v in values:
    text = fmt(v)
    cells.append(f"**{text}**" if best is not None and v == best and len(finite) > 1 else text)
  return cells


def rms(values) -> float | None:
  if values is None:
    return None
  values = np.asarray(values, np.float64)
  return float(np.sqrt(np.mean(values ** 2)))


# ----------------------------------------------------------------------------------------------------------------
# Loading what the phases saved.


def _mean_records(records: list[dict]) -> dict | None:
  """The element-wise mean over seeds of records of the same shape (numbers and lists of numbers averaged)."""
  if not records:
    return None
  out = dict(records[0])
  for key, value in records[0].items():
    if isinstance(value, bool) or all(r.get(key) == value for r in records):
      continue   # flags and shared labels (bucket bounds, step counts) stay as they are
    if isinstance(value, (int, float)) and all(isinstance(r.get(key), (int, float)) for r in records):
      out[key] = float(np.mean([r[key] for r in records]))
    elif (isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value)
          and all(isinstance(r.get(key), list) and len(r[key]) == len(value) for r in records)):
      out[key] = np.mean([r[key] for r in records], axis=0).tolist()
  return out


class StudyResults:
  """Every saved result of one study, indexed for the tables: per (arm, training seed), and means over seeds."""

  def __init__(self, config, workdir: str):
    from debias_jax.evaluation import features  # pylint: disable=g-import-not-at-top
    self.config, self.workdir = config, workdir
    self.arms = plan.study_arms(config)
    self.names = [a.name for a in self.arms]
    self.seeds = plan.study_seeds(config)
    self.steps = plan.checkpoint_steps(config)
    self.last = plan.final_step(config)      # the sweep's, second seed's and bias analysis's checkpoint
    self.eval_name, self.eval_steps = plan.eval_sampler(config)
    self.sweep = [plan.parse_sampler(e, "sweep") for e in config.compare.sweep]
    self.num_samples = int(config.eval.num_samples)
    self.seed = self.seeds[0]
    self.offset = int(config.compare.second_seed_offset)
    self.feature_space = features.resolve_feature_space(config.eval, config.data)
    self.exact = plan.is_exact_dataset(config)
    self.channels = int(config.data.channels)
    self.fd = {}        # (arm, training seed, step, sampler, steps, sample seed) -> record
    self.analysis = {}  # (arm, training seed, step) -> analysis json of the EMA params
    self.raw_analysis = {}  # the same, of the raw params (gmm: compare's exact phase at every checkpoint)
    for arm in self.arms:
      for tseed in self.seeds:
        directory = plan.run_dir(config, workdir, arm, tseed)
        for record in jsonl.read(epath.Path(directory, "eval", "results.jsonl")):
          if record.get("num_samples") == self.num_samples and record.get("feature_space") == self.feature_space:
            self.fd[(arm.name, tseed, int(record["checkpoint_step"]), record["sampler"], str(record["steps"]),
                     int(record["seed"]))] = record
        for use_ema, table in ((True, self.analysis), (False, self.raw_analysis)):
          analysis_dir = analysis_study.output_dir(directory, use_ema)
          for path in sorted(analysis_dir.glob("step_*.json")) if analysis_dir.exists() else []:
            result = storage.read_json(path)
            table[(arm.name, tseed, int(result["checkpoint_step"]))] = result
    floor_path = plan.study_path(workdir, "data_floor.json")
    self.floor = None
    if epath.Path(floor_path).exists():
      self.floor = storage.read_json(floor_path)
    self.timings = jsonl.read(plan.study_path(workdir, "timings.jsonl"))
    self.runs = jsonl.read(plan.study_path(workdir, "runs.jsonl"))

  # Per training seed (tseed); the evaluation samples with the training seed, the 2nd time with seed + offset.

  def metric(self, arm: str, step: int, sampler: str, steps: str, tseed: int, second: bool = False,
             key: str = "fid") -> float | None:
    sample_seed = tseed + (self.offset if second else 0)
    record = self.fd.get((arm, tseed, step, sampler, str(steps), sample_seed))
    return None if record is None else record.get(key)

  def eval_fd(self, arm: str, step: int, tseed: int, second: bool = False) -> float | None:
    return self.metric(arm, step, self.eval_name, self.eval_steps, tseed, second)

  def fd_noise(self) -> float | None:
    """Largest |FD(sample seed) - FD(2nd sample seed)| over arms and seeds at the last checkpoint (descriptive)."""
    if not self.offset:
      return None
    gaps = [abs(a - b) for a, b in ((self.eval_fd(n, self.last, s), self.eval_fd(n, self.last, s, True))
                                    for n in self.names for s in self.seeds) if a is not None and b is not None]
    return max(gaps) if gaps else None

  def sampling_spread(self, arm: str, baseline: str = "constant") -> float | None:
    """efficiency.sampling_seed_spread of the FD's paired difference arm - baseline at the last checkpoint (the
    two sample seeds of every training seed), or None where a value is missing or no 2nd sample seed is run."""
    if not self.offset:
      return None
    rows = []
    for tseed in self.seeds:
      row = []
      for second in (False, True):
        a, b = self.eval_fd(arm, self.last, tseed, second), self.eval_fd(baseline, self.last, tseed, second)
        if a is None or b is None:
          return None
        row.append(a - b)
      rows.append(row)
    return efficiency.sampling_seed_spread(np.asarray(rows))

  def buckets(self, arm: str, step: int | None = None, tseed: int | None = None,
              raw: bool = False) -> list[dict] | None:
    """The per-t x0-error buckets of one seed, or (tseed None) their mean over the seeds that have them."""
    runs = [r["x0_error"]["buckets"] for r in self.results(arm, step, raw, tseed)]
    if tseed is not None:
      return runs[0] if runs else None
    return [_mean_records(list(rows)) for rows in zip(*runs)] if runs else None

  def results(self, arm: str, step: int | None = None, raw: bool = False, tseed: int | None = None) -> list[dict]:
    """The analyses of one checkpoint (default: the last) over the seeds (or of one seed), EMA or raw params."""
    step = self.last if step is None else step
    table = self.raw_analysis if raw else self.analysis
    return [table[(arm, s, step)] for s in (self.seeds if tseed is None else [tseed]) if (arm, s, step) in table]

  def first_step(self, arm: str) -> dict:
    return _mean_records([r.get("first_step", {}) for r in self.results(arm)]) or {}

  def data_variance(self) -> float | None:
    """The data's variance per pixel (the x0 error of predicting the mean), from any arm's analysis."""
    return next((r["x0_error"].get("data_variance") for n in self.names for r in self.results(n)), None)

  def color_rows(self, arm: str, sampler: str, exact: bool = False) -> list[dict]:
    steps = sorted({int(r["steps"]) for result in self.results(arm) for r in
                    result["color_shift"].get("exact_denoiser" if exact else "samplers", {}).get(sampler, [])})
    return [self.color_row(arm, sampler, n, exact) for n in steps]

  def color_row(self, arm: str, sampler: str, steps: int, exact: bool = False, step: int | None = None,
                tseed: int | None = None, raw: bool = False):
    """One colour-shift / sample-quality row of one seed, or (tseed None) its mean over seeds."""
    results = self.results(arm, step, raw, tseed)
    rows = [next((r for r in result["color_shift"].get("exact_denoiser" if exact else "samplers", {})
                  .get(sampler, []) if int(r["steps"]) == int(steps)), None) for result in results]
    return _mean_records([r for r in rows if r is not None])

  def band_mean(self, arm: str, key: str, low: float | None, high: float | None, step: int | None = None,
                tseed: int | None = None, raw: bool = False):
    """Mean of a per-bucket value over the buckets whose geometric-mean SNR lies in [low, high)."""
    rows = self.buckets(arm, step, tseed, raw)
    if not rows or key not in rows[0]:
      return None
    values = [r[key] for r in rows if (low is None or r["snr_geomean"] >= low)
              and (high is None or r["snr_geomean"] < high)]
    return float(np.mean(values)) if values else None

  # Over seeds.

  def per_seed(self, get) -> dict[int, float]:
    """{training seed: get(seed)} for the seeds with a finite value."""
    values = {s: get(s) for s in self.seeds}
    return {s: float(v) for s, v in values.items() if v is not None and math.isfinite(v)}

  def mean(self, get) -> float | None:
    values = self.per_seed(get)
    return float(np.mean(list(values.values()))) if values else None

  def wall_seconds(self, current_run: dict | None) -> float:
    runs = list(self.runs) + ([current_run] if current_run else [])
    return float(sum(r.get("seconds", 0.0) for r in runs))


# ----------------------------------------------------------------------------------------------------------------
# Figures.


def _save(study: StudyResults, name: str, figure: Figure) -> str:
  pixels.save_png(epath.Path(study.workdir, FIGURES_DIR, name), plots.render(figure))
  return f"{FIGURES_DIR}/{name}"


def _arm_style(k: int) -> dict:
  return {"color": f"C{k}", "marker": "os^vD<>p"[k % 8]}


def figure_iterations(study: StudyResults) -> str | None:
  panels = [("fid", f"Fréchet distance ({study.feature_space}), mean over seeds",
             lambda a, s: study.mean(lambda t: study.eval_fd(a, s, t)))]
  if study.exact:
    panels.append(("mmd", "exact MMD² to the mixture", lambda a, s: (study.color_row(a, study.eval_name,
                                                                                      int(study.eval_steps), step=s)
                                                                      or {}).get("mmd")))
    panels.append(("bias", f"exact bias E|x̂0−E[x0|xt]|², SNR<{HIGH_NOISE_SNR}",
                   lambda a, s: study.band_mean(a, "bias_mse", None, HIGH_NOISE_SNR, s)))
  figure = Figure(figsize=(5 * len(panels), 4), dpi=100)
  axes = np.atleast_1d(figure.subplots(1, len(panels)))
  drawn = False
  for axis, (_, label, get) in zip(axes, panels):
    for k, name in enumerate(study.names):
      points = [(s, get(name, s)) for s in study.steps]
      points = [(s, v) for s, v in points if v is not None]
      if points:
        drawn = True
        axis.plot(*zip(*points), label=name, **_arm_style(k))
    axis.set_xlabel("training iterations")
    axis.set_ylabel(label)
    axis.set_yscale("log")
    axis.grid(True, which="both", alpha=0.3)
  if not drawn:
    return None
  axes[0].legend(fontsize=8)
  figure.suptitle(f"Metric vs training iterations ({study.eval_name}, {study.eval_steps} steps, "
                  f"{study.num_samples} samples)")
  figure.tight_layout()
  return _save(study, "metric_vs_iterations.png", figure)


def figure_steps(study: StudyResults) -> str | None:
  samplers = list(dict.fromkeys(name for name, _ in study.sweep))
  if not samplers:
    return None
  figure = Figure(figsize=(5 * len(samplers), 4), dpi=100)
  axes = np.atleast_1d(figure.subplots(1, len(samplers)))
  drawn = False
  for axis, sampler in zip(axes, samplers):
    for k, name in enumerate(study.names):
      points = [(int(n), study.mean(lambda t, n=n: study.metric(name, study.last, sampler, n, t)))
                for s, n in study.sweep if s == sampler]
      points = [(s, v) for s, v in points if v is not None]
      if points:
        drawn = True
        axis.plot(*zip(*points), label=name, **_arm_style(k))
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("sampling steps")
    axis.set_ylabel(f"Fréchet distance ({study.feature_space})")
    axis.set_title(sampler)
    axis.grid(True, which="both", alpha=0.3)
  if not drawn:
    return None
  axes[0].legend(fontsize=8)
  figure.suptitle(f"Metric vs sampling steps at step {study.last}")
  figure.tight_layout()
  return _save(study, "metric_vs_steps.png", figure)


def figure_x0_error(study: StudyResults) -> str | None:
  keys = [("x0_mse", "E|x̂0 − x0|² per pixel")]
  if study.exact:
    keys.append(("bias_mse", "exact bias E|x̂0 − E[x0|xt]|² per pixel"))
  reference = study.buckets("constant")
  keys.append(("ratio", "x0 error / constant's x0 error"))
  figure = Figure(figsize=(5 * len(keys), 4), dpi=100)
  axes = np.atleast_1d(figure.subplots(1, len(keys)))
  drawn = False
  for axis, (key, label) in zip(axes, keys):
    for k, name in enumerate(study.names):
      rows = study.buckets(name)
      if not rows:
        continue
      snr = [r["snr_geomean"] for r in rows]
      if key == "ratio":
        if not reference:
          continue
        values = [r["x0_mse"] / c["x0_mse"] for r, c in zip(rows, reference)]
      else:
        values = [max(r[key], 1e-12) for r in rows]
      drawn = True
      axis.plot(snr, values, label=name, **_arm_style(k))
    variance = study.data_variance()
    if key == "x0_mse" and variance is not None:
      axis.axhline(variance, color="grey", ls="--", lw=1.0, label="data variance (predicting the mean)")
    if key == "bias_mse" and study.buckets(study.names[0]):
      rows = study.buckets(study.names[0])
      axis.plot([r["snr_geomean"] for r in rows], [r["bayes_mse"] for r in rows], "k--",
                label="E|E[x0|xt] − x0|² (optimal)")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.axvline(HIGH_NOISE_SNR, color="grey", lw=0.8, ls=":")
    axis.set_xlabel("SNR(t) (bucket geometric mean)")
    axis.set_ylabel(label)
    axis.grid(True, which="both", alpha=0.3)
  if not drawn:
    return None
  axes[0].legend(fontsize=8)
  figure.suptitle(f"Per-t x0 error at step {study.last}")
  figure.tight_layout()
  return _save(study, "x0_error.png", figure)


def figure_color(study: StudyResults, samplers: Sequence[str]) -> str | None:
  figure = Figure(figsize=(5 * len(samplers), 4), dpi=100)
  axes = np.atleast_1d(figure.subplots(1, len(samplers)))
  drawn = False
  for axis, sampler in zip(axes, samplers):
    for k, name in enumerate(study.names):
      rows = study.color_rows(name, sampler)
      if rows:
        drawn = True
        axis.plot([r["steps"] for r in rows], [max(rms(r["channel_shift"]), 1e-3) for r in rows], label=name,
                  **_arm_style(k))
    exact = study.color_rows(study.names[0], sampler, exact=True)
    if exact:
      axis.plot([r["steps"] for r in exact], [max(rms(r["channel_shift"]), 1e-3) for r in exact], "k--",
                label="exact denoiser")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("sampling steps")
    axis.set_ylabel("RMS over channels of the mean shift (0-255)")
    axis.set_title(sampler)
    axis.grid(True, which="both", alpha=0.3)
  if not drawn:
    return None
  axes[0].legend(fontsize=8)
  figure.suptitle(f"Colour / mean shift of samples vs sampling steps at step {study.last}")
  figure.tight_layout()
  return _save(study, "color_shift.png", figure)


# ----------------------------------------------------------------------------------------------------------------
# Sections.


def weight_bands(config) -> tuple[int, int]:
  """The t bands of the weight shares: t < T/10, T/10 <= t < T/2, t >= T/2 (100 and 500 on T = 1000)."""
  num = int(config.diffusion.num_timesteps)
  return (num // 10, num // 2)


def arm_band_shares(config, arm: plan.Arm) -> list[float]:
  """The share of the arm's ε-space weight (summed over t) in each band of weight_bands."""
  c = plan.arm_config(config, arm)
  chain = builders.schedule(c)   # the arm's training weights exactly, then back in eps space
  eps = t_sampling.eps_space_weights(chain, builders.loss_weights(c, chain), arm.target)
  return t_sampling.band_shares(eps, weight_bands(config)).tolist()


def _arms_section(study: StudyResults) -> str:
  low, high = weight_bands(study.config)
  rows = []
  for arm in study.arms:
    options = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in arm.options)
    shares = arm_band_shares(study.config, arm)
    rows.append([f"`{arm.name}`", describe_arm(arm), arm.target, arm.weighting + (f" ({options})" if options else ""),
                 weighting.FORMULAS[arm.weighting]["eps"], weighting.FORMULAS[arm.weighting]["x0"]] +
                [f"{100 * x:.3g}%" for x in shares])
  return ("What each arm trains, and how its ε-space weight is shared over t (the weight summed over each band "
          f"of t, divided by its sum over all t; {study.config.diffusion.schedule} schedule): where the loss puts "
          "its effort, whatever the weight's absolute scale.\n\n" +
          markdown_table(["arm", "description", "target", "weighting", "ε-space weight", "x0-space weight",
                          f"share t < {low}", f"share {low} ≤ t < {high}", f"share t ≥ {high}"], rows))


def mean_sd_cell(values: dict[int, float], num_seeds: int) -> str:
  """mean ± s.d. over the training seeds (the mean alone for one seed); (n=k) when seeds are missing."""
  if not values:
    return DASH
  stats = efficiency.mean_sd(list(values.values()))
  text = fmt(stats["mean"]) + (f" ± {fmt(stats['sd'], 2)}" if stats["sd"] is not None else "")
  return text + (f" (n={stats['n']})" if stats["n"] < num_seeds else "")


def _row_mean_sd(study: StudyResults, label: str, values: Sequence[dict[int, float]],
                 lower_is_better: bool = True) -> list[str]:
  """Cells of one table row, mean ± s.d. over seeds; the best mean in bold."""
  means = [float(np.mean(list(v.values()))) if v else None for v in values]
  finite = [m for m in means if m is not None]
  best = (min(finite) if lower_is_better else max(finite)) if finite else None
  return [label] + [f"**{mean_sd_cell(v, len(study.seeds))}**" if m is not None and m == best and len(finite) > 1
                    else mean_sd_cell(v, len(study.seeds)) for v, m in zip(values, means)]


def curve_metrics(study: StudyResults) -> list[tuple[str, object]]:
  """(label, get(arm, step, tseed)) of every metric recorded at every checkpoint (all lower is better)."""
  out = [(f"Fréchet distance ({study.feature_space}, {study.eval_name} {study.eval_steps})",
          lambda a, s, t: study.eval_fd(a, s, t))]
  if not study.exact:
    return out
  count = int(study.eval_steps)
  for raw in (False, True) if study.raw_analysis else (False,):
    params = " (raw params)" if raw else (" (EMA params)" if study.raw_analysis else "")
    row = lambda a, s, t, raw=raw: study.color_row(a, study.eval_name, count, step=s, tseed=t, raw=raw) or {}
    out += [(f"exact MMD² to true samples{params}", lambda a, s, t, row=row: row(a, s, t).get("mmd")),
            (f"log-likelihood gap (nats/dim; data − samples){params}",
             lambda a, s, t, row=row: row(a, s, t).get("log_likelihood_gap")),
            (f"total variation of sampled component frequencies from the mixture weights{params}",
             lambda a, s, t, row=row: row(a, s, t).get("component_tv")),
            (f"excess x0 error E|x̂0 − E[x0|x_t]|² (the exact bias), SNR < {HIGH_NOISE_SNR}{params}",
             lambda a, s, t, raw=raw: study.band_mean(a, "bias_mse", None, HIGH_NOISE_SNR, s, t, raw))]
  return out


def iterations_tables(study: StudyResults) -> list[str]:
  header = ["iterations"] + study.names
  seeds = f"mean ± s.d. over {len(study.seeds)} training seed(s) {tuple(study.seeds)}"
  get = curve_metrics(study)[0][1]
  rows = [_row_mean_sd(study, str(s), [study.per_seed(lambda t, n=n, s=s: get(n, s, t)) for n in study.names])
          for s in study.steps]
  if study.offset:
    rows.append(_row_mean_sd(study, f"{study.last}, 2nd sample seed",
                             [study.per_seed(lambda t, n=n: study.eval_fd(n, study.last, t, True))
                              for n in study.names]))
  out = [f"Fréchet distance in the `{study.feature_space}` feature space, {study.num_samples} samples, "
         f"`{study.eval_name}` with {study.eval_steps} steps, {seeds} (lower is better; best mean per row in "
         f"bold).\n\n" + markdown_table(header, rows)]
  for label, get in curve_metrics(study)[1:]:
    rows = [_row_mean_sd(study, str(s), [study.per_seed(lambda t, n=n, s=s: get(n, s, t)) for n in study.names])
            for s in study.steps]
    out.append(f"Gaussian mixture, {label}, same sampler, {seeds}:\n\n" + markdown_table(header, rows))
  return out


def steps_table(study: StudyResults) -> str | None:
  if not study.sweep:
    return None
  rows = [_row_mean_sd(study, f"{s} {n}", [study.per_seed(lambda t, name=name, s=s, n=n:
                                                           study.metric(name, study.last, s, n, t))
                                           for name in study.names]) for s, n in study.sweep]
  return (f"Fréchet distance at step {study.last} against the sampler and its number of steps "
          f"(`{study.feature_space}` features, {study.num_samples} samples, mean ± s.d. over "
          f"{len(study.seeds)} training seed(s)):\n\n" + markdown_table(["sampler, steps"] + study.names, rows))


def _differences_cell(diffs: dict[int, float]) -> str:
  if not diffs:
    return DASH
  return f"{fmt(float(np.mean(list(diffs.values()))))} ({', '.join(f'{d:+.3g}' for d in diffs.values())})"


def paired_rows(study: StudyResults) -> list[tuple[str, object]]:
  """(label, get(arm, tseed)) of every quantity compared against constant seed by seed."""
  rows = [(f"{label}, step {s}", lambda a, t, get=get, s=s: get(a, s, t))
          for label, get in curve_metrics(study) for s in study.steps]
  rows += [(f"Fréchet distance, {s} {n}, step {study.last}",
            lambda a, t, s=s, n=n: study.metric(a, study.last, s, n, t)) for s, n in study.sweep]
  rows += [(f"x0 error, SNR < {HIGH_NOISE_SNR}, step {study.last}",
            lambda a, t: study.band_mean(a, "x0_mse", None, HIGH_NOISE_SNR, tseed=t))]
  return rows


def paired(study: StudyResults, arm: str, get, baseline: str = "constant") -> dict[int, float]:
  """{seed: arm - baseline} over the seeds where both have a value."""
  a = study.per_seed(lambda t: get(arm, t))
  b = study.per_seed(lambda t: get(baseline, t))
  common = sorted(set(a) & set(b))
  return efficiency.paired_differences({s: a[s] for s in common}, {s: b[s] for s in common}) if common else {}


def paired_table(study: StudyResults) -> str | None:
  others = [n for n in study.names if n != "constant"]
  if "constant" not in study.names or not others:
    return None
  rows = [[label] + [_differences_cell(paired(study, n, get)) for n in others] for label, get in paired_rows(study)]
  return ("Paired differences arm − constant, seed by seed (same training seed: same init, data order, t and "
          "noise): the mean over seeds, then each seed's difference in the order of the seeds "
          f"{tuple(study.seeds)}. Negative = lower than constant (better for every metric here).\n\n" +
          markdown_table(["quantity"] + [f"{n} − constant" for n in others], rows))


def iterations_to_match(study: StudyResults, arm: str, get, baseline: str = "constant") -> dict | None:
  """efficiency.iterations_to_match of the arm's seed-mean curve against the baseline's, or None if the
  baseline's final mean is missing."""
  def curve(name):
    return [study.mean(lambda t, s=s: get(name, s, t)) for s in study.steps]
  base, values = curve(baseline), curve(arm)
  if base[-1] is None:
    return None
  nan = lambda v: float("nan") if v is None else v
  return efficiency.iterations_to_match(study.steps, [nan(v) for v in base], [nan(v) for v in values])


def match_table(study: StudyResults) -> str | None:
  others = [n for n in study.names if n != "constant"]
  if "constant" not in study.names or not others:
    return None
  rows = []
  for label, get in curve_metrics(study):
    cells = []
    for n in others:
      result = iterations_to_match(study, n, get)
      cells.append(DASH if result is None else "not reached" if result["fraction"] is None else
                   f"≤ {result['fraction']:.2f} (at the first checkpoint)" if result["iteration"] == study.steps[0]
                   else f"{result['fraction']:.2f} (step {result['iteration']:.4g})")
    rows.append([label] + cells)
  return (f"Iterations to match: the first iteration at which the arm's mean curve (over seeds) reaches "
          f"constant's final mean (step {study.steps[-1]}), interpolated linearly between checkpoints, as a "
          f"fraction of constant's budget (the paper reports ≈ 0.4 for debias; 1.00 = as slow as constant; "
          f"'≤' = already there at the first checkpoint, so the curves cannot say how much earlier; "
          f"'not reached' = never within the budget).\n\n" +
          markdown_table(["metric"] + others, rows))


def x0_error_tables(study: StudyResults) -> list[str]:
  base = next((study.buckets(n) for n in study.names if study.buckets(n)), None)
  if base is None:
    return [f"No bias analysis at step {study.last} yet."]
  out = []
  keys = [("x0_mse", "x0 error E|x̂0 − x0|² per pixel ([-1, 1] units), data examples with fresh noise")]
  if study.exact:
    keys.append(("bias_mse", "exact bias E|x̂0 − E[x0|x_t]|² per pixel (the bias itself, no data noise)"))
  for key, label in keys:
    rows = []
    for i, b in enumerate(base):
      values = [(study.buckets(n) or [{}] * len(base))[i].get(key) for n in study.names]
      rows.append(_row_with_best(f"{b['t_min']}–{b['t_max']}", values) + [fmt(b["snr_geomean"], 3)])
      if key == "bias_mse":
        rows[-1].append(fmt(b.get("bayes_mse")))
    header = ["t"] + study.names + ["SNR (geo. mean)"] + (["optimal E|E[x0|x_t] − x0|²"] if key == "bias_mse"
                                                        else [])
    note = ""
    variance = study.data_variance()
    if key == "x0_mse" and variance is not None:
      note = (f"\n\nPredicting the data mean scores {fmt(variance)} (the data variance per pixel): the ideal x0 "
              f"error at the highest noise.")
    out.append(f"{label}, at step {study.last}, mean over the training seeds:\n\n" + markdown_table(header, rows)
               + note)
  first = [study.first_step(n) for n in study.names]
  rows = [["mean prediction vs data mean (MSE)"] + [fmt(f.get("mean_prediction_mse")) for f in first],
          ["channel shift of the mean prediction"] + [fmt(f.get("channel_shift")) for f in first]]
  if study.exact:
    rows.append(["exact bias at the first step (MSE)"] + [fmt(f.get("bias_mse")) for f in first])
  out.append("The first sampling step, x̂0(x_T, T−1) on pure noise, against the data mean:\n\n" +
             markdown_table([""] + study.names, rows))
  return out


def net_shift(row: dict, exact: dict) -> list[float]:
  """An arm's signed channel shift minus the exact denoiser's at the same sampler and steps."""
  return [float(a) - float(e) for a, e in zip(row["channel_shift"], exact["channel_shift"])]


def color_tables(study: StudyResults, samplers: Sequence[str]) -> list[str]:
  out = []
  unit = "brightness" if study.channels == 1 else "per-channel (" + "/".join("RGB"[:study.channels]) + ")"
  for sampler in samplers:
    steps = sorted({int(r["steps"]) for n in study.names for r in study.color_rows(n, sampler)})
    if not steps:
      continue
    extra = ["exact denoiser"] if study.exact else []
    rows, fd_rows, net_rows = [], [], []
    for count in steps:
      cells = [study.color_row(n, sampler, count) for n in study.names]
      exact = [study.color_row(study.names[0], sampler, count, exact=True)] if study.exact else []
      rows.append([str(count)] + [fmt(None if c is None else c["channel_shift"]) for c in cells + exact])
      fd_rows.append(_row_with_best(str(count), [None if c is None else c["channel_fd"] for c in cells]) +
                     [fmt(None if e is None else e["channel_fd"]) for e in exact])
      if exact and exact[0] is not None:
        net_rows.append([str(count)] + [fmt(None if c is None else net_shift(c, exact[0])) for c in cells])
    out.append(f"`{sampler}`: mean {unit} shift of samples against the data (0–255 scale, signed), step "
               f"{study.last}:\n\n" + markdown_table(["steps"] + study.names + extra, rows))
    if net_rows:
      out.append(f"`{sampler}`: the same shift net of the exact denoiser's under this sampler (arm − exact: what "
                 f"training leaves, the discretisation's own shift removed):\n\n" +
                 markdown_table(["steps"] + study.names, net_rows))
    out.append(f"`{sampler}`: Fréchet distance between the per-image channel-mean distributions of samples and "
               f"data (squared 0–255 units):\n\n" + markdown_table(["steps"] + study.names + extra, fd_rows))
  return out


def judge(diffs: dict[int, float], sampling_spread: float | None, expected_sign: int) -> dict | None:
  """efficiency.verdict on per-seed paired differences; an unmeasured sampling spread counts as 0 (each seed's
  own evaluation noise is then inside the seed spread, since every training seed is scored with its own seed)."""
  if not diffs:
    return None
  result = efficiency.verdict(list(diffs.values()), sampling_spread or 0.0, expected_sign)
  result["sampling_measured"] = sampling_spread is not None
  result["differences"] = dict(diffs)
  return result


def describe(result: dict) -> str:
  """The numbers behind a verdict: mean paired difference, each seed's, and the noise it is held against."""
  seeds = ", ".join(f"{d:+.3g}" for d in result["differences"].values())
  noise = ("no seed spread with one seed" if result["noise"] is None else
           f"2×noise {fmt(2 * result['noise'])} (seed s.e. {fmt(result['seed_spread'])}, sampling "
           + (fmt(result["sampling_spread"]) if result["sampling_measured"] else "not measured") + ")")
  return f"mean difference {fmt(result['mean'])} (per seed {seeds}); {noise}"


def _training_efficiency(study: StudyResults) -> list[str] | None:
  """debias against constant: the FD at the last checkpoint, seed by seed, and the iterations to match."""
  get = lambda a, t: study.eval_fd(a, study.last, t)
  result = judge(paired(study, "debias", get), study.sampling_spread("debias"), -1)
  if result is None:
    return None
  match = iterations_to_match(study, "debias", curve_metrics(study)[0][1])
  reach = ("not reached" if match is None or match["fraction"] is None else
           f"≤ {match['fraction']:.2f} of the budget (at the first checkpoint)" if match["iteration"] == study.steps[0]
           else f"{match['fraction']:.2f} of the budget (step {match['iteration']:.4g})")
  return ["training efficiency: debias < constant at equal iterations",
          "FID lower at every checkpoint; debias at ≈40% of the iterations matches constant at 100%",
          f"FD at step {study.last}: {describe(result)}; iterations to match constant's final FD: {reach}",
          result["verdict"]]


def _combine(results: list[dict]) -> str:
  """One verdict over several claims that must all hold: supported if every one is, contradicted if every one is."""
  verdicts = {r["verdict"] for r in results}
  return verdicts.pop() if len(verdicts) == 1 and verdicts != {efficiency.NOT_SUPPORTED} else (
      efficiency.NOT_SUPPORTED)


def _sampling_efficiency(study: StudyResults) -> list[str] | None:
  """debias against constant at every sampler setting of the sweep, on the last checkpoint."""
  spread = study.sampling_spread("debias")
  results = [(s, n, judge(paired(study, "debias", lambda a, t, s=s, n=n: study.metric(a, study.last, s, n, t)),
                          spread, -1)) for s, n in study.sweep]
  results = [x for x in results if x[2] is not None]
  if not results:
    return None
  counts = {v: sum(r["verdict"] == v for *_, r in results) for v in
            (efficiency.SUPPORTED, efficiency.CONTRADICTED, efficiency.NOT_SUPPORTED)}
  fewest = min(results, key=lambda x: int(x[1]))
  measured = (f"per sampler setting: {counts[efficiency.SUPPORTED]} supported, "
              f"{counts[efficiency.CONTRADICTED]} contradicted, {counts[efficiency.NOT_SUPPORTED]} not supported "
              f"of {len(results)}; fewest steps ({fewest[0]} {fewest[1]}): {describe(fewest[2])}; sampling spread "
              f"taken from the eval sampler's 2nd sample seed")
  return ["sampling efficiency: debias < constant at every number of steps",
          "FID lower at 20–1000 steps, most at few steps", measured, _combine([r for *_, r in results])]


def _ranking(study: StudyResults) -> list[str] | None:
  """The order of the eps weightings at the last checkpoint: debias below each other, constant above each other."""
  weightings = [n for n in ("constant", "p2", "min_snr", "debias") if n in study.names]
  if len(weightings) < 3:
    return None
  get = lambda a, t: study.eval_fd(a, study.last, t)
  means = {n: study.mean(lambda t, n=n: get(n, t)) for n in weightings}
  if any(v is None for v in means.values()):
    return None
  pairs = [("debias", n, -1) for n in weightings if n != "debias"]
  pairs += [("constant", n, +1) for n in weightings if n not in ("debias", "constant")]
  results = [judge(paired(study, a, get, b), study.sampling_spread(a, b), sign) for a, b, sign in pairs]
  if any(r is None for r in results):
    return None
  order = sorted(means, key=means.get)
  measured = (" < ".join(f"{n} ({fmt(means[n])})" for n in order) + "; pairwise: " +
              "; ".join(f"{a} {'<' if sign < 0 else '>'} {b}: {r['verdict']}" for (a, b, sign), r in
                        zip(pairs, results)))
  return ["ranking of the ε weightings at the last checkpoint", "debias < P2 ≈ Min-SNR < constant", measured,
          _combine(results)]


def _bias_verdicts(study: StudyResults) -> list[list[str]]:
  """debias against constant in the bias study: x0 error at high noise, and on the mixture the exact bias and the
  exact sample quality. No second sample seed is drawn there: the sampling spread counts as 0."""
  rows = []
  x0 = judge(paired(study, "debias", lambda a, t: study.band_mean(a, "x0_mse", None, HIGH_NOISE_SNR, tseed=t)),
             None, -1)
  if x0 is not None:
    low = [study.band_mean(n, "x0_mse", LOW_NOISE_SNR, None) for n in ("debias", "constant")]
    rows.append(["x0 error at high noise: debias < constant", "clearly lower at SNR < 0.1, similar at low noise",
                 f"SNR < {HIGH_NOISE_SNR}: {describe(x0)}" +
                 (f"; SNR ≥ {LOW_NOISE_SNR} (means): {fmt(low[0])} vs {fmt(low[1])}" if None not in low else ""),
                 x0["verdict"]])
  if not study.exact:
    return rows
  bias = judge(paired(study, "debias", lambda a, t: study.band_mean(a, "bias_mse", None, HIGH_NOISE_SNR, tseed=t)),
               0.0, -1)
  if bias is not None:
    rows.append(["exact bias at high noise (mixture): debias < constant",
                 "the bias lives at high noise; debias removes most of it",
                 f"SNR < {HIGH_NOISE_SNR}: {describe(bias)}", bias["verdict"]])
  count = int(study.eval_steps)
  mmd = judge(paired(study, "debias", lambda a, t: (study.color_row(a, study.eval_name, count, tseed=t) or {})
                     .get("mmd")), None, -1)
  if mmd is not None:
    rows.append(["exact sample quality (mixture): debias < constant", "better samples",
                 f"MMD² ({study.eval_name} {study.eval_steps}): {describe(mmd)}", mmd["verdict"]])
  return rows


def _colour_shift(study: StudyResults) -> list[str] | None:
  """debias against constant: the mean RMS colour shift of samples with few sampling steps, seed by seed."""
  def shift(arm, tseed):
    result = next(iter(study.results(arm, tseed=tseed)), None)
    if not result:
      return None
    few = [rms(r["channel_shift"]) for curve in result["color_shift"]["samplers"].values() for r in curve
           if int(r["steps"]) <= FEW_STEPS]
    return float(np.mean(few)) if few else None
  result = judge(paired(study, "debias", shift), None, -1)
  if result is None:
    return None
  return [f"colour shift with ≤ {FEW_STEPS} sampling steps: debias < constant",
          "constant: strong colour casts; debias: natural colour at every step count",
          f"mean RMS shift (0–255): {describe(result)}", result["verdict"]]


def _target_invariance(study: StudyResults) -> list[str] | None:
  """The debias objective trained as v-prediction against the same as eps-prediction (an equivalence claim: the
  rule can only contradict it, by a difference of either sign beyond the noise)."""
  get = lambda a, t: study.eval_fd(a, study.last, t)
  diffs = paired(study, "v", get, "debias")
  spread = study.sampling_spread("v", "debias")
  results = [judge(diffs, spread, sign) for sign in (-1, 1)]
  if results[0] is None:
    return None
  differs = any(r["verdict"] == efficiency.SUPPORTED for r in results)
  return ["target invariance: debias in v form ≈ debias in ε form",
          "the weight, not the target, matters", f"FD v-form − ε-form: {describe(results[0])}",
          efficiency.CONTRADICTED if differs else efficiency.NOT_SUPPORTED + " (no difference beyond 2×noise; "
          "the rule cannot support an equivalence)"]


def verdicts(study: StudyResults) -> list[list[str]]:
  """[claim, paper, measured, verdict] rows, computed from the numbers by the rule of efficiency.verdict."""
  have = set(study.names)
  both = {"constant", "debias"} <= have
  rows = [_training_efficiency(study), _sampling_efficiency(study)] if both else []
  rows.append(_ranking(study))
  if both:
    rows += _bias_verdicts(study) + [_colour_shift(study)]
  if {"v", "debias"} <= have:
    rows.append(_target_invariance(study))
  return [row for row in rows if row is not None]


def verdict_rule(study: StudyResults) -> str:
  """The rule, stated before any number, and what this study's number of seeds can show."""
  n = len(study.seeds)
  can = ("With one training seed no spread over seeds can be measured, so **no claim can be supported or "
         "contradicted**: every verdict below is \"not supported\" by construction and the numbers are descriptive "
         "only." if n < 2 else
         f"With {n} training seeds, all signs agree by chance with probability 2^(1−{n}) = {2 ** (1 - n):.2g} when "
         f"there is no true difference, and the seed spread is estimated from {n} values only, so \"supported\" "
         f"means a difference in this setup (this data, model size, learning rate and budget), not a measurement "
         f"of its size; \"not supported\" means this study cannot tell, not that there is no effect.")
  return ("**Verdict rule (fixed in advance, `experiments/efficiency.py`).** Each claim compares an arm with "
          "constant (or the arms it names) seed by seed: d_s = arm − constant for training seed s (the same seed "
          "gives both the same init, data order, t and noise). noise = sqrt(seed² + sampling²), where seed = "
          "s.d.(d_s)/√n, the standard error of the mean difference over the n training seeds, and sampling = the "
          "s.d. over sample seeds of the mean difference (the last checkpoint scored again with a second sample "
          "seed; for metrics not rescored it counts as 0, their evaluation noise being inside the seed spread, "
          "since every training seed is scored with its own sample seed). A claim is **supported** only if every "
          "d_s has the claimed sign and |mean d| > 2·noise; **contradicted** if every d_s has the opposite sign "
          "and |mean d| > 2·noise; **not supported** otherwise. " + can)


NOT_REPRODUCED = """\
What this study is not: the paper trains the 93M-parameter lightweight ADM for 200k–1M iterations on 256 px faces
and scores FID-10k with Inception-v3. Here every arm is a small UNet trained for a few hundred to a few thousand
iterations on CPU-sized offline data, scored by a Fréchet distance in a stand-in feature space (digits,
photo_patches) or pixel space with exact likelihood/MMD/bias (Gaussian mixture), from a few training seeds
(compare.seeds) and a few hundred samples. Absolute numbers are not comparable with the paper's; only the
directions of the differences are, and only where the rule above supports them. DPM-Solver and UniPC and the
1M-iteration training curve are not part of these presets (the first two are one config line away:
compare.sweep accepts any sampler, e.g. 'dpm_solver++:20')."""


def _timing_section(study: StudyResults, current_run: dict | None) -> str:
  phases = list(dict.fromkeys(t["phase"] for t in study.timings))
  totals = {}
  for t in study.timings:
    totals[(t["phase"], t["arm"])] = totals.get((t["phase"], t["arm"]), 0.0) + t["seconds"]
  rows = []
  for phase in phases:
    total = sum(v for (p, _), v in totals.items() if p == phase)
    rows.append([phase] + [fmt(totals.get((phase, n)), 3) if (phase, n) in totals else DASH
                           for n in study.names] + [f"{total:.0f}"])
  runs = list(study.runs) + ([current_run] if current_run else [])
  wall = study.wall_seconds(current_run)
  cpu = sum(r.get("cpu_seconds", 0.0) for r in runs)
  lines = [f"Wall time: **{wall / 60:.1f} min** ({wall:.0f} s) over {len(runs)} invocation(s) of the driver"
           + (f", {cpu:.0f} s of CPU time" if cpu >= 1 else "") + ". The machine may be shared: the load "
           "averages below say how busy it was."]
  for r in runs:
    load = r.get("load_start")
    lines.append(f"- {time.strftime('%Y-%m-%d %H:%M', time.localtime(r['start']))}: {r.get('seconds', 0):.0f} s"
                 + (", completed" if r.get("completed") else ", in progress" if r is current_run else ", stopped")
                 + (f"; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}" if load else "")
                 + (f", at end {r['load_end'][0]:.1f}" if r.get("load_end") else "")
                 + f" on {os.cpu_count()} CPUs"
                 + (f"; {r['cpu_seconds']:.0f} s of CPU time (user + system)" if r.get("cpu_seconds") else ""))
  if rows:
    lines.append("\nSeconds per phase and arm (phases that did work; summed over invocations):\n")
    lines.append(markdown_table(["phase"] + study.names + ["total"], rows))
  return "\n".join(lines)


def _command_section(study: StudyResults, current_run: dict | None) -> str:
  runs = list(study.runs) + ([current_run] if current_run else [])
  commands = list(dict.fromkeys(r.get("command", "") for r in runs if r.get("command")))
  if not commands:
    commands = ["python -m debias_jax.experiments.compare --config <preset> --workdir " + study.workdir]
  return "\n".join(["```bash"] + commands + ["```"])


def _intro(study: StudyResults) -> str:
  c = study.config
  return (f"Reproduction of the comparisons of *Unmasking Bias in Diffusion Model Training* (ECCV 2024) "
          f"at small scale: {len(study.arms)} arms with the same data "
          f"(`{c.data.name}`, {c.data.image_size}×{c.data.image_size}×{c.data.channels}), training seeds "
          f"{', '.join(str(s) for s in study.seeds)} (each arm trained once per seed), "
          f"model ({c.model.model_channels} channels, channel_mult {tuple(c.model.channel_mult)}, learned "
          f"variances: {bool(c.model.learn_sigma)}), optimiser (AdamW lr {c.optim.learning_rate:g}, batch "
          f"{c.train.batch_size}, EMA {tuple(c.ema_rates)}) and {c.train.num_steps} iterations; "
          f"{c.diffusion.schedule} schedule, T = {c.diffusion.num_timesteps}.")


def _verdicts_section(study: StudyResults) -> str:
  noise = study.fd_noise()
  lines = ["## Verdicts\n", verdict_rule(study) + "\n",
           "Each claim of the paper against this run's numbers (debias vs constant unless stated). The Fréchet "
           "distance's own sampling noise, |FD(sample seed) − FD(2nd sample seed)| of the same checkpoint maximised "
           f"over the arms and training seeds, is **{fmt(noise)}**" + (f"; {study.num_samples} real examples score **{fmt(study.floor.get('fid'))}** "
                                     f"(the floor at this sample count"
                                     + ("" if study.floor.get("independent_of_reference") else
                                        ", drawn from the reference set so slightly optimistic") + ")"
                                     if study.floor else "") + ".\n"]
  rows = verdicts(study)
  lines.append(markdown_table(["claim", "paper", "measured (debias vs constant)", "verdict"], rows) if rows
               else "No results yet.")
  for table in (match_table(study), paired_table(study)):
    if table:
      lines.append("\n" + table)
  lines.append("\n" + NOT_REPRODUCED)
  return "\n".join(lines)


def _colour_section(study: StudyResults, samplers: list[str], figure: str | None) -> str:
  strips = []
  for arm in study.arms:
    for sampler in samplers:
      path = f"{plan.ARMS_DIR}/{arm.directory}/analysis/step_{study.last:08d}_samples_{sampler}.png"
      if epath.Path(study.workdir, path).exists():
        strips.append(f"- `{arm.name}`, {sampler} (rows: "
                      f"{', '.join(str(r['steps']) for r in study.color_rows(arm.name, sampler))} steps): "
                      f"![{arm.name} {sampler}]({path})")
  return ("## Colour / mean shift vs sampling steps\n\n" + "\n\n".join(color_tables(study, samplers)) +
          (f"\n\n![colour shift]({figure})" if figure else "") +
          ("\n\nSamples against the number of steps:\n\n" + "\n".join(strips) if strips else ""))


def _result_sections(study: StudyResults, figures: bool) -> list[str]:
  """The sections of the measurements: tables, each with its figure unless figures=False."""
  draw = (lambda make, *args: make(*args)) if figures else (lambda make, *args: None)
  figure = draw(figure_iterations, study)
  sections = ["## Metric vs training iterations\n\n" + "\n\n".join(iterations_tables(study)) +
              (f"\n\n![metric vs iterations]({figure})" if figure else "")]
  table = steps_table(study)
  if table:
    figure = draw(figure_steps, study)
    sections.append("## Metric vs sampling steps\n\n" + table + (f"\n\n![metric vs steps]({figure})" if figure
                                                                   else ""))
  figure = draw(figure_x0_error, study)
  sections.append("## Per-t x0 error (the bias)\n\n" + "\n\n".join(x0_error_tables(study)) +
                  (f"\n\n![x0 error]({figure})" if figure else ""))
  samplers = list(dict.fromkeys(name for n in study.names
                                for result in study.results(n)
                                for name in result.get("color_shift", {}).get("samplers", {})))
  if samplers:
    sections.append(_colour_section(study, samplers, draw(figure_color, study, samplers)))
  return sections


def render(study: StudyResults, current_run: dict | None = None, figures: bool = True) -> str:
  """The report's markdown; figures=False leaves out the plots (cheap interim reports while a study runs)."""
  c = study.config
  sections = [f"# {c.compare.title}: `{c.data.name}`", _intro(study), "## Arms\n\n" + _arms_section(study),
              _verdicts_section(study)]
  sections += _result_sections(study, figures)
  sections.append("## Wall time\n\n" + _timing_section(study, current_run))
  sections.append("## Command\n\n" + _command_section(study, current_run) +
                  "\n\nRerunning it resumes the study; on a finished study it only rewrites this report.")
  sections.append("## Config\n\n<details><summary>the study's config (JSON)</summary>\n\n```json\n" +
                  c.to_json_best_effort(indent=2) + "\n```\n</details>")
  return "\n\n".join(sections) + "\n"


def write_report(config, workdir: str, current_run: dict | None = None, figures: bool = True) -> str:
  """Writes workdir/REPORT.md (and its figures) from the saved results; returns its path."""
  study = StudyResults(config, workdir)
  text = render(study, current_run, figures)
  path = str(epath.Path(workdir, plan.REPORT_FILE))
  storage.write_atomic(path, text)
  return path


def write_suite_report(config, workdir: str, names: Sequence[str]) -> str:
  """workdir/REPORT.md over a suite: the total wall time, then each study's report (links rebased)."""
  parts, total = [], 0.0
  for name in names:
    study_dir = str(epath.Path(workdir, name))
    path = epath.Path(study_dir, plan.REPORT_FILE)
    if not path.exists():
      parts.append(f"## {name}\n\nNot run yet.")
      continue
    total += StudyResults(config.suite[name], study_dir).wall_seconds(None)
    text = path.read_text()
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    text = re.sub(r"\]\((figures|arms)/", lambda m: f"]({name}/{m.group(1)}/", text)
    parts.append(text)
  header = [f"# {config.title}",
            f"Studies: {', '.join(f'`{n}`' for n in names)}, each in its own folder with its own REPORT.md. "
            f"Total wall time **{total / 60:.1f} min** ({total:.0f} s)."]
  text = "\n\n".join(header + parts) + "\n"
  path = str(epath.Path(workdir, plan.REPORT_FILE))
  storage.write_atomic(path, text)
  return path
