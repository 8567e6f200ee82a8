"""Fast multistep ODE samplers: DPM-Solver, DPM-Solver++ and UniPC on discrete-time DDPM schedules.

Continuous time, as in the reference implementations (LuChengTHU/dpm-solver, wl-zhao/UniPC, NoiseScheduleVP
'discrete'): step n of a chain trained on N steps sits at t = (n + 1) / N, log alpha_t is piecewise linear in t
between steps, sigma_t = sqrt(1 - alpha_t^2), lambda_t = log(alpha_t / sigma_t), and the network is called at the
original timestep t_in = N t - 1 (the references' (t - 1/N) * 1000 for N = 1000; not an integer in general).
Sampling integrates the probability-flow ODE from the last step (t = 1) to the first (t = 1/N) and returns x there,
like the references (`denoise_to_zero` adds their optional final x0 prediction).

Everything that depends only on the time grid (alpha, sigma, lambda and every solver coefficient) is computed once
on the host in float64. Each update is then a fixed linear combination of x, the last few model outputs and, for
UniPC's corrector, the newest one, so the device program is one `lax.scan` with one model call per step
(`steps` = number of model evaluations, NFE, as in the references).

Samplers (samplers.SAMPLERS names them; options after `steps`):
  "dpm_solver++": data-prediction multistep DPM-Solver++ (2M with order=2, 3M with order=3).
  "dpm_solver":   noise-prediction multistep DPM-Solver (order 2 by default: the paper's DPM-Solver setting).
  "unipc":        multistep UniPC, predictor UniP-p plus corrector UniC (order 3, variant "bh1" = B(h) = h, data
                  prediction: the paper's setting; "bh2" is B(h) = e^h - 1).

Options (all keyword): order (1-3); skip_type "time_uniform" (the paper's), "logSNR" or "time_quadratic";
lower_order_final (True: DPM-Solver lowers the last orders below 10 steps, UniPC always, as each reference does);
clip_lambda (DPM-Solver -5.1, UniPC None, as the references); solver_type "dpmsolver" | "taylor" (DPM-Solver);
variant "bh1" | "bh2" and prediction "data" | "noise" (UniPC); thresholding "static" (clip to [-1, 1]) or
"dynamic" (the references' quantile thresholding), used when clip_x0; denoise_to_zero (one more evaluation).
Note: the references' 3M formula gives the second-derivative term half its Taylor weight and converges at order 2;
solver_type="taylor" with order=3 uses the full weight and converges at order 3 or better.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.diffusion import reverse
from debias_jax.diffusion.schedules import Schedule

SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")
THRESHOLDINGS = ("static", "dynamic")
UNIPC_VARIANTS = ("bh1", "bh2")
DPM_SOLVER_TYPES = ("dpmsolver", "taylor")
PREDICTIONS = ("data", "noise")
MAX_ORDER = 3


# ----------------------------------------------------------------------------------------------------------------
# The continuous-time view of a discrete schedule (host, float64).


@dataclasses.dataclass(frozen=True, eq=False)
class DiscreteTimeVP:
  """log alpha_t piecewise linear in t through the knots t_n = (timestep_n + 1) / N of a discrete chain."""
  knot_times: np.ndarray
  knot_log_alphas: np.ndarray
  num_train_timesteps: int

  @classmethod
  def from_schedule(cls, schedule: Schedule, clip_lambda: float | None = None) -> "DiscreteTimeVP":
    """The schedule's steps as knots; `clip_lambda` drops the noisiest steps whose lambda is below it.

    The reference DPM-Solver drops them (lambda < -5.1, only the last 4 steps of the cosine schedule, none of
    the linear one) for numerical stability; we keep the surviving steps at their own times, so the model is
    still called at its true timesteps (the reference rescales time instead, which shifts them; see the report).
    """
    n = schedule.num_train_timesteps
    times = (np.asarray(schedule.timesteps, np.float64) + 1.0) / n
    log_alphas = 0.5 * np.log(schedule.alphas_cumprod)
    if clip_lambda is not None:
      keep = _lambda_from_log_alpha(log_alphas) >= clip_lambda
      times, log_alphas = times[keep], log_alphas[keep]
    if len(times) < 2 or np.any(np.diff(log_alphas) >= 0):
      raise ValueError(f"A solver needs at least two steps of strictly decreasing alpha_bar (after clip_lambda="
                       f"{clip_lambda}); pass the full training schedule, or a lower clip_lambda (or None).")
    return cls(times, log_alphas, n)

  @property
  def t_start(self) -> float:
    return float(self.knot_times[-1])

  @property
  def t_end(self) -> float:
    return float(self.knot_times[0])

  def log_alpha(self, t):
    return np.interp(t, self.knot_times, self.knot_log_alphas)

  def lambda_(self, t):
    return _lambda_from_log_alpha(self.log_alpha(t))

  def inverse_lambda(self, lam):
    log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, np.float64))
    return np.interp(log_alpha, self.knot_log_alphas[::-1], self.knot_times[::-1])

  def model_time(self, t):
    """The network's (original, possibly fractional) timestep at continuous time t."""
    return np.asarray(t, np.float64) * self.num_train_timesteps - 1.0


