"""The file-to-file evaluator: ADM-layout reference and sample batches, and which statistics it trusts."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import os
import shutil
import tempfile

import numpy as np
from absl.testing import absltest

from debias_jax import pixels as pixels_lib
from debias_jax.evaluation import evaluator
from debias_jax.evaluation import features
from debias_jax.evaluation import fid


class EvaluatorTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
    rng = np.random.default_rng(0)
    self.images = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    self.samples_path = fid.save_samples_npz(os.path.join(self.dir, "samples.npz"), self.images)

  def test_pixel_space_samples_equal_to_reference(self):
    reference = os.path.join(self.dir, "ref.npz")
    np.savez(reference, arr_0=self.images)
    metrics = evaluator.evaluate_files(reference, self.samples_path, feature_space="pixels")
    self.assertAlmostEqual(metrics["fid"], 0.0, delta=1e-6)
    self.assertEqual((metrics["precision"], metrics["recall"]), (1.0, 1.0))
    shifted = fid.save_samples_npz(os.path.join(self.dir, "shifted.npz"), self.images // 2)
    self.assertGreater(evaluator.evaluate_files(reference, shifted, feature_space="pixels")["fid"], 1.0)
    with self.assertRaisesRegex(ValueError, "needs --dataset"):
      evaluator.evaluate_files(reference, self.samples_path, feature_space="standin")

  def test_stored_statistics_are_used_only_in_inception_space(self):
    reference = os.path.join(self.dir, "adm_ref.npz")   # ADM's layout: images plus (Inception) statistics
    stats = fid.compute_statistics(pixels_lib.to_float(self.images).reshape(len(self.images), -1))
    np.savez(reference, arr_0=self.images, mu=stats.mu + 1.0, sigma=stats.sigma)
    # A stand-in for Inception that is cheap to run (flattened pixels under the name "inception"): the stored
    # statistics, not the arr_0 images, must be what the samples are compared against ...
    fake_inception = features.FeatureExtractor(name="inception", key="inception-test",
                                               apply=features.pixel_extractor().apply)
    loaded = features.reference_from_npz(fake_inception, reference)
    np.testing.assert_array_equal(loaded.stats.mu, stats.mu + 1.0)
    self.assertEqual(loaded.features.shape, (len(self.images), 192))   # recomputed from arr_0 for P/R
    metrics = features.evaluate_samples(fake_inception, self.samples_path, loaded)
    self.assertAlmostEqual(metrics["fid"], 192.0, places=6)   # |mu shift|^2 = 192 * 1^2
    # ... while pixel space (another feature space) recomputes them from arr_0.
    pixels = evaluator.evaluate_files(reference, self.samples_path, feature_space="pixels")
    self.assertLess(pixels["fid"], 1e-3)


if __name__ == "__main__":
  absltest.main()
