"""REPORT.md of a comparison study, rebuilt from the results its phases saved (nothing is recomputed).

The tables and figures are those of the paper's experiments: the metric against training iterations, against
the number of sampling steps, the per-t x0 error and the colour shift of samples, plus on the Gaussian mixture the
exact bias and exact sample quality. Each of the paper's claims gets a verdict computed from the numbers, with
the Fréchet distance's own sampling noise (the same checkpoint scored with a second sample seed) as the yardstick
for "within noise". Missing results (an unfinished study) show as a dash.
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

from debias_jax import jsonl
from debias_jax import pixels
from debias_jax import storage
from debias_jax.analysis import plots
from debias_jax.analysis import study as analysis_study
from debias_jax.diffusion import weighting
from debias_jax.experiments import plan

FIGURES_DIR = "figures"
DASH = "—"
# The bias study's bands (what the paper predicts): debias should be clearly better below HIGH_NOISE_SNR; colour
# shift is judged at the paper's 2-10 sampling steps.
HIGH_NOISE_SNR = analysis_study.HIGH_NOISE_SNR
LOW_NOISE_SNR = analysis_study.LOW_NOISE_SNR
FEW_STEPS = analysis_study.FEW_STEPS
ARM_NOTES = {
    "x0": "the standard x0 objective (unweighted x0-MSE)",
    "v": "the debias objective trained in v form: same x0-space weight as `debias`, other network output",
}


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
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


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


class StudyResults:
  """Every saved result of one study, indexed for the tables."""

  def __init__(self, config, workdir: str):
    from debias_jax.evaluation import features  # pylint: disable=g-import-not-at-top
    self.config, self.workdir = config, workdir
    self.arms = plan.study_arms(config)
    self.names = [a.name for a in self.arms]
    self.steps = plan.checkpoint_steps(config)
    self.last = plan.final_step(config)      # the sweep's, second seed's and bias analysis's checkpoint
    self.eval_name, self.eval_steps = plan.eval_sampler(config)
    self.sweep = [plan.parse_sampler(e, "sweep") for e in config.compare.sweep]
    self.num_samples = int(config.eval.num_samples)
    self.seed = int(config.seed)
    self.second_seed = self.seed + int(config.compare.second_seed_offset)
    self.feature_space = features.resolve_feature_space(config.eval, config.data)
    self.exact = plan.is_exact_dataset(config)
    self.channels = int(config.data.channels)
    self.fd = {}        # (arm, step, sampler, steps, seed) -> record
    self.analysis = {}  # (arm, step) -> analysis json
    for arm in self.arms:
      directory = plan.arm_dir(workdir, arm)
      for record in jsonl.read(epath.Path(directory, "eval", "results.jsonl")):
        if record.get("num_samples") == self.num_samples and record.get("feature_space") == self.feature_space:
          self.fd[(arm.name, int(record["checkpoint_step"]), record["sampler"], str(record["steps"]),
                   int(record["seed"]))] = record
      analysis_dir = epath.Path(directory, "analysis")
      for path in sorted(analysis_dir.glob("step_*.json")) if analysis_dir.exists() else []:
        result = storage.read_json(path)
        self.analysis[(arm.name, int(result["checkpoint_step"]))] = result
    floor_path = plan.study_path(workdir, "data_floor.json")
    self.floor = None
    if epath.Path(floor_path).exists():
      self.floor = storage.read_json(floor_path)
    self.timings = jsonl.read(plan.study_path(workdir, "timings.jsonl"))
    self.runs = jsonl.read(plan.study_path(workdir, "runs.jsonl"))

  def metric(self, arm: str, step: int, sampler: str, steps: str, seed: int | None = None,
             key: str = "fid") -> float | None:
    record = self.fd.get((arm, step, sampler, str(steps), self.seed if seed is None else seed))
    return None if record is None else record.get(key)

  def eval_fd(self, arm: str, step: int, seed: int | None = None) -> float | None:
    return self.metric(arm, step, self.eval_name, self.eval_steps, seed)

  def fd_noise(self) -> float | None:
    """Largest |FD(seed) - FD(second seed)| over the arms at the last checkpoint: the metric's sampling noise."""
    if self.second_seed == self.seed:
      return None
    gaps = [abs(a - b) for a, b in ((self.eval_fd(n, self.last), self.eval_fd(n, self.last, self.second_seed))
                                    for n in self.names) if a is not None and b is not None]
    return max(gaps) if gaps else None

  def buckets(self, arm: str, step: int | None = None) -> list[dict] | None:
    result = self.analysis.get((arm, self.last if step is None else step))
    return None if result is None else result["x0_error"]["buckets"]

  def data_variance(self) -> float | None:
    """The data's variance per pixel (the x0 error of predicting the mean), from any arm's analysis."""
    return next((self.analysis[(n, self.last)]["x0_error"].get("data_variance") for n in self.names
                 if (n, self.last) in self.analysis), None)

  def color_rows(self, arm: str, sampler: str, exact: bool = False) -> list[dict]:
    result = self.analysis.get((arm, self.last))
    if result is None:
      return []
    group = result["color_shift"].get("exact_denoiser" if exact else "samplers", {})
    return sorted(group.get(sampler, []), key=lambda r: r["steps"])

  def color_row(self, arm: str, sampler: str, steps: int, exact: bool = False, step: int | None = None):
    result = self.analysis.get((arm, self.last if step is None else step))
    if result is None:
      return None
    rows = result["color_shift"].get("exact_denoiser" if exact else "samplers", {}).get(sampler, [])
    return next((r for r in rows if int(r["steps"]) == int(steps)), None)

  def band_mean(self, arm: str, key: str, low: float | None, high: float | None, step: int | None = None):
    """Mean of a per-bucket value over the buckets whose geometric-mean SNR lies in [low, high)."""
    rows = self.buckets(arm, step)
    if not rows or key not in rows[0]:
      return None
    values = [r[key] for r in rows if (low is None or r["snr_geomean"] >= low)
              and (high is None or r["snr_geomean"] < high)]
    return float(np.mean(values)) if values else None

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
  panels = [("fid", f"Fréchet distance ({study.feature_space})", lambda a, s: study.eval_fd(a, s))]
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
      points = [(int(n), study.metric(name, study.last, sampler, n)) for s, n in study.sweep if s == sampler]
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