def _lambda_from_log_alpha(log_alpha):
  return log_alpha - 0.5 * np.log(-np.expm1(2.0 * log_alpha))


def time_grid(vp: DiscreteTimeVP, steps: int, skip_type: str = "time_uniform") -> np.ndarray:
  """steps + 1 decreasing times from vp.t_start to vp.t_end, spaced as the references' `get_time_steps`."""
  t_start, t_end = vp.t_start, vp.t_end
  if skip_type == "time_uniform":
    return np.linspace(t_start, t_end, steps + 1)
  if skip_type == "logSNR":
    return vp.inverse_lambda(np.linspace(vp.lambda_(t_start), vp.lambda_(t_end), steps + 1))
  if skip_type == "time_quadratic":
    return np.linspace(math.sqrt(t_start), math.sqrt(t_end), steps + 1) ** 2
  raise ValueError(f"Unknown skip_type {skip_type!r}; valid: {', '.join(SKIP_TYPES)}.")


@dataclasses.dataclass(frozen=True)
class _Grid:
  """alpha, sigma and lambda at the grid points (index 0 = start, pure noise)."""
  times: np.ndarray
  model_times: np.ndarray
  log_alphas: np.ndarray
  alphas: np.ndarray
  sigmas: np.ndarray
  lambdas: np.ndarray

  @classmethod
  def build(cls, vp: DiscreteTimeVP, times: np.ndarray) -> "_Grid":
    log_alphas = vp.log_alpha(times)
    return cls(times, vp.model_time(times), log_alphas, np.exp(log_alphas),
               np.sqrt(-np.expm1(2.0 * log_alphas)), _lambda_from_log_alpha(log_alphas))


# ----------------------------------------------------------------------------------------------------------------
# Solver coefficients (host, float64). A step to grid point n is x_n = coef_x * x_{n-1} + history . m, with m the
# model outputs at grid points n-1, n-2, n-3 (x0 for data prediction, eps for noise prediction).


def _phi(k: int, z: float) -> float:
  """phi_k(z) = sum_j z^j / (j + k)!, the exponential-integrator functions (phi_0 = e^z), accurate at small z."""
  if abs(z) < 1.0:
    return sum(z ** j / math.factorial(j + k) for j in range(30))
  value = math.exp(z)
  for j in range(k):
    value = (value - 1.0 / math.factorial(j)) / z
  return value


def _exponential_base(grid: _Grid, n: int, data_prediction: bool):
  """(coefficient of x, signed scale of the integral terms, phi argument z, lambda step h) from n-1 to n.

  Data prediction: x_n = sigma_n/sigma_{n-1} x + alpha_n sum_k h^(k+1) phi_(k+1)(-h) x0^(k);
  noise prediction: x_n = alpha_n/alpha_{n-1} x - sigma_n sum_k h^(k+1) phi_(k+1)(h) eps^(k), with h the lambda
  step and ^(k) the k-th derivative in lambda at grid point n-1.
  """
  h = grid.lambdas[n] - grid.lambdas[n - 1]
  if data_prediction:
    return grid.sigmas[n] / grid.sigmas[n - 1], grid.alphas[n], -h, h
  return math.exp(grid.log_alphas[n] - grid.log_alphas[n - 1]), -grid.sigmas[n], h, h


