"""Tests of the multistep solvers on Gaussian data, whose exact denoiser and probability-flow map are known.

For x0 ~ N(mu, s^2) per pixel and x_t = alpha x0 + sigma eps, E[x0 | x_t] = mu + alpha s^2 (x_t - alpha mu) /
(alpha^2 s^2 + sigma^2), and the ODE keeps (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2) constant, so every
sample's exact end point is known. The model below reads alpha at its (fractional) timestep from the same
piecewise-linear log-alpha table the solvers use, so it is the exact denoiser of the process they integrate.
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.diffusion import samplers
from debias_jax.diffusion import solvers
from debias_jax.diffusion.schedules import Schedule

LINEAR = Schedule.named("linear", 1000)
COSINE = Schedule.named("cosine", 1000)
PIXEL_SHAPE = (2, 2, 3)
_rng = np.random.default_rng(0)
MU = _rng.uniform(-0.5, 0.5, PIXEL_SHAPE)
STD = _rng.uniform(0.2, 0.6, PIXEL_SHAPE)


def gaussian_model(schedule, target="eps", mu=MU, std=STD, extra_channels=False):
  """The exact denoiser of N(mu, std^2) data, as a network of the given target at original timesteps."""
  log_alpha_table = 0.5 * np.log(schedule.alphas_cumprod)

  def model_fn(x, t):
    steps = jnp.arange(schedule.num_train_timesteps, dtype=x.dtype)
    log_alpha = jnp.interp(t.astype(x.dtype), steps, jnp.asarray(log_alpha_table, x.dtype)).reshape(-1, 1, 1, 1)
    alpha, var = jnp.exp(log_alpha), -jnp.expm1(2.0 * log_alpha)
    m, s = jnp.asarray(mu, x.dtype), jnp.asarray(std, x.dtype)
    x0 = m + alpha * s ** 2 * (x - alpha * m) / (alpha ** 2 * s ** 2 + var)
    eps = (x - alpha * x0) / jnp.sqrt(var)
    out = {"x0": x0, "eps": eps, "v": alpha * eps - jnp.sqrt(var) * x0}[target]
    if extra_channels:  # Learned-sigma models: C more channels that the solvers must ignore.
      out = jnp.concatenate([out, jnp.sin(37.0 * x) * 5.0], axis=-1)
    return out

  return model_fn


def exact_end(plan, x_T, mu=MU, std=STD):
  """Where the probability-flow ODE takes x_T (at the plan's first time) by its last time."""
  a0, s0, a1, s1 = plan.alphas[0], plan.sigmas[0], plan.alphas[-1], plan.sigmas[-1]
  c0, c1 = np.sqrt(a0 ** 2 * std ** 2 + s0 ** 2), np.sqrt(a1 ** 2 * std ** 2 + s1 ** 2)
  return a1 * mu + c1 * (np.asarray(x_T, np.float64) - a0 * mu) / c0


def run(name, schedule, steps, x_T, target="eps", clip_x0=False, var_type="fixed_small", model=None, **options):
  sample = samplers.get_sampler(name, schedule, steps, target=target, var_type=var_type, clip_x0=clip_x0, **options)
  model = model or gaussian_model(schedule, target, extra_channels=var_type == "learned_range")
  return np.asarray(jax.jit(lambda x: sample(model, x, jax.random.key(0)))(x_T)), sample.plan


def noise(n, seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), (n,) + PIXEL_SHAPE, dtype)


@functools.lru_cache(maxsize=None)
def _integrator(data_prediction):
  """One compiled program per prediction type and shape: the coefficients are arguments, not constants."""
  def integrate(rows, x_T):
    predict = solvers.make_prediction_fn(gaussian_model(LINEAR), "eps", "fixed_small", data_prediction, False)
    return solvers.integrate(rows, predict, x_T)
  return jax.jit(integrate)