def _arms_section(study: StudyResults) -> str:
  rows = []
  for arm in study.arms:
    options = ", ".join(f"{k}={v:g}" for k, v in arm.options)
    rows.append([f"`{arm.name}`", arm.target, arm.weighting + (f" ({options})" if options else ""),
                 weighting.FORMULAS[arm.weighting]["eps"], weighting.FORMULAS[arm.weighting]["x0"],
                 ARM_NOTES.get(arm.name, "")])
  return markdown_table(["arm", "target", "weighting", "ε-space weight", "x0-space weight", "note"], rows)


def iterations_tables(study: StudyResults) -> list[str]:
  header = ["iterations"] + study.names
  rows = [_row_with_best(str(s), [study.eval_fd(n, s) for n in study.names]) for s in study.steps]
  if study.second_seed != study.seed:
    rows.append(_row_with_best(f"{study.last}, 2nd sample seed",
                               [study.eval_fd(n, study.last, study.second_seed) for n in study.names]))
  out = [f"Fréchet distance in the `{study.feature_space}` feature space, {study.num_samples} samples, "
         f"`{study.eval_name}` with {study.eval_steps} steps (lower is better; best per row in bold).\n\n" +
         markdown_table(header, rows)]
  if study.exact:
    for key, label in (("mmd", "exact MMD² to true samples"),
                       ("log_likelihood_gap", "log-likelihood gap (nats/dim; data − samples)")):
      rows = [_row_with_best(str(s), [(study.color_row(n, study.eval_name, int(study.eval_steps), step=s) or {})
                                      .get(key) for n in study.names]) for s in study.steps]
      out.append(f"Gaussian mixture, {label}, same sampler:\n\n" + markdown_table(header, rows))
    rows = [_row_with_best(str(s), [study.band_mean(n, "bias_mse", None, HIGH_NOISE_SNR, s) for n in study.names])
            for s in study.steps]
    out.append(f"Gaussian mixture, exact bias E|x̂0 − E[x0|x_t]|² per pixel, mean over the buckets with "
               f"SNR < {HIGH_NOISE_SNR}:\n\n" + markdown_table(header, rows))
  return out


