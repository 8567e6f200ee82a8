"""analysis/exact_denoiser.py: exact sample-quality scores on the Gaussian mixture (its exact denoiser is tested
against the bias measurements in analysis_bias_test.py)."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

from absl.testing import absltest
import numpy as np

from debias_jax.analysis import exact_denoiser
from debias_jax.data import gmm as gmm_lib


def mixture(num_components=4, seed=1):
  return gmm_lib.make_gmm(image_size=4, channels=3, num_components=num_components, rank=3, seed=seed)


class SampleQualityTest(absltest.TestCase):

  def test_mmd_known_answer(self):
    x = np.array([[0.0], [1.0]])
    self.assertAlmostEqual(exact_denoiser.mmd_squared(x, x, 1.0), np.exp(-0.5) - 1.0)

  def test_true_samples_score_as_true_and_shifted_samples_do_not(self):
    mix = mixture()
    reference, _ = mix.sample(0, 600)
    fresh, _ = mix.sample(1, 300)
    good = exact_denoiser.sample_quality(mix, fresh, reference)
    bad = exact_denoiser.sample_quality(mix, fresh + np.array([0.2, 0.0, 0.0], np.float32), reference)
    self.assertLess(abs(good["log_likelihood_gap"]), 0.02)
    self.assertLess(abs(good["mmd"]), 0.005)
    self.assertGreater(bad["log_likelihood_gap"], 0.2)
    self.assertGreater(bad["mmd"], 0.02)
    self.assertEqual(good["mmd_bandwidth"], bad["mmd_bandwidth"])


if __name__ == "__main__":
  absltest.main()