class ContinuousTimeTest(parameterized.TestCase):

  def test_registered(self):
    for name in ("dpm_solver++", "dpm_solver", "unipc"):
      self.assertIn(name, samplers.sampler_names())

  def test_knots_reproduce_the_discrete_table(self):
    vp = solvers.DiscreteTimeVP.from_schedule(LINEAR)
    t = (np.arange(1000) + 1) / 1000
    np.testing.assert_allclose(np.exp(2 * vp.log_alpha(t)), LINEAR.alphas_cumprod, rtol=1e-13)
    np.testing.assert_allclose(vp.model_time(t), np.arange(1000), atol=1e-9)
    np.testing.assert_allclose(vp.lambda_(t), 0.5 * LINEAR.log_snr, rtol=1e-9, atol=1e-12)
    mid = np.linspace(vp.t_end, vp.t_start, 777)
    np.testing.assert_allclose(vp.inverse_lambda(vp.lambda_(mid)), mid, rtol=1e-9)
    self.assertEqual((vp.t_end, vp.t_start), (0.001, 1.0))

  def test_clip_lambda_drops_the_noisiest_cosine_steps_and_keeps_true_timesteps(self):
    lam = 0.5 * COSINE.log_snr
    vp = solvers.DiscreteTimeVP.from_schedule(COSINE, clip_lambda=-5.1)
    kept = int(np.sum(lam >= -5.1))
    self.assertLess(kept, 1000)
    self.assertAlmostEqual(vp.model_time(vp.t_start), kept - 1)
    self.assertGreaterEqual(vp.lambda_(vp.t_start), -5.1)
    # The linear schedule never goes below lambda = -5.1, so the clip changes nothing there.
    self.assertEqual(solvers.DiscreteTimeVP.from_schedule(LINEAR, -5.1).t_start, 1.0)

  @parameterized.parameters(7, 20)
  def test_time_grids(self, steps):
    vp = solvers.DiscreteTimeVP.from_schedule(LINEAR)
    uniform = solvers.time_grid(vp, steps, "time_uniform")
    np.testing.assert_allclose(vp.model_time(uniform), np.linspace(999, 0, steps + 1), atol=1e-9)
    lam = vp.lambda_(solvers.time_grid(vp, steps, "logSNR"))
    np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / steps, rtol=1e-7)
    np.testing.assert_allclose(lam[[0, -1]], vp.lambda_(np.array([1.0, 0.001])), rtol=1e-9)
    quadratic = np.sqrt(solvers.time_grid(vp, steps, "time_quadratic"))
    np.testing.assert_allclose(np.diff(quadratic), (quadratic[-1] - quadratic[0]) / steps, rtol=1e-9)
    # One model evaluation per step, at the grid's first `steps` points.
    plan = samplers.get_sampler("unipc", LINEAR, steps, target="eps").plan
    self.assertLen(plan.model_times, steps)
    np.testing.assert_allclose(plan.model_times, np.linspace(999, 0, steps + 1)[:-1], atol=1e-9)

  def test_step_orders_follow_the_references(self):
    vp = solvers.DiscreteTimeVP.from_schedule(LINEAR)
    # DPM-Solver lowers the final orders only below 10 steps; UniPC always (with lower_order_final).
    self.assertEqual(solvers.dpm_solver_plan(vp, 8, order=3).orders, (1, 2, 3, 3, 3, 3, 2, 1))
    self.assertEqual(solvers.dpm_solver_plan(vp, 12, order=3).orders, (1, 2) + (3,) * 10)
    self.assertEqual(solvers.unipc_plan(vp, 12, order=3).orders, (1, 2) + (3,) * 8 + (2, 1))
    self.assertEqual(solvers.unipc_plan(vp, 12, order=3, lower_order_final=False).orders, (1, 2) + (3,) * 10)
    self.assertEqual(solvers.dpm_solver_plan(vp, 5, order=2).orders, (1, 2, 2, 2, 1))