def steps_table(study: StudyResults) -> str | None:
  if not study.sweep:
    return None
  rows = [_row_with_best(f"{s} {n}", [study.metric(name, study.last, s, n) for name in study.names])
          for s, n in study.sweep]
  return (f"Fréchet distance at step {study.last} against the sampler and its number of steps "
          f"(`{study.feature_space}` features, {study.num_samples} samples):\n\n" +
          markdown_table(["sampler, steps"] + study.names, rows))


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
    out.append(f"{label}, at step {study.last}:\n\n" + markdown_table(header, rows) + note)
  first = [study.analysis.get((n, study.last), {}).get("first_step", {}) for n in study.names]
  rows = [["mean prediction vs data mean (MSE)"] + [fmt(f.get("mean_prediction_mse")) for f in first],
          ["channel shift of the mean prediction"] + [fmt(f.get("channel_shift")) for f in first]]
  if study.exact:
    rows.append(["exact bias at the first step (MSE)"] + [fmt(f.get("bias_mse")) for f in first])
  out.append("The first sampling step, x̂0(x_T, T−1) on pure noise, against the data mean:\n\n" +
             markdown_table([""] + study.names, rows))
  return out


def color_tables(study: StudyResults, samplers: Sequence[str]) -> list[str]:
  out = []
  unit = "brightness" if study.channels == 1 else "per-channel (" + "/".join("RGB"[:study.channels]) + ")"
  for sampler in samplers:
    steps = sorted({int(r["steps"]) for n in study.names for r in study.color_rows(n, sampler)})
    if not steps:
      continue
    extra = ["exact denoiser"] if study.exact else []
    rows, fd_rows = [], []
    for count in steps:
      cells = [study.color_row(n, sampler, count) for n in study.names]
      exact = [study.color_row(study.names[0], sampler, count, exact=True)] if study.exact else []
      rows.append([str(count)] + [fmt(None if c is None else c["channel_shift"]) for c in cells + exact])
      fd_rows.append(_row_with_best(str(count), [None if c is None else c["channel_fd"] for c in cells]) +
                     [fmt(None if e is None else e["channel_fd"]) for e in exact])
    out.append(f"`{sampler}`: mean {unit} shift of samples against the data (0–255 scale, signed), step "
               f"{study.last}:\n\n" + markdown_table(["steps"] + study.names + extra, rows))
    out.append(f"`{sampler}`: Fréchet distance between the per-image channel-mean distributions of samples and "
               f"data (squared 0–255 units):\n\n" + markdown_table(["steps"] + study.names + extra, fd_rows))
  return out


def _compare_pair(a: float | None, b: float | None, noise: float | None) -> str:
  if a is None or b is None:
    return "n/a"
  if noise is not None and abs(a - b) <= noise:
    return "within noise"
  return "lower" if a < b else "higher"


def direction(a: float, b: float, tolerance: float = 0.01) -> str:
  """Verdict on "a < b" for a metric without a noise estimate: differences under `tolerance` (relative) are ties."""
  if abs(a - b) <= tolerance * max(abs(a), abs(b)):
    return f"tie (within {100 * tolerance:g}%)"
  return "agrees" if a < b else "does not agree"


def _training_efficiency(study: StudyResults, noise: float | None) -> list[str] | None:
  """debias against constant at every checkpoint of the training run."""
  pairs = [(s, study.eval_fd("debias", s), study.eval_fd("constant", s)) for s in study.steps]
  pairs = [(s, d, c) for s, d, c in pairs if d is not None and c is not None]
  if not pairs:
    return None
  lower = sum(d < c for _, d, c in pairs)
  beyond = sum(c - d > (noise or 0.0) for _, d, c in pairs)
  _, d_last, c_last = pairs[-1]
  reach = next((s for s, d, _ in pairs if d <= c_last), None)
  measured = (f"debias lower at {lower} of {len(pairs)} checkpoints ({beyond} by more than the noise); last: "
              f"{fmt(d_last)} vs {fmt(c_last)}; debias reaches constant's final FD "
              + (f"at step {reach} ({100 * reach / study.steps[-1]:.0f}% of the budget)" if reach is not None
                 else "at no checkpoint"))
  verdict = ("agrees" if beyond > len(pairs) / 2 and c_last - d_last > (noise or 0.0) else
             "within noise" if abs(c_last - d_last) <= (noise or 0.0) else "does not agree")
  return ["training efficiency: debias < constant at equal iterations",
          "FID lower at every checkpoint; debias at ≈40% of the iterations matches constant at 100%",
          measured, verdict]


