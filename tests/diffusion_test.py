"""Exact tests of the diffusion mathematics: schedules, targets, weightings, losses and the Gaussian VLB terms."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from debias_jax.diffusion import losses
from debias_jax.diffusion import reverse
from debias_jax.diffusion import schedules
from debias_jax.diffusion import targets
from debias_jax.diffusion import weighting

LINEAR = schedules.Schedule.named("linear", 1000)
COSINE = schedules.Schedule.named("cosine", 1000)


def _random_batch(seed, shape=(16, 4, 4, 3)):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  x0 = jax.random.uniform(k1, shape, minval=-1, maxval=1)
  eps = jax.random.normal(k2, shape)
  steps = jax.random.randint(k3, (shape[0],), 0, 1000)
  other = jax.random.normal(k4, shape)
  return x0, eps, steps, other


def _sq(x):
  return np.asarray(jnp.sum(jnp.square(x), axis=(1, 2, 3)), np.float64)


class ScheduleTest(parameterized.TestCase):

  def test_linear_betas_match_definition(self):
    np.testing.assert_allclose(LINEAR.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(LINEAR.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-15)
    self.assertEqual(LINEAR.alphas_cumprod.dtype, np.float64)

  def test_linear_betas_scale_with_num_timesteps(self):
    betas = schedules.linear_betas(250)
    self.assertAlmostEqual(betas[0], 4e-4)
    self.assertAlmostEqual(betas[-1], 0.08)

  def test_cosine_alphas_cumprod_follow_the_closed_form(self):
    t = np.arange(1, 1001) / 1000
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    expected = f(t) / f(0)
    # Betas are capped at 0.999 only at the very last steps, where alpha_bar is ~0 anyway.
    np.testing.assert_allclose(COSINE.alphas_cumprod[:990], expected[:990], rtol=1e-10)
    self.assertLessEqual(COSINE.betas.max(), 0.999 + 1e-12)

  def test_snr_and_posterior_tables(self):
    s = LINEAR
    np.testing.assert_allclose(s.snr, s.alphas_cumprod / (1 - s.alphas_cumprod), rtol=1e-14)
    np.testing.assert_allclose(s.log_snr, np.log(s.snr), rtol=1e-12)
    # The posterior q(x_{t-1} | x_t, x0) by Bayes' rule on two Gaussians, written from scratch.
    a_prev, beta = s.alphas_cumprod_prev, s.betas
    with np.errstate(divide="ignore"):
      var = 1 / (1 / (1 - a_prev) + (1 - beta) / beta)
    np.testing.assert_allclose(s.posterior_variance[1:], var[1:], rtol=1e-10)
    self.assertEqual(s.posterior_variance[0], 0.0)
    np.testing.assert_allclose(s.posterior_mean_coef1[1:], (var * np.sqrt(a_prev) / (1 - a_prev))[1:], rtol=1e-10)
    self.assertAlmostEqual(s.posterior_mean_coef1[0], 1.0, places=12)  # x_{-1} is x0 itself
    np.testing.assert_allclose(s.posterior_mean_coef2[1:], (var * np.sqrt(1 - beta) / beta)[1:], rtol=1e-10)
    self.assertEqual(s.posterior_log_variance_clipped[0], np.log(s.posterior_variance[1]))

  def test_unknown_schedule_names_the_choices(self):
    with self.assertRaisesRegex(ValueError, "linear, cosine"):
      schedules.Schedule.named("quadratic")


class RespacingTest(parameterized.TestCase):

  @parameterized.parameters("100", "ddim50", "10,15,20", "1000", "ddim1000", 7)
  def test_respaced_chain_keeps_the_original_alphas_cumprod(self, spec):
    chain = LINEAR.respace(spec)
    np.testing.assert_array_equal(chain.alphas_cumprod, LINEAR.alphas_cumprod[chain.timesteps])
    np.testing.assert_allclose(np.cumprod(1 - chain.betas), chain.alphas_cumprod, rtol=1e-12)
    self.assertEqual(chain.num_train_timesteps, 1000)

  def test_ddim_spec_is_a_fixed_stride(self):
    np.testing.assert_array_equal(LINEAR.respace("ddim50").timesteps, np.arange(0, 1000, 20))
    np.testing.assert_array_equal(LINEAR.respace("ddim250").timesteps, np.arange(0, 1000, 4))

  def test_section_counts_select_guided_diffusions_indices(self):
    # Printed by guided_diffusion.respace.space_timesteps(1000, "10,15,20") and (1000, "25") (openai, 2021).
    expected = ([0, 37, 74, 111, 148, 185, 222, 259, 296, 333]
                + [334, 358, 381, 405, 429, 453, 476, 500, 524, 547, 571, 595, 619, 642, 666]
                + [667, 684, 702, 719, 737, 754, 772, 789, 807, 824, 842, 859, 877, 894, 912, 929, 947, 964,
                   982, 999])
    np.testing.assert_array_equal(schedules.space_timesteps(1000, "10,15,20"), expected)
    np.testing.assert_array_equal(
        schedules.space_timesteps(1000, "25"),
        [0, 42, 83, 125, 166, 208, 250, 291, 333, 375, 416, 458, 500, 541, 583, 624, 666, 708, 749, 791, 832,
         874, 916, 957, 999])

  def test_respacing_a_respaced_chain_maps_to_original_timesteps(self):
    chain = LINEAR.respace("100").respace("10")
    np.testing.assert_array_equal(chain.alphas_cumprod, LINEAR.alphas_cumprod[chain.timesteps])

  @parameterized.parameters("ddim999", "2000", "abc", "0")
  def test_bad_specs_fail_clearly(self, spec):
    with self.assertRaisesRegex(ValueError, "espacing|steps"):
      LINEAR.respace(spec)


class TargetIdentityTest(parameterized.TestCase):
  """The identities between the targets, on random tensors."""

  def test_error_identities(self):
    x0, eps, steps, perturbation = _random_batch(0)
    x_t = targets.q_sample(LINEAR, x0, steps, eps)
    x0_hat = x0 + 0.1 * perturbation
    eps_hat = targets.predict_eps("x0", LINEAR, x0_hat, x_t, steps)
    v = targets.regression_target("v", LINEAR, x0, eps, steps)
    v_hat = targets.predict_v("x0", LINEAR, x0_hat, x_t, steps)
    snr = LINEAR.snr[np.asarray(steps)]
    alpha_bar = LINEAR.alphas_cumprod[np.asarray(steps)]
    x0_err, eps_err, v_err = _sq(x0 - x0_hat), _sq(eps - eps_hat), _sq(v - v_hat)
    np.testing.assert_allclose(eps_err, snr * x0_err, rtol=2e-3)
    np.testing.assert_allclose(v_err, (1 + snr) * x0_err, rtol=2e-3)
    np.testing.assert_allclose(eps_err, alpha_bar * v_err, rtol=2e-3)

  @parameterized.product(source=targets.TARGETS, schedule=("linear", "cosine"))
  def test_conversions_invert_each_other(self, source, schedule):
    sched = schedules.Schedule.named(schedule)
    x0, eps, steps, _ = _random_batch(1)
    steps = jnp.clip(steps, 50, 950)  # away from the ends, where float32 loses one of x0/eps entirely
    x_t = targets.q_sample(sched, x0, steps, eps)
    prediction = targets.regression_target(source, sched, x0, eps, steps)
    np.testing.assert_allclose(targets.predict_x0(source, sched, prediction, x_t, steps), x0, atol=2e-4)
    np.testing.assert_allclose(targets.predict_eps(source, sched, prediction, x_t, steps), eps, atol=2e-4)
    np.testing.assert_allclose(targets.predict_v(source, sched, prediction, x_t, steps),
                               targets.regression_target("v", sched, x0, eps, steps), atol=2e-4)

  def test_v_definition(self):
    x0, eps, steps, _ = _random_batch(2)
    a = LINEAR.sqrt_alphas_cumprod[np.asarray(steps)][:, None, None, None]
    s = LINEAR.sqrt_one_minus_alphas_cumprod[np.asarray(steps)][:, None, None, None]
    np.testing.assert_allclose(targets.regression_target("v", LINEAR, x0, eps, steps), a * eps - s * x0,
                               rtol=1e-5, atol=1e-6)

  def test_unknown_target(self):
    with self.assertRaisesRegex(ValueError, "eps, x0, v"):
      targets.check_target("score")


class WeightingTest(parameterized.TestCase):

  def test_debias_known_values_on_the_linear_schedule(self):
    w = weighting.loss_weights(LINEAR, "debias")
    # To every digit the paper quotes (157.407 is itself rounded: 1e-6 relative would ask for digits not given).
    self.assertEqual(round(w[0], 7), 0.0100005)
    self.assertEqual(round(w[99], 6), 0.338828)
    self.assertEqual(round(w[999], 3), 157.407)
    self.assertEqual(round(w.mean(), 3), 17.817)

  def test_debias_on_the_cosine_schedule(self):
    w = weighting.loss_weights(COSINE, "debias")
    self.assertAlmostEqual(w.max() / 20291, 1.0, places=4)
    self.assertAlmostEqual(w.mean(), 24.81, places=2)

  def test_debias_is_p2_with_k0_gamma_half(self):
    np.testing.assert_allclose(weighting.loss_weights(LINEAR, "debias"),
                               weighting.loss_weights(LINEAR, "p2", p2_k=0.0, p2_gamma=0.5), rtol=1e-14)

  def test_eps_space_definitions(self):
    snr = LINEAR.snr
    cases = {"constant": np.ones(1000), "snr": 1 / snr, "p2": 1 / (1 + snr),
             "min_snr": np.minimum(snr, 5.0) / snr}
    for name, expected in cases.items():
      np.testing.assert_allclose(weighting.loss_weights(LINEAR, name), expected, rtol=1e-14, err_msg=name)

  @parameterized.parameters(*weighting.WEIGHTINGS)
  def test_x0_space_weight_is_the_same_for_every_target(self, name):
    snr = LINEAR.snr
    x0_space = weighting.loss_weights(LINEAR, name, "x0")
    np.testing.assert_allclose(weighting.loss_weights(LINEAR, name, "eps") * snr, x0_space, rtol=1e-12)
    np.testing.assert_allclose(weighting.loss_weights(LINEAR, name, "v") * (1 + snr), x0_space, rtol=1e-12)

  def test_inverse_snr_is_constant_x0_prediction(self):
    np.testing.assert_allclose(weighting.loss_weights(LINEAR, "snr", "x0"), np.ones(1000), rtol=1e-12)

  def test_normalize_gives_mean_one_in_eps_space(self):
    for target, factor in (("eps", 1.0), ("x0", LINEAR.snr), ("v", LINEAR.snr / (1 + LINEAR.snr))):
      w = weighting.loss_weights(LINEAR, "debias", target, normalize=True) / factor
      self.assertAlmostEqual(w.mean(), 1.0, places=12)

  def test_snr_clamp_bounds_the_weight(self):
    w = weighting.loss_weights(LINEAR, "debias", snr_clamp=100.0)
    self.assertAlmostEqual(w.min(), 0.1, places=12)
    self.assertAlmostEqual(w.max(), 10.0, places=12)
    inside = (LINEAR.snr > 0.01) & (LINEAR.snr < 100)
    self.assertGreater(inside.sum(), 500)
    np.testing.assert_allclose(w[inside], weighting.loss_weights(LINEAR, "debias")[inside], rtol=1e-14)

  def test_unknown_weighting_lists_the_valid_names(self):
    with self.assertRaisesRegex(ValueError, "constant, debias, snr, p2, min_snr"):
      weighting.loss_weights(LINEAR, "uniform")


class LossTest(parameterized.TestCase):

  @parameterized.product(target=targets.TARGETS, name=weighting.WEIGHTINGS)
  def test_loss_equals_an_independent_x0_space_formulation(self, target, name):
    """Weighted target-MSE == (eps-space weight * SNR) * ||x0 - x0_hat||^2, whatever the target."""
    x0 = jax.random.uniform(jax.random.key(3), (8, 4, 4, 2), minval=-1, maxval=1)
    seen = {}

    def predict(x_t, t):  # an arbitrary, input-dependent "network"
      seen["x_t"], seen["t"] = x_t, t
      return 0.5 * jnp.tanh(x_t) + 0.01 * t[:, None, None, None] / 1000

    weights = weighting.loss_weights(LINEAR, name, target)
    loss, terms = losses.make_loss_fn(LINEAR, weights, target)(predict, x0, jax.random.key(4))

    # Independent formulation in float64 numpy from the x_t and t the model saw.
    t = np.asarray(seen["t"]).astype(int)
    ab = LINEAR.alphas_cumprod[t][:, None, None, None]
    x_t = np.asarray(seen["x_t"], np.float64)
    out = np.asarray(predict(seen["x_t"], seen["t"]), np.float64)
    x0_64 = np.asarray(x0, np.float64)
    x0_hat = {"eps": (x_t - np.sqrt(1 - ab) * out) / np.sqrt(ab), "x0": out,
              "v": np.sqrt(ab) * x_t - np.sqrt(1 - ab) * out}[target]
    snr = ab[:, 0, 0, 0] / (1 - ab[:, 0, 0, 0])
    eps_weight = weighting.eps_space_weight(name, snr)
    expected = eps_weight * snr * np.mean((x0_64 - x0_hat) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(terms["loss"], expected, rtol=2e-3)
    np.testing.assert_allclose(loss, expected.mean(), rtol=2e-3)
    np.testing.assert_array_equal(terms["vb"], 0.0)

  def test_learned_sigma_adds_the_vb_term_and_only_it_trains_the_variance(self):
    x0 = jax.random.uniform(jax.random.key(5), (8, 4, 4, 2), minval=-1, maxval=1)
    weights = weighting.loss_weights(LINEAR, "debias")
    loss_fn = losses.make_loss_fn(LINEAR, weights, "eps", learn_sigma=True)

    def loss_of(params):
      predict = lambda x_t, t: jnp.concatenate([params["mean"] * x_t, params["var"] * jnp.ones_like(x_t)], -1)
      return loss_fn(predict, x0, jax.random.key(6))

    params = {"mean": jnp.float32(0.3), "var": jnp.float32(0.2)}
    (loss, terms), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    np.testing.assert_allclose(terms["loss"], weights[np.asarray(terms["t"])] * terms["mse"] + terms["vb"],
                               rtol=1e-5)
    self.assertTrue(np.all(np.asarray(terms["vb"]) > 0))
    # The VB term's gradient reaches the mean parameters only through... nothing: the mean is frozen in it.
    mse_only = lambda p: jnp.mean(jnp.asarray(weights, jnp.float32)[terms["t"]] * loss_of(p)[1]["mse"])
    np.testing.assert_allclose(grads["mean"], jax.grad(mse_only)(params)["mean"], rtol=1e-5)
    self.assertNotEqual(float(grads["var"]), 0.0)

  def test_quarter_metrics(self):
    terms = {"loss": jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]), "mse": jnp.ones(5), "vb": jnp.zeros(5),
             "t": jnp.array([0, 249, 250, 999, 600])}
    metrics = losses.finalize_metrics(losses.metric_sums(terms, 1000))
    self.assertEqual(metrics["loss"], 3.0)
    self.assertEqual(metrics["loss_q0"], 1.5)
    self.assertEqual(metrics["loss_q1"], 3.0)
    self.assertEqual(metrics["loss_q2"], 5.0)
    self.assertEqual(metrics["loss_q3"], 4.0)

  def test_wrong_weight_shape(self):
    with self.assertRaisesRegex(ValueError, "one weight per step"):
      losses.make_loss_fn(LINEAR, np.ones(10))


class GaussianTermsTest(parameterized.TestCase):

  def test_normal_kl_closed_forms(self):
    self.assertAlmostEqual(float(reverse.normal_kl(0.3, 0.2, 0.3, 0.2)), 0.0, places=6)
    m1, lv1, m2, lv2 = 0.5, np.log(0.3), -0.2, np.log(2.0)
    expected = np.log(np.sqrt(2.0) / np.sqrt(0.3)) + (0.3 + 0.7 ** 2) / (2 * 2.0) - 0.5
    self.assertAlmostEqual(float(reverse.normal_kl(m1, lv1, m2, lv2)), expected, places=5)

  def test_discretized_gaussian_matches_the_exact_normal_bins(self):
    x = np.array([-1.0, -0.5, 0.0, 0.25, 1.0])
    mean, scale = 0.1, 0.3
    got = np.asarray(reverse.discretized_gaussian_log_likelihood(jnp.asarray(x), mean, np.log(scale)))
    upper = stats.norm.cdf((x - mean + 1 / 255) / scale)
    lower = stats.norm.cdf((x - mean - 1 / 255) / scale)
    exact = np.where(x < -0.999, np.log(upper), np.where(x > 0.999, np.log(1 - lower), np.log(upper - lower)))
    # guided-diffusion's tanh approximation of the CDF: good in the bulk, a few % off in the far tails.
    np.testing.assert_allclose(got[1:4], exact[1:4], rtol=2e-3)
    np.testing.assert_allclose(got, exact, rtol=5e-2)
    # And exactly the approximation it is meant to be, written out in float64.
    approx = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    upper, lower = approx((x - mean + 1 / 255) / scale), approx((x - mean - 1 / 255) / scale)
    formula = np.where(x < -0.999, np.log(upper), np.where(x > 0.999, np.log(1 - lower), np.log(upper - lower)))
    np.testing.assert_allclose(got, formula, rtol=1e-4)

  def test_discretized_gaussian_keeps_its_far_tail_in_float32(self):
    # A bin 5 to 6 standard deviations above the mean: 1 - F cancels in float32 unless computed as F(-z).
    x, mean, scale = 0.09019608, 0.04263878, 0.008694043
    approx = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    exact = np.log(approx((x - mean + 1 / 255) / scale) - approx((x - mean - 1 / 255) / scale))
    got = reverse.discretized_gaussian_log_likelihood(jnp.float32(x), jnp.float32(mean), jnp.log(jnp.float32(scale)))
    self.assertAlmostEqual(float(got), exact, delta=1e-3 * abs(exact))

  def test_vb_terms_use_kl_except_at_step_zero(self):
    x0 = jnp.full((2, 2, 2, 1), 0.2)
    x_t = jnp.full((2, 2, 2, 1), 0.1)
    steps = jnp.array([0, 10])
    true_mean = reverse.q_posterior_mean(LINEAR, x0, x_t, steps)
    log_var = targets.gather(LINEAR.posterior_log_variance_clipped, steps, 4)
    bits = reverse.vb_terms_bits(LINEAR, x0, x_t, steps, true_mean, log_var)
    self.assertAlmostEqual(float(bits[1]), 0.0, places=6)  # KL of the posterior with itself
    expected_nll = -float(reverse.discretized_gaussian_log_likelihood(0.2, true_mean[0, 0, 0, 0],
                                                                      0.5 * log_var[0, 0, 0, 0])) / math.log(2)
    self.assertAlmostEqual(float(bits[0]), expected_nll, places=4)

  def test_learned_range_interpolates_between_the_fixed_variances(self):
    steps = jnp.arange(1, 1000, 111)
    low = reverse.log_variance(LINEAR, "learned_range", steps, 4, -jnp.ones((len(steps), 1, 1, 1)))
    high = reverse.log_variance(LINEAR, "learned_range", steps, 4, jnp.ones((len(steps), 1, 1, 1)))
    np.testing.assert_allclose(low, reverse.log_variance(LINEAR, "fixed_small", steps, 4), rtol=1e-6)
    np.testing.assert_allclose(high, reverse.log_variance(LINEAR, "fixed_large", steps, 4), rtol=1e-6)


if __name__ == "__main__":
  absltest.main()
