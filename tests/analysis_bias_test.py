"""analysis/bias.py: the buckets, and the per-bucket errors against known answers: the exact denoiser of a
Gaussian mixture has no bias, a shifted one reports its shift, a single Gaussian has its closed-form MMSE."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from debias_jax.analysis import bias
from debias_jax.analysis import exact_denoiser
from debias_jax.data import gmm as gmm_lib
from debias_jax.diffusion.schedules import Schedule

SCHEDULE = Schedule.named("linear", 1000)
BUCKETS = bias.make_buckets(SCHEDULE, 5)


def mixture(num_components=4, seed=1):
  return gmm_lib.make_gmm(image_size=4, channels=3, num_components=num_components, rank=3, seed=seed)


# x0_error_terms jitted with the closures and tables static, as suits the analytic model functions of these tests.
x0_error_by_bucket = jax.jit(bias.x0_error_terms, static_argnames=("model_fn", "schedule", "target", "buckets",
                                                                   "learn_sigma", "reference_fn"))


def errors(mix, x0, model_fn, buckets=BUCKETS, key=0):
  sums = x0_error_by_bucket(model_fn, SCHEDULE, "eps", x0, jax.random.key(key), buckets,
                            reference_fn=exact_denoiser.posterior_mean_fn(mix, SCHEDULE))
  return bias.finalize_sums(sums)


class BucketTest(parameterized.TestCase):

  @parameterized.parameters("t", "log_snr")
  def test_buckets_partition_the_timesteps(self, by):
    buckets = bias.make_buckets(SCHEDULE, 10, by)
    covered = np.concatenate([np.arange(lo, hi + 1) for lo, hi in buckets])
    np.testing.assert_array_equal(covered, np.arange(1000))
    self.assertLen(buckets, 10)
    if by == "t":
      self.assertEqual(buckets[0], (0, 99))
    else:   # bucket k+1 starts at the first t whose log SNR is below the k-th of 9 equally spaced levels
      log_snr = SCHEDULE.log_snr
      levels = np.linspace(log_snr[0], log_snr[-1], 11)[1:-1]
      for level, (lo, _) in zip(levels, buckets[1:]):
        self.assertLess(log_snr[lo], level)
        self.assertGreaterEqual(log_snr[lo - 1], level)
    info = bias.bucket_info(SCHEDULE, buckets)
    self.assertTrue(all(r["snr_max"] >= r["snr_geomean"] >= r["snr_min"] for r in info))

  def test_bad_bucketing_is_named(self):
    with self.assertRaisesRegex(ValueError, "bucket_by|log_snr"):
      bias.make_buckets(SCHEDULE, 10, "sigma")
    with self.assertRaisesRegex(ValueError, "num_buckets"):
      bias.make_buckets(SCHEDULE, 0)


class ExactDenoiserTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.mix = mixture()
    cls.x0, _ = cls.mix.sample(0, 512)
    cls.exact = errors(cls.mix, cls.x0, exact_denoiser.exact_model_fn(cls.mix, SCHEDULE, "eps"))

  def test_the_exact_denoiser_has_no_bias(self):
    exact = self.exact
    np.testing.assert_array_equal(exact["count"], 512)
    self.assertLess(exact["bias_mse"].max(), 1e-7 * exact["x0_mse"].min() + 1e-9)
    np.testing.assert_allclose(exact["bias_signed"], 0.0, atol=1e-4)
    np.testing.assert_allclose(exact["x0_mse"], exact["bayes_mse"], rtol=1e-4)

  def test_the_exact_error_is_the_posterior_variance_decreasing_with_snr(self):
    mse = self.exact["x0_mse"]                       # buckets run from low noise to high noise
    self.assertTrue(np.all(np.diff(mse) > 0), mse)
    # At the noisiest bucket (SNR < 0.002) E[x0 | x_t] is nearly the data mean: the error approaches (from below)
    # the batch's squared distance from the exact mean.
    spread = np.mean((self.x0.astype(np.float64) - self.mix.mean) ** 2)
    self.assertLess(mse[-1], spread)
    self.assertGreater(mse[-1], 0.95 * spread)

  def test_a_shifted_denoiser_reports_its_shift(self):
    delta = np.array([0.1, -0.05, 0.0], np.float32)
    shifted = errors(self.mix, self.x0, exact_denoiser.exact_model_fn(self.mix, SCHEDULE, "eps", x0_shift=delta))
    for name in ("bias_signed",):
      np.testing.assert_allclose(shifted[name], np.broadcast_to(delta, shifted[name].shape), atol=2e-4)
    np.testing.assert_allclose(shifted["bias_mse"], np.mean(delta ** 2), rtol=2e-3)
    # Same data, noise and t: the signed error against the data moves by exactly delta ...
    np.testing.assert_allclose(shifted["x0_signed"] - self.exact["x0_signed"],
                               np.broadcast_to(delta, shifted["x0_signed"].shape), atol=2e-4)
    # ... and the squared error by mean_c(delta_c^2 + 2 delta_c E[x0* - x0]_c), exactly.
    np.testing.assert_allclose(shifted["x0_mse"] - self.exact["x0_mse"],
                               np.mean(delta ** 2 + 2 * delta * self.exact["x0_signed"], axis=-1), rtol=2e-3)
    np.testing.assert_allclose(shifted["bayes_mse"], self.exact["bayes_mse"], rtol=1e-5)

  def test_first_step_prediction_is_the_data_mean(self):
    x_T = jax.random.normal(jax.random.key(3), (256,) + self.mix.shape)
    delta = np.array([0.0, 0.2, -0.1], np.float32)
    for shift in (None, delta):
      model_fn = exact_denoiser.exact_model_fn(self.mix, SCHEDULE, "eps", x0_shift=shift)
      x0_hat = np.asarray(jax.jit(lambda x: bias.first_step_prediction(model_fn, SCHEDULE, "eps", x))(x_T))
      reference = np.asarray(self.mix.posterior_mean(x_T, SCHEDULE.alphas_cumprod[-1]))
      stats = bias.mean_prediction_stats(x0_hat, self.mix.mean, reference)
      expected = np.zeros(3) if shift is None else delta
      np.testing.assert_allclose(stats["channel_shift"], expected, atol=2e-3)
      np.testing.assert_allclose(stats["bias_channel_shift"], expected, atol=2e-4)
      np.testing.assert_allclose(stats["per_sample_mse"], np.mean(expected ** 2), atol=2e-4)


class SingleGaussianTest(absltest.TestCase):

  def test_x0_error_matches_the_gaussian_mmse_and_eps_error_is_snr_times_it(self):
    # One Gaussian N(mu, S): E|x0 - E[x0|x_t]|^2 = sum_i s_i (1 - a) / (a s_i + 1 - a) over eigenvalues s_i of S.
    mix = mixture(num_components=1)
    x0, _ = mix.sample(0, 4096)
    buckets = ((100, 100), (400, 400), (700, 700), (950, 950))
    means = errors(mix, x0, exact_denoiser.exact_model_fn(mix, SCHEDULE, "eps"), buckets)
    eigenvalues = np.linalg.eigvalsh(mix.component_covariance(0))
    for i, (t, _) in enumerate(buckets):
      a = SCHEDULE.alphas_cumprod[t]
      mmse = np.sum(eigenvalues * (1 - a) / (a * eigenvalues + 1 - a)) / mix.dim
      np.testing.assert_allclose(means["x0_mse"][i], mmse, rtol=0.03)
      np.testing.assert_allclose(means["eps_mse"][i], SCHEDULE.snr[t] * means["x0_mse"][i], rtol=1e-3)


if __name__ == "__main__":
  absltest.main()