def _sampling_efficiency(study: StudyResults, noise: float | None) -> list[str] | None:
  """debias against constant at every sampler setting of the sweep, on the last checkpoint."""
  sweep = [(s, n, study.metric("debias", study.last, s, n), study.metric("constant", study.last, s, n))
           for s, n in study.sweep]
  sweep = [x for x in sweep if x[2] is not None and x[3] is not None]
  if not sweep:
    return None
  lower = sum(d < c for *_, d, c in sweep)
  beyond = sum(c - d > (noise or 0.0) for *_, d, c in sweep)
  fewest = min(sweep, key=lambda x: int(x[1]))
  measured = (f"debias lower at {lower} of {len(sweep)} sampler settings ({beyond} by more than the noise); "
              f"fewest steps ({fewest[0]} {fewest[1]}): {fmt(fewest[2])} vs {fmt(fewest[3])}")
  verdict = "agrees" if beyond > len(sweep) / 2 else ("does not agree" if lower < len(sweep) / 2
                                                      else "within noise")
  return ["sampling efficiency: debias < constant at every number of steps",
          "FID lower at 20–1000 steps, most at few steps", measured, verdict]


def _ranking(study: StudyResults) -> list[str] | None:
  """The order of the eps weightings by the metric at the last checkpoint."""
  weightings = [n for n in ("constant", "p2", "min_snr", "debias") if n in study.names]
  values = {n: study.eval_fd(n, study.last) for n in weightings}
  if len(weightings) < 3 or any(v is None for v in values.values()):
    return None
  order = sorted(values, key=values.get)
  measured = " < ".join(f"{n} ({fmt(values[n])})" for n in order)
  verdict = ("agrees" if order[0] == "debias" and order[-1] == "constant" else
             "partly" if order[0] == "debias" or order[-1] == "constant" else "does not agree")
  return ["ranking of the ε weightings at the last checkpoint", "debias < P2 ≈ Min-SNR < constant", measured,
          verdict]


def _bias_verdicts(study: StudyResults) -> list[list[str]]:
  """debias against constant in the bias study: x0 error at high noise, and on the mixture the exact bias and the
  exact sample quality."""
  rows = []
  high = [study.band_mean(n, "x0_mse", None, HIGH_NOISE_SNR) for n in ("debias", "constant")]
  low = [study.band_mean(n, "x0_mse", LOW_NOISE_SNR, None) for n in ("debias", "constant")]
  if None not in high:
    measured = (f"SNR < {HIGH_NOISE_SNR}: {fmt(high[0])} vs {fmt(high[1])}" +
                (f"; SNR ≥ {LOW_NOISE_SNR}: {fmt(low[0])} vs {fmt(low[1])}" if None not in low else ""))
    rows.append(["x0 error at high noise: debias < constant", "clearly lower at SNR < 0.1, similar at low noise",
                 measured, "agrees" if high[0] < high[1] else "does not agree"])
  if not study.exact:
    return rows
  bias = [study.band_mean(n, "bias_mse", None, HIGH_NOISE_SNR) for n in ("debias", "constant")]
  if None not in bias:
    rows.append(["exact bias at high noise (mixture): debias < constant",
                 "the bias lives at high noise; debias removes most of it",
                 f"SNR < {HIGH_NOISE_SNR}: {fmt(bias[0])} vs {fmt(bias[1])}", direction(*bias)])
  mmd = [(study.color_row(n, study.eval_name, int(study.eval_steps)) or {}).get("mmd") for n in ("debias", "constant")]
  if None not in mmd:
    rows.append(["exact sample quality (mixture): debias < constant", "better samples",
                 f"MMD² ({study.eval_name} {study.eval_steps}): {fmt(mmd[0])} vs {fmt(mmd[1])}", direction(*mmd)])
  return rows