def _dpm_solver_step(grid: _Grid, n: int, order: int, data_prediction: bool, solver_type: str):
  """Multistep DPM-Solver(++) of `order` from grid point n-1 to n, as (coef_x, history coefficients)."""
  coef_x, scale, z, h = _exponential_base(grid, n, data_prediction)
  m = np.eye(MAX_ORDER)  # m[i]: the model output at grid point n-1-i
  lam = grid.lambdas
  terms = h * _phi(1, z) * m[0]
  if order >= 2:
    r0 = (lam[n - 1] - lam[n - 2]) / h
    d1_0 = (m[0] - m[1]) / r0  # ~ h f'
  if order == 2:
    # "dpmsolver": h phi_1 / 2 in place of h phi_2 (the reference's default); "taylor": the Taylor coefficient.
    terms = terms + (0.5 * h * _phi(1, z) if solver_type == "dpmsolver" else h * _phi(2, z)) * d1_0
  elif order == 3:
    r1 = (lam[n - 2] - lam[n - 3]) / h
    d1_1 = (m[1] - m[2]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)  # ~ h f'
    d2 = (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 f'' / 2
    # The references weight d2 by h phi_3, half the Taylor coefficient 2 h phi_3 of h^2 f''/2, so their 3M is
    # formally second order; "taylor" uses the exact coefficient (third order).
    d2_weight = h * _phi(3, z) * (1.0 if solver_type == "dpmsolver" else 2.0)
    terms = terms + h * _phi(2, z) * d1 + d2_weight * d2
  return coef_x, scale * terms


def _unipc_step(grid: _Grid, n: int, order: int, data_prediction: bool, variant: str):
  """UniPC step of `order` (B(h) family) from grid point n-1 to n.

  Returns (coef_x, predictor history coefficients, corrector history coefficients, corrector coefficient of the
  model output at grid point n evaluated at the predicted x_n).
  """
  coef_x, _, _, h = _exponential_base(grid, n, data_prediction)
  hh = -h if data_prediction else h
  outer = grid.alphas[n] if data_prediction else grid.sigmas[n]
  b_h = hh if variant == "bh1" else math.expm1(hh)
  m = np.eye(MAX_ORDER)
  lam = grid.lambdas
  # Nodes r_i of the earlier model outputs in units of the step, and their differences D_i ~ h f'.
  rks = np.array([(lam[n - 1 - i] - lam[n - 1]) / h for i in range(1, order)] + [1.0])
  diffs = [(m[i] - m[0]) / rks[i - 1] for i in range(1, order)]
  vander = np.stack([rks ** i for i in range(order)])
  rhs = np.array([math.factorial(i) * hh * _phi(i + 1, hh) / b_h for i in range(1, order + 1)])
  base = -outer * math.expm1(hh) * m[0]

  predictor = base.copy()
  if order >= 2:
    rhos_p = np.array([0.5]) if order == 2 else np.linalg.solve(vander[:-1, :-1], rhs[:-1])
    predictor -= outer * b_h * sum(rho * d for rho, d in zip(rhos_p, diffs))
  rhos_c = np.array([0.5]) if order == 1 else np.linalg.solve(vander, rhs)
  corrector = base - outer * b_h * (sum((rho * d for rho, d in zip(rhos_c[:-1], diffs)), np.zeros(MAX_ORDER))
                                    - rhos_c[-1] * m[0])
  return coef_x, predictor, corrector, -outer * b_h * rhos_c[-1]


@dataclasses.dataclass(frozen=True)
class SolverPlan:
  """Everything the device loop needs, per grid point n = 0 .. steps - 1 (float64 host arrays).

  At row n the model is evaluated at grid point n; the corrector (UniPC, rows n >= 1) turns x_{n-1} into x_n
  with that output; the predictor then moves x_n to grid point n + 1.
  """
  times: np.ndarray  # (steps + 1,) continuous times of the grid
  model_times: np.ndarray  # (steps,) network timesteps of the model evaluations
  alphas: np.ndarray  # (steps + 1,)
  sigmas: np.ndarray  # (steps + 1,)
  orders: tuple[int, ...]  # order of the step to grid point n, n = 1 .. steps
  pred_x: np.ndarray  # (steps,)
  pred_history: np.ndarray  # (steps, history)
  corr_x: np.ndarray | None = None  # (steps,)
  corr_history: np.ndarray | None = None  # (steps, history)
  corr_new: np.ndarray | None = None  # (steps,)


def _step_orders(steps: int, order: int, lower_order_final: bool, final_threshold: int | None) -> list[int]:
  """Warm-up with orders 1 .. order-1, then `order`; with lower_order_final the last steps drop order as well."""
  orders = []
  for n in range(1, steps + 1):
    step_order = min(order, n)
    if n >= order and lower_order_final and (final_threshold is None or steps < final_threshold):
      step_order = min(order, steps + 1 - n)
    orders.append(step_order)
  return orders


def dpm_solver_plan(vp: DiscreteTimeVP, steps: int, order: int = 2, skip_type: str = "time_uniform",
                    data_prediction: bool = True, lower_order_final: bool = True,
                    solver_type: str = "dpmsolver") -> SolverPlan:
  """Coefficients of multistep DPM-Solver++ (data prediction) or DPM-Solver (noise prediction)."""
  grid = _Grid.build(vp, time_grid(vp, steps, skip_type))
  # The reference lowers the final orders only below 10 steps (its docstring says 15).
  orders = _step_orders(steps, order, lower_order_final, final_threshold=10)
  pred_x, pred_history = np.zeros(steps), np.zeros((steps, order))
  for n, step_order in enumerate(orders, start=1):
    coef_x, history = _dpm_solver_step(grid, n, step_order, data_prediction, solver_type)
    pred_x[n - 1], pred_history[n - 1] = coef_x, _fit(history, order)
  return SolverPlan(grid.times, grid.model_times[:-1], grid.alphas, grid.sigmas, tuple(orders), pred_x,
                    pred_history)


def unipc_plan(vp: DiscreteTimeVP, steps: int, order: int = 3, skip_type: str = "time_uniform",
               data_prediction: bool = True, lower_order_final: bool = True, variant: str = "bh1") -> SolverPlan:
  """Coefficients of multistep UniPC: UniP-`order` predictor, UniC corrector at every step but the last."""
  grid = _Grid.build(vp, time_grid(vp, steps, skip_type))
  orders = _step_orders(steps, order, lower_order_final, final_threshold=None)
  pred_x, pred_history = np.zeros(steps), np.zeros((steps, order))
  corr_x, corr_history, corr_new = np.ones(steps), np.zeros((steps, order)), np.zeros(steps)
  for n, step_order in enumerate(orders, start=1):
    coef_x, predictor, corrector, new = _unipc_step(grid, n, step_order, data_prediction, variant)
    pred_x[n - 1], pred_history[n - 1] = coef_x, _fit(predictor, order)
    if n < steps:  # No corrector after the last step: it would cost one more model evaluation.
      corr_x[n], corr_history[n], corr_new[n] = coef_x, _fit(corrector, order), new
  return SolverPlan(grid.times, grid.model_times[:-1], grid.alphas, grid.sigmas, tuple(orders), pred_x,
                    pred_history, corr_x, corr_history, corr_new)


def _fit(coefficients: np.ndarray, width: int) -> np.ndarray:
  assert not np.any(coefficients[width:]), "a step used a model output older than its history"
  return coefficients[:width]


# ----------------------------------------------------------------------------------------------------------------
# The device side.


def _static_threshold(x0):
  return jnp.clip(x0, -1.0, 1.0)


def _dynamic_threshold(x0, ratio: float = 0.995, max_value: float = 1.0):
  """Imagen's dynamic thresholding as the references implement it (per-example quantile of |x0|, at least 1)."""
  s = jnp.quantile(jnp.abs(x0).reshape(x0.shape[0], -1), ratio, axis=1)
  s = jnp.maximum(s, max_value).reshape((-1,) + (1,) * (x0.ndim - 1))
  return jnp.clip(x0, -s, s) / s


def make_prediction_fn(model_fn, target: str, var_type: str, data_prediction: bool, clip_x0: bool,
                       thresholding: str = "static"):
  """predict(x, t_in, alpha, sigma) -> x0 (data) or eps (noise) at one continuous time, from any target.

  With clip_x0 the x0 estimate is thresholded first; in noise mode eps is then recomputed from the clipped x0 (as
  the paper authors' DPM-Solver does; the upstream reference never clips noise predictions).
  """
  learn_sigma = var_type == "learned_range"
  threshold = _static_threshold if thresholding == "static" else _dynamic_threshold

  def predict(x, t_in, alpha, sigma):
    t = jnp.full((x.shape[0],), t_in, x.dtype)
    output = jnp.asarray(model_fn(x, t)).astype(x.dtype)
    channels = x.shape[-1] * (2 if learn_sigma else 1)
    if output.shape != x.shape[:-1] + (channels,):
      raise ValueError(f"The model output has shape {output.shape} for x of shape {x.shape}; with var_type="
                       f"{var_type!r} it must have {'2C' if learn_sigma else 'C'} = {channels} channels.")
    prediction, _ = reverse.split_output(output, learn_sigma)
    if not data_prediction and not clip_x0:
      if target == "eps":
        return prediction
      if target == "x0":
        return (x - alpha * prediction) / sigma
      return sigma * x + alpha * prediction  # v
    if target == "x0":
      x0 = prediction
    elif target == "eps":
      x0 = (x - sigma * prediction) / alpha
    else:  # v
      x0 = alpha * x - sigma * prediction
    if clip_x0:
      x0 = threshold(x0)
    return x0 if data_prediction else (x - alpha * x0) / sigma

  return predict


def plan_rows(plan: SolverPlan, dtype=jnp.float32) -> dict:
  """The per-step arrays that `integrate` scans over; the corrector rows exist only for UniPC."""
  c = lambda a: jnp.asarray(a, dtype)
  rows = {"t_in": c(plan.model_times), "alpha": c(plan.alphas[:-1]), "sigma": c(plan.sigmas[:-1]),
          "pred_x": c(plan.pred_x), "pred_history": c(plan.pred_history)}
  if plan.corr_x is not None:
    rows.update(corr_x=c(plan.corr_x), corr_history=c(plan.corr_history), corr_new=c(plan.corr_new))
  return rows


def integrate(rows: dict, predict, x_T):
  """Integrates from x_T with one model evaluation per row in one lax.scan; returns x at the last grid point.

  Row n evaluates the model at grid point n (the predicted x_n), applies the corrector if there is one, and
  predicts x_{n+1}. Unused history slots hold zeros with zero coefficients, so warm-up steps need no special case.
  """
  x_T = jnp.asarray(x_T, rows["pred_x"].dtype)
  width = rows["pred_history"].shape[1]
  corrector = "corr_x" in rows

  def combine(coef_x, x, coefs, history):
    return coef_x * x + jnp.tensordot(coefs, history, axes=1)

  def body(carry, row):
    x, x_eval, history = carry  # x_{n-1}, the predicted x_n, model outputs at n-1, n-2, ...
    output = predict(x_eval, row["t_in"], row["alpha"], row["sigma"])
    if corrector:  # Row 0 is the identity: x_0 = x_T.
      x = combine(row["corr_x"], x, row["corr_history"], history) + row["corr_new"] * output
    else:
      x = x_eval
    history = jnp.concatenate([output[None], history[:-1]], axis=0)
    return (x, combine(row["pred_x"], x, row["pred_history"], history), history), None

  history = jnp.zeros((width,) + x_T.shape, x_T.dtype)
  (_, x, _), _ = jax.lax.scan(body, (x_T, x_T, history), rows)
  return x


# ----------------------------------------------------------------------------------------------------------------
# Registration.


def _parse_steps(steps) -> int:
  if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
    value = int(steps)
  elif isinstance(steps, str) and steps.strip().isdigit():
    value = int(steps.strip())
  else:
    raise ValueError(f"The multistep solvers take the number of model evaluations as an int or a numeric string "
                     f"like '20'; got {steps!r} (respacing strings such as 'ddim50' or '10,15,20' are for ddpm/ddim).")
  if value < 1:
    raise ValueError(f"steps must be at least 1; got {value}.")
  return value


def _check_choice(name: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f"Unknown {name} {value!r}; valid: {', '.join(map(str, valid))}.")


def _check_order(order, steps: int) -> int:
  if order not in (1, 2, 3):
    raise ValueError(f"order must be 1, 2 or 3; got {order!r}.")
  if steps < order:
    raise ValueError(f"A multistep solver of order {order} needs at least {order} steps; got steps={steps}. "
                     f"Use more steps or order <= {steps}.")
  return order


def _make_sampler(plan: SolverPlan, vp: DiscreteTimeVP, target, var_type, clip_x0, thresholding,
                  data_prediction: bool, denoise_to_zero: bool):
  t_end = plan.times[-1]
  alpha_end, sigma_end = plan.alphas[-1], plan.sigmas[-1]

  def sample(model_fn, x_T, rng=None):
    """Deterministic: `rng` is accepted for the common sampler signature and ignored."""
    del rng
    dtype = jnp.result_type(x_T.dtype, jnp.float32)
    predict = make_prediction_fn(model_fn, target, var_type, data_prediction, clip_x0, thresholding)
    x = integrate(plan_rows(plan, dtype), predict, x_T)
    if denoise_to_zero:  # One more model evaluation: the x0 prediction at the final time.
      denoise = make_prediction_fn(model_fn, target, var_type, True, clip_x0, thresholding)
      x = denoise(x, vp.model_time(t_end), alpha_end, sigma_end)
    return x

  sample.plan = plan
  return sample


def _dpm_solver_factory(data_prediction: bool, default_order: int):

  def factory(schedule: Schedule, steps, *, target, var_type, clip_x0, order: int = default_order,
              skip_type: str = "time_uniform", lower_order_final: bool = True, solver_type: str = "dpmsolver",
              clip_lambda: float | None = -5.1, thresholding: str = "static", denoise_to_zero: bool = False):
    steps = _parse_steps(steps)
    _check_order(order, steps)
    _check_choice("skip_type", skip_type, SKIP_TYPES)
    _check_choice("solver_type", solver_type, DPM_SOLVER_TYPES)
    _check_choice("thresholding", thresholding, THRESHOLDINGS)
    vp = DiscreteTimeVP.from_schedule(schedule, clip_lambda)
    plan = dpm_solver_plan(vp, steps, order, skip_type, data_prediction, lower_order_final, solver_type)
    return _make_sampler(plan, vp, target, var_type, clip_x0, thresholding, data_prediction, denoise_to_zero)

  return factory


dpm_solver_pp_sampler = _dpm_solver_factory(True, 2)
dpm_solver_pp_sampler.__doc__ = """Multistep DPM-Solver++ (data prediction); order 2 = 2M, 3 = 3M."""
dpm_solver_sampler = _dpm_solver_factory(False, 2)
dpm_solver_sampler.__doc__ = """Multistep DPM-Solver (noise prediction), order 2 as in the paper."""


def unipc_sampler(schedule: Schedule, steps, *, target, var_type, clip_x0, order: int = 3, variant: str = "bh1",
                  prediction: str = "data", skip_type: str = "time_uniform", lower_order_final: bool = True,
                  clip_lambda: float | None = None, thresholding: str = "static", denoise_to_zero: bool = False):
  """Multistep UniPC (UniP + UniC): order 3, bh1 (B(h) = h), data prediction by default, as the paper used."""
  steps = _parse_steps(steps)
  _check_order(order, steps)
  _check_choice("variant", variant, UNIPC_VARIANTS)
  _check_choice("prediction", prediction, PREDICTIONS)
  _check_choice("skip_type", skip_type, SKIP_TYPES)
  _check_choice("thresholding", thresholding, THRESHOLDINGS)
  vp = DiscreteTimeVP.from_schedule(schedule, clip_lambda)
  data_prediction = prediction == "data"
  plan = unipc_plan(vp, steps, order, skip_type, data_prediction, lower_order_final, variant)
  return _make_sampler(plan, vp, target, var_type, clip_x0, thresholding, data_prediction, denoise_to_zero)
