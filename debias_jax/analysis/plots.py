"""Figures of the bias study, drawn with matplotlib's Agg canvas (no display, no global backend switch).

Each function takes the JSON-ready rows that `study` writes and returns an RGB uint8 array (H, W, 3), which
`pixels.save_png` writes as a PNG and `summaries` writes to TensorBoard.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_CHANNEL_COLOURS = {3: ("tab:red", "tab:green", "tab:blue"), 1: ("black",)}


def _colours(num_channels: int):
  return _CHANNEL_COLOURS.get(num_channels, [f"C{c}" for c in range(num_channels)])


def render(figure: Figure) -> np.ndarray:
  canvas = FigureCanvasAgg(figure)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def x0_error_figure(rows: list[dict], title: str = "", data_variance: float | None = None) -> np.ndarray:
  """Left: per-pixel x0 MSE (and, against the exact posterior mean, bias and Bayes error) vs SNR, log-log, with
  the data variance (the error of predicting the data mean, an ideal denoiser's limit as SNR -> 0) as a line.
  Right: eps MSE vs SNR. Each point is a t bucket at its geometric-mean SNR."""
  snr = np.array([r["snr_geomean"] for r in rows])
  figure = Figure(figsize=(10, 4), dpi=100)
  left, right = figure.subplots(1, 2)
  left.loglog(snr, [r["x0_mse"] for r in rows], "o-", label="E|x0_hat - x0|^2 (model vs data)")
  if "bias_mse" in rows[0]:
    left.loglog(snr, np.maximum([r["bias_mse"] for r in rows], 1e-12), "s-", label="E|x0_hat - E[x0|x_t]|^2 (bias)")
    left.loglog(snr, [r["bayes_mse"] for r in rows], "k--", label="E|E[x0|x_t] - x0|^2 (optimal)")
  if data_variance is not None:
    left.axhline(data_variance, color="grey", ls=":", label="data variance (predicting the mean)")
  left.set_xlabel("SNR(t) (bucket geometric mean)")
  left.set_ylabel("per-pixel MSE of x0 estimate")
  left.legend(fontsize=8)
  left.grid(True, which="both", alpha=0.3)
  right.loglog(snr, [r["eps_mse"] for r in rows], "o-", color="tab:orange")
  right.set_xlabel("SNR(t)")
  right.set_ylabel("per-pixel MSE of eps estimate")
  right.grid(True, which="both", alpha=0.3)
  figure.suptitle(title or "x0 and eps error per noise level")
  figure.tight_layout()
  return render(figure)


def signed_error_figure(rows: list[dict], title: str = "") -> np.ndarray:
  """Signed per-channel mean error E[x0_hat - x0] (solid) and, where known, E[x0_hat - E[x0|x_t]] (dashed) vs t."""
  t = np.array([(r["t_min"] + r["t_max"]) / 2 for r in rows])
  signed = np.array([r["x0_signed"] for r in rows])
  colours = _colours(signed.shape[1])
  figure = Figure(figsize=(6, 4), dpi=100)
  axis = figure.subplots()
  for c in range(signed.shape[1]):
    axis.plot(t, signed[:, c], "o-", color=colours[c], label=f"channel {c}: x0_hat - x0")
    if "bias_signed" in rows[0]:
      axis.plot(t, np.array([r["bias_signed"] for r in rows])[:, c], "s--", color=colours[c],
                label=f"channel {c}: x0_hat - E[x0|x_t]")
  axis.axhline(0.0, color="grey", lw=0.8)
  axis.set_xlabel("timestep t (bucket centre)")
  axis.set_ylabel("signed mean error ([-1, 1] units)")
  axis.legend(fontsize=7)
  axis.grid(True, alpha=0.3)
  figure.suptitle(title or "signed per-channel x0 error")
  figure.tight_layout()
  return render(figure)


def color_shift_figure(curves: dict[str, list[dict]], title: str = "") -> np.ndarray:
  """Left: per-channel mean shift of samples (and R-G / B-G shifts for RGB), 0-255 scale, vs sampling steps.
  Right: Fréchet distance between the per-image channel-mean distributions (and MMD on the mixture) vs steps.
  curves: name (e.g. 'ddim' or 'ddim (exact denoiser)') -> rows with 'steps' and colour_shift's entries."""
  figure = Figure(figsize=(10, 4), dpi=100)
  left, right = figure.subplots(1, 2)
  styles = ["o-", "s--", "^-.", "v:", "d-"]
  for k, (name, rows) in enumerate(curves.items()):
    steps = np.array([r["steps"] for r in rows])
    style = styles[k % len(styles)]
    shift = np.array([r["channel_shift"] for r in rows])
    colours = _colours(shift.shape[1])
    for c in range(shift.shape[1]):
      left.semilogx(steps, shift[:, c], style, color=colours[c], label=f"{name}: channel {c}")
    if "b_minus_g_shift" in rows[0]:
      left.semilogx(steps, [r["b_minus_g_shift"] for r in rows], style, color="tab:purple", label=f"{name}: B-G")
      left.semilogx(steps, [r["r_minus_g_shift"] for r in rows], style, color="tab:brown", label=f"{name}: R-G")
    right.loglog(steps, np.maximum([r["channel_fd"] for r in rows], 1e-6), style, color=f"C{k}",
                 label=f"{name}: channel-mean FD")
    if "mmd" in rows[0]:
      right.loglog(steps, np.maximum([r["mmd"] for r in rows], 1e-6), style, color=f"C{k}", alpha=0.5,
                   label=f"{name}: MMD^2 to data")
  left.axhline(0.0, color="grey", lw=0.8)
  left.set_xlabel("sampling steps")
  left.set_ylabel("shift of mean vs data (0-255)")
  left.legend(fontsize=6)
  left.grid(True, which="both", alpha=0.3)
  right.set_xlabel("sampling steps")
  right.set_ylabel("distance to data")
  right.legend(fontsize=6)
  right.grid(True, which="both", alpha=0.3)
  figure.suptitle(title or "colour / mean shift of samples vs sampling steps")
  figure.tight_layout()
  return render(figure)