class CoefficientTest(parameterized.TestCase):
  """Single steps against formulas derived by hand."""

  def setUp(self):
    super().setUp()
    self.vp = solvers.DiscreteTimeVP.from_schedule(LINEAR)
    self.t = solvers.time_grid(self.vp, 6, "logSNR")
    la = self.vp.log_alpha(self.t)
    self.alpha, self.sigma, self.lam = np.exp(la), np.sqrt(1 - np.exp(2 * la)), self.vp.lambda_(self.t)

  def test_first_order_is_ddim(self):
    # DDIM: x_n = alpha_n x0 + sigma_n (x - alpha_{n-1} x0) / sigma_{n-1},
    # with x0 = (x - sigma_{n-1} eps) / alpha_{n-1} in noise mode.
    a, s = self.alpha, self.sigma
    data = solvers.dpm_solver_plan(self.vp, 6, order=1, skip_type="logSNR", data_prediction=True)
    np.testing.assert_allclose(data.pred_x, s[1:] / s[:-1], rtol=1e-12)
    np.testing.assert_allclose(data.pred_history[:, 0], a[1:] - s[1:] * a[:-1] / s[:-1], rtol=1e-10)
    eps_plan = solvers.dpm_solver_plan(self.vp, 6, order=1, skip_type="logSNR", data_prediction=False)
    np.testing.assert_allclose(eps_plan.pred_x, a[1:] / a[:-1], rtol=1e-12)
    np.testing.assert_allclose(eps_plan.pred_history[:, 0], s[1:] - a[1:] * s[:-1] / a[:-1], rtol=1e-10)

  @parameterized.parameters("bh1", "bh2")
  def test_unic_1_weight(self, variant):
    # UniC-1 adds -alpha_n B(h) rho (m_n - m_{n-1}) with rho = 1/2, B(h) = -h (bh1) or e^{-h} - 1 (bh2) (data
    # prediction, hh = -h).
    plan = solvers.unipc_plan(self.vp, 6, order=1, skip_type="logSNR", variant=variant)
    h = np.diff(self.lam)
    b_h = -h if variant == "bh1" else np.expm1(-h)
    np.testing.assert_allclose(plan.corr_new[1:], -0.5 * self.alpha[1:-1] * b_h[:-1], rtol=1e-10)
    self.assertEqual(plan.corr_new[0], 0.0)  # Row 0: x_0 = x_T.

  def test_first_order_matches_ddim_sampler(self):
    # Nine DPM-Solver-1 steps on the grid 999, 888, ..., 0 plus the final x0 prediction are the project's DDIM
    # on the respaced chain "10" (the same ten timesteps), whatever the prediction type.
    x_T = noise(64)
    ddim = samplers.get_sampler("ddim", LINEAR, "10", target="eps", clip_x0=False)
    model = gaussian_model(LINEAR)
    expected = np.asarray(jax.jit(lambda x: ddim(model, x, jax.random.key(0)))(x_T))
    for name in ("dpm_solver++", "dpm_solver"):
      got, _ = run(name, LINEAR, 9, x_T, order=1, denoise_to_zero=True)
      np.testing.assert_allclose(got, expected, atol=2e-5, err_msg=name)