def _colour_shift(study: StudyResults) -> list[str] | None:
  """debias against constant: the mean RMS colour shift of samples with few sampling steps."""
  shifts = {}
  for name in ("debias", "constant"):
    result = study.analysis.get((name, study.last))
    if result:
      few = [rms(r["channel_shift"]) for curve in result["color_shift"]["samplers"].values() for r in curve
             if int(r["steps"]) <= FEW_STEPS]
      if few:
        shifts[name] = float(np.mean(few))
  if len(shifts) < 2:
    return None
  return [f"colour shift with ≤ {FEW_STEPS} sampling steps: debias < constant",
          "constant: strong colour casts; debias: natural colour at every step count",
          f"mean RMS shift (0–255): {fmt(shifts['debias'])} vs {fmt(shifts['constant'])}",
          direction(shifts["debias"], shifts["constant"])]


def _target_invariance(study: StudyResults, noise: float | None) -> list[str] | None:
  """The debias objective trained as v-prediction against the same as eps-prediction."""
  v, d = study.eval_fd("v", study.last), study.eval_fd("debias", study.last)
  if v is None or d is None:
    return None
  return ["target invariance: the debias objective as v-prediction ≈ as ε-prediction",
          "the weight, not the target, matters", f"{fmt(v)} vs {fmt(d)}",
          _compare_pair(v, d, noise) if _compare_pair(v, d, noise) == "within noise" else
          "differs beyond noise" if noise is not None else "differs (noise unknown)"]


def verdicts(study: StudyResults) -> list[list[str]]:
  """[claim, paper, measured, verdict] rows, computed from the numbers."""
  noise = study.fd_noise()
  have = set(study.names)
  both = {"constant", "debias"} <= have
  rows = [_training_efficiency(study, noise), _sampling_efficiency(study, noise)] if both else []
  rows.append(_ranking(study))
  if both:
    rows += _bias_verdicts(study) + [_colour_shift(study)]
  if {"v", "debias"} <= have:
    rows.append(_target_invariance(study, noise))
  return [row for row in rows if row is not None]


NOT_REPRODUCED = """\
What this study is not: the paper trains the 93M-parameter lightweight ADM for 200k–1M iterations on 256 px faces
and scores FID-10k with Inception-v3. Here every arm is a small UNet trained for a few hundred to a few thousand
iterations on CPU-sized offline data, scored by a Fréchet distance in a stand-in feature space (digits,
photo_patches) or pixel space with exact likelihood/MMD/bias (Gaussian mixture), from one training seed and a few
hundred samples. Absolute numbers are not comparable with the paper's; only the directions of the differences
are, and only where they exceed the sampling noise shown above. DPM-Solver and UniPC, the 1M-iteration training
curve and several training seeds are not part of these presets (the first two are one config line away:
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
          f"(`{c.data.name}`, {c.data.image_size}×{c.data.image_size}×{c.data.channels}), seed {study.seed}, "
          f"model ({c.model.model_channels} channels, channel_mult {tuple(c.model.channel_mult)}, learned "
          f"variances: {bool(c.model.learn_sigma)}), optimiser (AdamW lr {c.optim.learning_rate:g}, batch "
          f"{c.train.batch_size}, EMA {tuple(c.ema_rates)}) and {c.train.num_steps} iterations; "
          f"{c.diffusion.schedule} schedule, T = {c.diffusion.num_timesteps}.")


def _verdicts_section(study: StudyResults) -> str:
  noise = study.fd_noise()
  lines = ["## Verdicts\n",
           "Each claim of the paper against this run's numbers (debias vs constant unless stated). The Fréchet "
           "distance's own sampling noise, |FD(seed) − FD(2nd seed)| of the same checkpoint maximised over the arms, "
           f"is **{fmt(noise)}**" + (f"; {study.num_samples} real examples score **{fmt(study.floor.get('fid'))}** "
                                     f"(the floor at this sample count"
                                     + ("" if study.floor.get("independent_of_reference") else
                                        ", drawn from the reference set so slightly optimistic") + ")"
                                     if study.floor else "") + ".\n"]
  rows = verdicts(study)
  lines.append(markdown_table(["claim", "paper", "measured (debias vs constant)", "verdict"], rows) if rows
               else "No results yet.")
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
                                for name in (study.analysis.get((n, study.last)) or {}).get("color_shift", {})
                                .get("samplers", {})))
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
