"""Importance sampling of t leaves the expected loss unchanged (exactly, from the tables) for every weighting and
target; sampled estimates converge to it; the weight shares per band of t are the weight table's own sums."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.diffusion import losses
from debias_jax.diffusion import t_sampling
from debias_jax.diffusion import targets
from debias_jax.diffusion import weighting
from debias_jax.diffusion.schedules import Schedule

LINEAR = Schedule.named("linear", 1000)
COSINE = Schedule.named("cosine", 1000)
OPTIONS = ({}, {"snr_clamp": 100.0}, {"normalize": True, "p2_k": 0.5, "p2_gamma": 0.5, "min_snr_gamma": 2.0})
CASES = [dict(name=w, target=t, options=i) for w, t, i in
         itertools.product(weighting.WEIGHTINGS, targets.TARGETS, range(len(OPTIONS)))]


def per_step_losses(num_steps, seed=0):
  """Arbitrary fixed positive per-t losses L(t)."""
  return np.random.default_rng(seed).uniform(0.1, 3.0, num_steps)


class ExactExpectationTest(parameterized.TestCase):

  @parameterized.parameters(*CASES)
  def test_importance_expectation_equals_uniform(self, name, target, options):
    for schedule in (LINEAR, COSINE):
      w = weighting_tables(schedule, name, target, OPTIONS[options])
      q, m = t_sampling.importance_tables(schedule, w, target)
      loss = per_step_losses(schedule.num_steps)
      uniform = np.sum(w * loss) / schedule.num_steps
      importance = np.sum(q * m * w * loss)            # E_q[m(t) w(t) L(t)], every t enumerated
      np.testing.assert_allclose(importance, uniform, rtol=1e-12)
      self.assertAlmostEqual(q.sum(), 1.0, places=12)
      # q is the eps-space weight itself, normalised (computed here without going through the target's table).
      eps = weighting_tables(schedule, name, "eps", OPTIONS[options])
      np.testing.assert_allclose(q, eps / eps.sum(), rtol=1e-12)
      # So the effective weight m(t) w(t) is mean(w_eps) times the eps -> target factor: constant for eps.
      np.testing.assert_allclose(m * w, eps.mean() * weighting.eps_to_target_factor(target, schedule.snr),
                                 rtol=1e-12)


def weighting_tables(schedule, name, target, options):
  return weighting.loss_weights(schedule, name, target, **options)


class SampledEstimateTest(absltest.TestCase):

  def test_sampled_estimate_converges_and_frequencies_follow_q(self):
    w = weighting.loss_weights(LINEAR, "debias", "eps")
    q, m = t_sampling.importance_tables(LINEAR, w, "eps")
    loss = per_step_losses(LINEAR.num_steps, seed=1)
    steps = np.asarray(jax.jit(lambda key: t_sampling.sample_steps(key, q, (20_000,)))(jax.random.key(0)))
    self.assertEqual(steps.dtype, np.int32)
    values = (m * w * loss)[steps]
    exact = np.sum(w * loss) / LINEAR.num_steps
    standard_error = values.std() / np.sqrt(len(values))
    self.assertLess(abs(values.mean() - exact), 5 * standard_error)
    # Band frequencies against q's band sums (binomial standard errors).
    for lo, hi in ((0, 100), (100, 500), (500, 1000)):
      p = q[lo:hi].sum()
      self.assertLess(abs(np.mean((steps >= lo) & (steps < hi)) - p), 5 * np.sqrt(p * (1 - p) / len(steps)) + 1e-6)
    # Uniform draws of the same objective scatter far more: importance sampling's per-draw values have a
    # spread of L's alone (m w is constant for eps), uniform's carries w's 1000-fold range.
    uniform_values = (w * loss)[np.random.default_rng(2).integers(0, LINEAR.num_steps, 20_000)]
    self.assertLess(values.std() * 3, uniform_values.std())

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, "positive, finite"):
      t_sampling.proposal(np.array([1.0, 0.0, 2.0]))
    with self.assertRaisesRegex(ValueError, "one weight per step"):
      t_sampling.eps_space_weights(LINEAR, np.ones(10), "eps")
    with self.assertRaisesRegex(ValueError, "config.loss.t_sampling"):
      losses.make_loss_fn(LINEAR, np.ones(1000), "eps", t_sampling="stratified")


class LossFnTest(parameterized.TestCase):

  @parameterized.parameters("x0", "v")
  def test_importance_loss_fn_has_the_uniform_expectation(self, target):
    # One-pixel images at a known x0 and a model whose MSE is a known f(t)^2: the batch mean of the importance
    # loss estimates sum_t w(t) f(t)^2 / T.
    schedule = Schedule.named("linear", 200)
    w = weighting.loss_weights(schedule, "debias", target)
    f = lambda t: 0.5 + 0.4 * jnp.sin(t / 17.0)
    x0 = jnp.full((40_000, 1, 1, 1), 0.3, jnp.float32)

    def predict(x_t, t):
      steps = t.astype(jnp.int32)
      noise = targets.predict_eps("x0", schedule, x0, x_t, steps)
      return targets.regression_target(target, schedule, x0, noise, steps) + f(t).reshape(-1, 1, 1, 1)

    loss_fn = jax.jit(losses.make_loss_fn(schedule, w, target, t_sampling="importance"), static_argnums=0)
    mean, terms = loss_fn(predict, x0, jax.random.key(5))
    exact = np.sum(w * np.asarray(f(jnp.arange(schedule.num_steps, dtype=jnp.float32)), np.float64) ** 2) / 200
    values = np.asarray(terms["loss"], np.float64)
    self.assertLess(abs(float(mean) - exact), 5 * values.std() / np.sqrt(len(values)))
    q, m = t_sampling.importance_tables(schedule, w, target)
    steps = np.asarray(terms["t"])
    np.testing.assert_allclose(values, (m * w)[steps] * np.asarray(terms["mse"]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(terms["mse"]), np.asarray(f(steps.astype(np.float32))) ** 2,
                               rtol=1e-3)
    # t follows q, not uniform: the lowest tenth of the steps carries q's share of the draws.
    self.assertLess(abs(np.mean(steps < 20) - q[:20].sum()), 0.01)

  def test_multiplier_covers_the_vlb_term(self):
    schedule = Schedule.named("linear", 100)
    w = weighting.loss_weights(schedule, "debias", "eps")
    x0 = jax.random.uniform(jax.random.key(1), (64, 2, 2, 1), minval=-1, maxval=1)
    predict = lambda x_t, t: jnp.concatenate([0.5 * x_t, jnp.zeros_like(x_t)], axis=-1)
    _, terms = losses.make_loss_fn(schedule, w, "eps", learn_sigma=True, t_sampling="importance")(
        predict, x0, jax.random.key(2))
    _, m = t_sampling.importance_tables(schedule, w, "eps")
    steps = np.asarray(terms["t"])
    expected = m[steps] * (w[steps] * np.asarray(terms["mse"]) + np.asarray(terms["vb"]))
    np.testing.assert_allclose(np.asarray(terms["loss"]), expected, rtol=1e-5)
    self.assertGreater(float(np.abs(np.asarray(terms["vb"])).max()), 0.0)


class WeightShareTest(parameterized.TestCase):

  @parameterized.parameters(*weighting.WEIGHTINGS)
  def test_band_shares_are_the_tables_sums(self, name):
    eps = weighting.loss_weights(LINEAR, name, "eps")
    shares = t_sampling.band_shares(eps)
    self.assertAlmostEqual(shares.sum(), 1.0, places=12)
    direct = np.array([eps[:100].sum(), eps[100:500].sum(), eps[500:].sum()]) / eps.sum()
    np.testing.assert_allclose(shares, direct, rtol=1e-12)
    np.testing.assert_allclose(t_sampling.weight_share_table(LINEAR)[name], direct, rtol=1e-12)
    # Other bands, and the scale of the weights does not matter.
    np.testing.assert_allclose(t_sampling.band_shares(3.0 * eps, (250, 500, 750)),
                               [eps[i:i + 250].sum() / eps.sum() for i in range(0, 1000, 250)], rtol=1e-12)

  def test_bad_edges(self):
    with self.assertRaisesRegex(ValueError, "increase strictly"):
      t_sampling.band_shares(np.ones(1000), (500, 100))
    with self.assertRaisesRegex(ValueError, "increase strictly"):
      t_sampling.band_shares(np.ones(10), (100,))


if __name__ == "__main__":
  absltest.main()
