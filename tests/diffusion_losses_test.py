"""Exact tests of the losses and of the Gaussian VLB terms of the hybrid loss."""

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
