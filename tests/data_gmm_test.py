"""The Gaussian-mixture benchmark: exact log-density and posterior mean against independent computations."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from scipy import stats
from scipy.special import logsumexp

from debias_jax.data import gmm as gmm_lib


def tiny_gmm():
  return gmm_lib.make_gmm(image_size=2, channels=1, num_components=3, rank=2, noise_std=0.2, seed=5)


def dense_posterior_mean(mixture, x_t, alpha_bar):
  """float64 Bayes with dense covariances: p(k | x_t) and E[x0 | x_t, k] from the joint Gaussian per component."""
  a, s2 = np.sqrt(alpha_bar), 1.0 - alpha_bar
  x = np.asarray(x_t, np.float64).reshape(-1)
  log_w, cond = [], []
  for k in range(mixture.num_components):
    cov = mixture.component_covariance(k)
    marg = a * a * cov + s2 * np.eye(mixture.dim)
    log_w.append(np.log(mixture.weights[k]) + stats.multivariate_normal(a * mixture.means[k], marg).logpdf(x))
    cond.append(mixture.means[k] + a * cov @ np.linalg.solve(marg, x - a * mixture.means[k]))
  resp = np.exp(np.array(log_w) - logsumexp(log_w))
  return (resp @ np.array(cond)).reshape(mixture.shape)


class GaussianMixtureTest(parameterized.TestCase):

  def test_log_prob_matches_scipy(self):
    mixture = tiny_gmm()
    x, _ = mixture.sample(0, 6)
    expected = logsumexp([np.log(mixture.weights[k]) + stats.multivariate_normal(
        mixture.means[k], mixture.component_covariance(k)).logpdf(x.reshape(6, -1).astype(np.float64))
                          for k in range(3)], axis=0)
    np.testing.assert_allclose(jax.jit(mixture.log_prob)(x), expected, rtol=1e-5, atol=1e-4)

  def test_marginal_log_prob_matches_scipy(self):
    mixture = tiny_gmm()
    x = np.random.default_rng(1).standard_normal((4, 2, 2, 1)).astype(np.float32)
    ab = 0.3
    expected = logsumexp([np.log(mixture.weights[k]) + stats.multivariate_normal(
        np.sqrt(ab) * mixture.means[k], ab * mixture.component_covariance(k) + (1 - ab) * np.eye(4)).logpdf(
            x.reshape(4, -1).astype(np.float64)) for k in range(3)], axis=0)
    np.testing.assert_allclose(mixture.marginal_log_prob(x, ab), expected, rtol=1e-5, atol=1e-4)

  def test_default_mixture_log_prob_matches_scipy(self):
    mixture = gmm_lib.make_gmm(image_size=4)   # 8 components, rank 6, 3 channels: the default structure
    x, _ = mixture.sample(0, 3)
    expected = logsumexp([np.log(mixture.weights[k]) + stats.multivariate_normal(
        mixture.means[k], mixture.component_covariance(k)).logpdf(x.reshape(3, -1).astype(np.float64))
                          for k in range(8)], axis=0)
    np.testing.assert_allclose(mixture.log_prob(x), expected, rtol=2e-5)

  def test_posterior_mean_matches_monte_carlo(self):
    """Self-normalised importance sampling with the prior as proposal: E[x0 | x_t] = E[x0 w] / E[w]."""
    mixture = tiny_gmm()
    rng = np.random.default_rng(0)
    x0, _ = mixture.sample(rng, 400_000)
    flat = x0.reshape(len(x0), -1).astype(np.float64)
    for ab in (0.2, 0.6):
      x_t = (np.sqrt(ab) * mixture.sample(rng, 1)[0] + np.sqrt(1 - ab) * rng.standard_normal((1, 2, 2, 1)))
      log_w = -0.5 * np.sum((x_t.reshape(1, -1) - np.sqrt(ab) * flat) ** 2, axis=1) / (1 - ab)
      w = np.exp(log_w - log_w.max())
      estimate = (w @ flat) / w.sum()
      ess = w.sum() ** 2 / (w ** 2).sum()
      self.assertGreater(ess, 10_000)
      exact = mixture.posterior_mean(x_t.astype(np.float32), ab)
      np.testing.assert_allclose(np.asarray(exact).reshape(-1), estimate, atol=0.02)

  @parameterized.parameters(1e-4, 0.05, 0.5, 0.98, 0.9999)
  def test_posterior_mean_matches_dense_bayes(self, ab):
    mixture = gmm_lib.make_gmm(image_size=3, channels=3, num_components=4, rank=3, seed=2)
    rng = np.random.default_rng(3)
    x0, _ = mixture.sample(rng, 3)
    x_t = (np.sqrt(ab) * x0 + np.sqrt(1 - ab) * rng.standard_normal(x0.shape)).astype(np.float32)
    got = jax.jit(mixture.posterior_mean)(x_t, ab)
    for i in range(3):
      np.testing.assert_allclose(got[i], dense_posterior_mean(mixture, x_t[i], ab), atol=2e-4)

  def test_per_example_alpha_bar_batched_and_jitted(self):
    mixture = gmm_lib.make_gmm(image_size=4, channels=3)
    x_t = np.random.default_rng(0).standard_normal((5, 4, 4, 3)).astype(np.float32)
    ab = np.array([1e-4, 0.1, 0.5, 0.9, 0.999], np.float32)
    batched = jax.jit(mixture.posterior_mean)(x_t, jnp.asarray(ab))
    self.assertEqual(batched.shape, x_t.shape)
    self.assertEqual(batched.dtype, jnp.float32)
    for i in range(5):
      np.testing.assert_allclose(batched[i], mixture.posterior_mean(x_t[i:i + 1], ab[i])[0], rtol=1e-5, atol=1e-5)

  def test_limits(self):
    mixture = gmm_lib.make_gmm(image_size=4, channels=3)
    x0, _ = mixture.sample(0, 4)
    # Pure noise: the best guess of x0 is the data mean.
    noise = np.random.default_rng(0).standard_normal(x0.shape).astype(np.float32)
    np.testing.assert_allclose(mixture.posterior_mean(noise, 1e-9), np.broadcast_to(mixture.mean, x0.shape),
                               atol=1e-3)
    # Almost no noise: the posterior mean is almost x_t itself.
    ab = 1 - 1e-6
    x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise
    np.testing.assert_allclose(mixture.posterior_mean(x_t, ab), x0, atol=5e-3)

  def test_posterior_eps_identity(self):
    mixture = gmm_lib.make_gmm(image_size=4, channels=1)
    x_t = np.random.default_rng(0).standard_normal((3, 4, 4, 1)).astype(np.float32)
    ab = np.array([0.1, 0.5, 0.9], np.float32)
    x0 = mixture.posterior_mean(x_t, ab)
    eps = mixture.posterior_eps(x_t, ab)
    np.testing.assert_allclose(np.sqrt(ab)[:, None, None, None] * x0 + np.sqrt(1 - ab)[:, None, None, None] * eps,
                               x_t, atol=1e-5)

  def test_samples_have_the_stated_moments(self):
    mixture = gmm_lib.make_gmm(image_size=2, channels=3, num_components=3, rank=2)
    x, labels = mixture.sample(0, 200_000)
    np.testing.assert_allclose(np.bincount(labels) / len(labels), mixture.weights, atol=0.005)
    np.testing.assert_allclose(x.mean(axis=0), mixture.mean, atol=0.005)
    first = x[labels == 0].reshape(-1, mixture.dim).astype(np.float64)
    np.testing.assert_allclose(np.cov(first.T), mixture.component_covariance(0), atol=0.01)

  def test_deterministic_from_seed(self):
    a, b = gmm_lib.make_gmm(seed=4), gmm_lib.make_gmm(seed=4)
    for field in ("weights", "means", "basis", "eigvals", "noise_var"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(a.sample(9, 10)[0], b.sample(9, 10)[0])
    np.testing.assert_allclose(a.basis[0].T @ a.basis[0], np.eye(a.rank), atol=1e-12)

  def test_shape_is_checked(self):
    with self.assertRaisesRegex(ValueError, "8, 8, 3"):
      gmm_lib.make_gmm().posterior_mean(np.zeros((2, 4, 4, 3), np.float32), 0.5)


if __name__ == "__main__":
  absltest.main()
