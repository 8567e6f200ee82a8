"""The exact gmm metrics against closed forms worked by hand on a 2-component mixture in one dimension."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import itertools
import math

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.analysis import bias
from debias_jax.analysis import exact_metrics
from debias_jax.data import gmm as gmm_lib
from debias_jax.diffusion.schedules import Schedule

SCHEDULE = Schedule.named("linear", 1000)
WEIGHTS = (0.3, 0.7)
MEANS = (-0.5, 0.8)
VARS = (0.04, 0.09)


def mixture_1d():
  """p(x) = 0.3 N(-0.5, 0.04) + 0.7 N(0.8, 0.09): pixel noise only (rank 0), one pixel, one channel."""
  return gmm_lib.GaussianMixture(shape=(1, 1, 1), weights=np.array(WEIGHTS), means=np.array(MEANS)[:, None],
                                 basis=np.zeros((2, 1, 0)), eigvals=np.zeros((2, 0)), noise_var=np.array(VARS))


def normal_pdf(x, mean, var):
  return math.exp(-(x - mean) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)


def log_density_by_hand(x):
  return math.log(sum(w * normal_pdf(x, m, v) for w, m, v in zip(WEIGHTS, MEANS, VARS)))


def responsibilities_by_hand(x):
  joint = [w * normal_pdf(x, m, v) for w, m, v in zip(WEIGHTS, MEANS, VARS)]
  return [j / sum(joint) for j in joint]


def posterior_mean_by_hand(x_t, alpha_bar):
  """E[x0|x_t] = sum_k p(k|x_t) (mu_k + a s_k^2 (x_t - a mu_k) / (a^2 s_k^2 + 1 - a^2)), a = sqrt(alpha_bar)."""
  a = jnp.sqrt(alpha_bar)
  marginal_var = [alpha_bar * v + 1 - alpha_bar for v in VARS]
  log_joint = jnp.stack([math.log(w) - 0.5 * (x_t - a * m) ** 2 / mv - 0.5 * jnp.log(2 * math.pi * mv)
                         for w, m, mv in zip(WEIGHTS, MEANS, marginal_var)])
  resp = jax.nn.softmax(log_joint, axis=0)
  conditional = jnp.stack([m + a * v * (x_t - a * m) / mv for m, v, mv in zip(MEANS, VARS, marginal_var)])
  return jnp.sum(resp * conditional, axis=0)


def samples(seed, n, shift=0.0):
  x, _ = mixture_1d().sample(seed, n)
  return x + np.float32(shift)


class ExcessX0ErrorTest(absltest.TestCase):

  def test_a_denoiser_off_by_c_per_bucket_has_excess_c_squared(self):
    # x0_hat = (hand-written E[x0|x_t]) + c_b in log-SNR bucket b: the excess error is c_b^2 exactly per bucket,
    # which holds only if the metric compares against the exact posterior mean and routes t to its bucket.
    buckets = bias.make_buckets(SCHEDULE, 4, by="log_snr")
    lows = jnp.asarray([lo for lo, _ in buckets], jnp.float32)
    alphas_cumprod = jnp.asarray(SCHEDULE.alphas_cumprod, jnp.float32)

    def model_fn(params, x_t, t):
      bucket = jnp.searchsorted(lows, t, side="right") - 1
      alpha_bar = alphas_cumprod[jnp.round(t).astype(jnp.int32)].reshape(-1, 1, 1, 1)
      return posterior_mean_by_hand(x_t, alpha_bar) + params[bucket].reshape(-1, 1, 1, 1)

    x0 = samples(0, 40)
    shifts = np.array([0.1, -0.3, 0.05, 0.4], np.float32)
    result = exact_metrics.excess_x0_error(model_fn, jnp.asarray(shifts), mixture_1d(), SCHEDULE, "x0", x0,
                                           jax.random.key(3), num_buckets=4, batch_size=16)
    self.assertEqual([(r["t_min"], r["t_max"]) for r in result["buckets"]], list(buckets))
    self.assertEqual([r["count"] for r in result["buckets"]], [40] * 4)
    excess = np.array([r["excess_x0_error"] for r in result["buckets"]])
    np.testing.assert_allclose(excess, shifts.astype(np.float64) ** 2, rtol=1e-4, atol=1e-7)
    self.assertAlmostEqual(result["mean"], float(np.mean(shifts.astype(np.float64) ** 2)), places=6)
    # Re-scoring with other params reuses the compiled program and gives the new shifts' squares.
    zero = exact_metrics.excess_x0_error(model_fn, jnp.zeros(4), mixture_1d(), SCHEDULE, "x0", x0,
                                         jax.random.key(3), num_buckets=4, batch_size=16)
    self.assertLess(max(r["excess_x0_error"] for r in zero["buckets"]), 1e-9)

  def test_rejects_bad_shapes(self):
    with self.assertRaisesRegex(ValueError, "N, H, W, C"):
      exact_metrics.excess_x0_error(lambda p, x, t: x, None, mixture_1d(), SCHEDULE, "x0", np.zeros((3, 1)),
                                    jax.random.key(0))


class SampleMetricsTest(absltest.TestCase):

  def test_log_likelihood_gap_is_the_hand_log_density_difference(self):
    reference, generated = samples(1, 50), samples(2, 30, shift=0.2)
    metrics = exact_metrics.sample_metrics(mixture_1d(), generated, reference)
    by_hand = (np.mean([log_density_by_hand(float(x)) for x in reference.ravel()])
               - np.mean([log_density_by_hand(float(x)) for x in generated.ravel()]))   # D = 1: per dimension
    self.assertAlmostEqual(metrics["log_likelihood_gap"], by_hand, places=5)
    self.assertGreater(metrics["log_likelihood_gap"], 0.0)      # shifted samples are less likely

  def test_responsibilities_and_tv_by_hand(self):
    generated = samples(3, 25, shift=-0.3)
    resp = exact_metrics.responsibilities(mixture_1d(), generated)
    by_hand = np.array([responsibilities_by_hand(float(x)) for x in generated.ravel()])
    np.testing.assert_allclose(resp, by_hand, atol=1e-6)
    np.testing.assert_allclose(resp.sum(1), 1.0, atol=1e-6)
    tv = 0.5 * sum(abs(by_hand[:, k].mean() - WEIGHTS[k]) for k in range(2))
    metrics = exact_metrics.sample_metrics(mixture_1d(), generated, samples(4, 20))
    self.assertAlmostEqual(metrics["component_tv"], tv, places=6)
    np.testing.assert_allclose(metrics["component_frequencies"], by_hand.mean(0), atol=1e-6)
    # All samples at one component's mean: frequencies ~ (0, 1), TV = |0 - 0.3| / 2 + |1 - 0.7| / 2 = 0.3.
    self.assertAlmostEqual(exact_metrics.component_tv(mixture_1d(), np.full((5, 1, 1, 1), 0.8))["component_tv"],
                           0.3, places=5)

  def test_mmd_is_the_double_loop_with_the_median_bandwidth_of_the_true_samples(self):
    reference, generated = samples(5, 12), samples(6, 9, shift=0.4)
    y, x = reference.ravel().astype(float), generated.ravel().astype(float)
    bandwidth = float(np.median([abs(a - b) for a, b in itertools.combinations(y, 2)]))
    kernel = lambda a, b: math.exp(-(a - b) ** 2 / (2 * bandwidth ** 2))
    n, m = len(x), len(y)
    xx = sum(kernel(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(kernel(a, b) for a in x for b in y) / (n * m)
    metrics = exact_metrics.sample_metrics(mixture_1d(), generated, reference)
    self.assertAlmostEqual(metrics["mmd_bandwidth"], bandwidth, places=6)
    self.assertAlmostEqual(metrics["mmd2"], xx + yy - 2 * xy, places=6)
    # A given bandwidth is used as given.
    fixed = exact_metrics.sample_metrics(mixture_1d(), generated, reference, bandwidth=0.5)
    self.assertEqual(fixed["mmd_bandwidth"], 0.5)
    self.assertNotAlmostEqual(fixed["mmd2"], metrics["mmd2"], places=6)

  def test_non_finite_samples_are_refused(self):
    bad = samples(7, 4)
    bad[1] = np.nan
    with self.assertRaisesRegex(ValueError, "not finite"):
      exact_metrics.sample_metrics(mixture_1d(), bad, samples(8, 4))


if __name__ == "__main__":
  absltest.main()