class AccuracyTest(parameterized.TestCase):

  @parameterized.named_parameters(
      # (sampler, options, lowest and highest accepted order). DPM-Solver-k is order k, except the references'
      # 3M, whose second-derivative term has half its Taylor weight (order 2); UniPC-p with UniC is order p + 1
      # (the order-1 warm-up step caps UniPC-3 at 3 in theory; it measures between 3 and 4).
      ("dpmpp_1", "dpm_solver++", dict(order=1), 0.8, 1.2),
      ("dpmpp_2m", "dpm_solver++", dict(order=2), 1.8, 2.3),
      ("dpmpp_3m_reference", "dpm_solver++", dict(order=3), 1.8, 2.5),
      ("dpmpp_3m_taylor", "dpm_solver++", dict(order=3, solver_type="taylor"), 2.8, 4.5),
      ("dpm_2m", "dpm_solver", dict(order=2), 1.8, 2.3),
      ("dpm_3m_taylor", "dpm_solver", dict(order=3, solver_type="taylor"), 2.8, 4.5),
      ("unipc_1", "unipc", dict(order=1), 1.8, 2.5),
      ("unipc_2_bh2", "unipc", dict(order=2, variant="bh2"), 2.7, 3.5),
      ("unipc_3", "unipc", dict(order=3), 2.8, 4.5),
      ("unipc_2_noise", "unipc", dict(order=2, prediction="noise"), 2.7, 3.5),
  )
  def test_convergence_order(self, name, options, low, high):
    # float64 and a logSNR grid (uniform steps in the ODE's own variable), so the asymptotic order shows.
    with jax.enable_x64(True):
      x_T = np.asarray(noise(16, seed=1), np.float64)
      errors = []
      for steps in (40, 80):
        sample = samplers.get_sampler(name, LINEAR, steps, target="eps", clip_x0=False, skip_type="logSNR",
                                      lower_order_final=False, **options)
        data_prediction = name == "dpm_solver++" or (name == "unipc" and options.get("prediction") != "noise")
        rows = solvers.plan_rows(sample.plan, jnp.float64)
        for key in ("pred_history", "corr_history"):
          if key in rows:
            rows[key] = jnp.pad(rows[key], ((0, 0), (0, solvers.MAX_ORDER - rows[key].shape[1])))
        out = _integrator(data_prediction)(rows, jnp.asarray(x_T))
        self.assertEqual(out.dtype, jnp.float64)
        errors.append(np.max(np.abs(np.asarray(out) - exact_end(sample.plan, x_T))))
    order = np.log2(errors[0] / errors[1])
    self.assertBetween(order, low, high, msg=f"errors {errors}")

  @parameterized.named_parameters(
      ("dpmpp_2m", "dpm_solver++", dict(order=2)),
      ("dpmpp_3m", "dpm_solver++", dict(order=3)),
      ("dpm_2m", "dpm_solver", dict(order=2)),
      ("unipc_3_bh1", "unipc", dict(order=3, variant="bh1")),
  )
  def test_samples_have_the_exact_mean_and_variance(self, name, options):
    batch = 4096
    x_T = noise(batch, seed=2)
    out, plan = run(name, LINEAR, 20, x_T, skip_type="logSNR", **options)
    a0, s0, a1, s1 = plan.alphas[0], plan.sigmas[0], plan.alphas[-1], plan.sigmas[-1]
    scale = np.sqrt(a1 ** 2 * STD ** 2 + s1 ** 2) / np.sqrt(a0 ** 2 * STD ** 2 + s0 ** 2)
    mean, std = a1 * MU - scale * a0 * MU, scale  # The ODE's image of x_T ~ N(0, 1).
    z_mean = (out.mean(0) - mean) / (std / np.sqrt(batch))
    z_std = (out.std(0) - std) / (std / np.sqrt(2 * batch))
    self.assertLess(np.max(np.abs(z_mean)), 4.5)
    self.assertLess(np.max(np.abs(z_std)), 4.5)
    # And so, within sampling error, the data's own statistics (the end time 1/N keeps noise of std 0.01).
    self.assertLess(np.max(np.abs(out.mean(0) - MU) / (STD / np.sqrt(batch))), 4.5)
    np.testing.assert_allclose(out.std(0), STD, rtol=0.05)


class ModelOutputTest(parameterized.TestCase):

  @parameterized.parameters("dpm_solver++", "dpm_solver")  # The data and the noise conversions.
  def test_eps_x0_and_v_models_give_the_same_samples(self, name):
    x_T = noise(32)
    outs = {target: run(name, LINEAR, 8, x_T, target=target, clip_x0=True)[0]
            for target in ("eps", "x0", "v")}
    np.testing.assert_allclose(outs["x0"], outs["eps"], atol=2e-5)
    np.testing.assert_allclose(outs["v"], outs["eps"], atol=2e-5)

  def test_learned_sigma_channels_are_ignored(self):
    name, x_T = "unipc", noise(8)
    plain, _ = run(name, LINEAR, 8, x_T, target="v")
    learned, _ = run(name, LINEAR, 8, x_T, target="v", var_type="learned_range")
    np.testing.assert_array_equal(learned, plain)

  def test_wrong_channel_count_is_named(self):
    predict = solvers.make_prediction_fn(gaussian_model(LINEAR), "eps", "learned_range", True, False)
    with self.assertRaisesRegex(ValueError, "learned_range"):
      predict(noise(2), 500.0, 0.5, 0.5)

  @parameterized.parameters(("dpm_solver++", "dynamic"), ("dpm_solver", "static"), ("unipc", "static"))
  def test_clip_x0_clips_the_data_prediction(self, name, thresholding):
    # A model predicting x0 = 5 everywhere is, once clipped (both thresholdings give 1), a model predicting 1.
    x_T = noise(8)
    const = lambda value: (lambda x, t: jnp.full_like(x, value))
    clipped, _ = run(name, LINEAR, 8, x_T, target="x0", clip_x0=True, model=const(5.0), thresholding=thresholding)
    exact, _ = run(name, LINEAR, 8, x_T, target="x0", clip_x0=False, model=const(1.0))
    np.testing.assert_allclose(clipped, exact, rtol=1e-5, atol=1e-5)
    if name == "dpm_solver":  # The test can fail: without the clip the samples are far off.
      unclipped, _ = run(name, LINEAR, 8, x_T, target="x0", clip_x0=False, model=const(5.0))
      self.assertGreater(np.max(np.abs(unclipped - exact)), 1.0)

  def test_dynamic_thresholding_scales_by_the_quantile(self):
    x = jnp.asarray(np.linspace(-3, 3, 2 * 400).reshape(2, 20, 20, 1) * np.array([1.0, 0.5])[:, None, None, None],
                    jnp.float32)
    predict = solvers.make_prediction_fn(lambda x, t: x, "x0", "fixed_small", True, True, "dynamic")
    got = np.asarray(predict(x, 10.0, 0.5, 0.5))
    flat = np.abs(np.asarray(x)).reshape(2, -1)
    s = np.maximum(np.quantile(flat, 0.995, axis=1), 1.0)[:, None, None, None]
    np.testing.assert_allclose(got, np.clip(np.asarray(x), -s, s) / s, rtol=1e-6)
    self.assertAlmostEqual(float(np.abs(got).max()), 1.0, places=6)


class ProgramTest(parameterized.TestCase):

  @parameterized.parameters("dpm_solver++", "dpm_solver", "unipc")
  def test_one_scan_whatever_the_step_count(self, name):
    calls = []

    def model(x, t):
      calls.append(t.shape)
      return x * 0.5

    sizes = []
    for steps in (6, 60):
      sample = samplers.get_sampler(name, LINEAR, steps, target="eps", clip_x0=True, order=3)
      jaxpr = jax.make_jaxpr(lambda x: sample(model, x, None))(noise(2))
      sizes.append(len(jaxpr.jaxpr.eqns))
      self.assertEqual([e.primitive.name for e in jaxpr.jaxpr.eqns].count("scan"), 1)
    self.assertEqual(sizes[0], sizes[1])
    self.assertEqual(calls, [(2,), (2,)])  # The network is traced once per program.

  def test_steps_as_string_and_bad_input(self):
    make = lambda steps, **kw: samplers.get_sampler("unipc", LINEAR, steps, target="eps", **kw)
    for field in ("model_times", "pred_x", "pred_history", "corr_history", "corr_new"):
      np.testing.assert_array_equal(getattr(make(" 7").plan, field), getattr(make(7).plan, field))
    with self.assertRaisesRegex(ValueError, "numeric string"):
      make("ddim50")
    with self.assertRaisesRegex(ValueError, "at least 3 steps"):
      make(2, order=3)
    with self.assertRaisesRegex(ValueError, "skip_type"):
      make(10, skip_type="karras")
    with self.assertRaisesRegex(ValueError, "variant"):
      make(10, variant="bh3")
    with self.assertRaisesRegex(ValueError, "order"):
      samplers.get_sampler("dpm_solver++", LINEAR, 10, target="eps", order=4)
    with self.assertRaisesRegex(ValueError, "thresholding"):
      samplers.get_sampler("dpm_solver", LINEAR, 10, target="eps", thresholding="soft")

  def test_single_step_and_cosine_schedule(self):
    x_T = noise(16)
    out, plan = run("dpm_solver++", LINEAR, 1, x_T, order=1)
    # One DDIM step from t = 1 to 1/N with the exact x0 prediction at x_T.
    (a0, a1), (s0, s1) = plan.alphas, plan.sigmas
    x = np.asarray(x_T, np.float64)
    x0 = MU + a0 * STD ** 2 * (x - a0 * MU) / (a0 ** 2 * STD ** 2 + s0 ** 2)
    np.testing.assert_allclose(out, a1 * x0 + s1 * (x - a0 * x0) / s0, atol=1e-4)  # float32 eps / alpha_T
    out, plan = run("dpm_solver++", COSINE, 20, x_T, skip_type="logSNR", order=3, solver_type="taylor")
    self.assertLess(plan.model_times[0], 999)  # lambda clipped at -5.1 by default for DPM-Solver
    np.testing.assert_allclose(out, exact_end(plan, x_T), atol=2e-2)


if __name__ == "__main__":
  absltest.main()
