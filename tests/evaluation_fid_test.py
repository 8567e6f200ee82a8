"""Known answers for the feature-space metrics: Fréchet distance, statistics, Inception Score, precision/recall,
and the npz files in ADM's layout."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import os
import pickle
import shutil
import tempfile
from unittest import mock

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from debias_jax import pixels
from debias_jax.evaluation import fid


def _random_spd(rng, dim, rank=None):
  a = rng.standard_normal((dim, rank or dim))
  return a @ a.T / dim + (0 if rank else 0.1 * np.eye(dim))


def _psd_sqrt(matrix):
  w, v = np.linalg.eigh(matrix)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _eigen_frechet(mu1, s1, mu2, s2):
  """Independent formula: tr((S1 S2)^1/2) = sum of sqrt(eig(S1^1/2 S2 S1^1/2)), a symmetric PSD matrix."""
  r = _psd_sqrt(s1)
  tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


class FrechetDistanceTest(parameterized.TestCase):

  def test_identical_statistics_give_zero(self):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(32), _random_spd(rng, 32)
    self.assertAlmostEqual(fid.frechet_distance(mu, sigma, mu, sigma), 0.0, delta=1e-6)

  def test_diagonal_covariances_closed_form(self):
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    a, b = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    self.assertAlmostEqual(fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, places=10)

  def test_commuting_covariances_closed_form(self):
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    a, b = rng.uniform(0.1, 5.0, 10), rng.uniform(0.1, 5.0, 10)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fid.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    self.assertAlmostEqual(got, expected, places=9)

  def test_scalar_gaussians(self):
    # N(0, 4) vs N(3, 1): 9 + (2 - 1)^2 = 10.
    self.assertAlmostEqual(fid.frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]), 10.0, places=12)

  @parameterized.parameters(6, 40)
  def test_non_commuting_matches_eigen_formula(self, dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim)
    self.assertGreater(np.abs(s1 @ s2 - s2 @ s1).max(), 0.1)  # really non-commuting
    self.assertAlmostEqual(fid.frechet_distance(mu1, s1, mu2, s2), _eigen_frechet(mu1, s1, mu2, s2), places=8)

  def test_rank_deficient_covariances_from_few_samples(self):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((12, 30)), rng.standard_normal((9, 30)) + 0.5
    s1, s2 = fid.compute_statistics(x), fid.compute_statistics(y)
    got = fid.statistics_distance(s1, s2)
    self.assertTrue(np.isfinite(got))
    self.assertAlmostEqual(got, _eigen_frechet(s1.mu, s1.sigma, s2.mu, s2.sigma), delta=1e-4 * abs(got))

  def test_invalid_covariance_raises(self):
    # An indefinite "covariance" has no real square root of the product: a clear error, not a silent .real.
    s = np.diag([1.0, -4.0])
    with self.assertRaisesRegex(ValueError, "imaginary component"):
      fid.frechet_distance(np.zeros(2), s, np.zeros(2), np.eye(2))

  def test_shape_mismatch_raises(self):
    with self.assertRaisesRegex(ValueError, "differ in length"):
      fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with self.assertRaisesRegex(ValueError, "do not match"):
      fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with self.assertRaisesRegex(ValueError, "NaN"):
      fid.frechet_distance(np.array([0.0, np.nan]), np.eye(2), np.zeros(2), np.eye(2))


class StatisticsTest(absltest.TestCase):

  def test_compute_statistics_is_mean_and_unbiased_covariance(self):
    x = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]], np.float32)
    stats = fid.compute_statistics(x)
    np.testing.assert_allclose(stats.mu, [3.0, 2.0])
    # deviations (-2, 0), (0, -2), (2, 2): sums of products / (n - 1).
    np.testing.assert_allclose(stats.sigma, [[4.0, 2.0], [2.0, 4.0]])
    self.assertEqual(stats.mu.dtype, np.float64)
    self.assertEqual(stats.num_examples, 3)

  def test_accumulator_equals_batch_statistics_with_large_mean(self):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 7)) * rng.uniform(0.5, 2, 7) + 1e4
    accumulator = fid.StatisticsAccumulator()
    for start, stop in ((0, 1), (1, 300), (300, 301), (301, 1000)):
      accumulator.update(x[start:stop])
    accumulator.update(x[:0])
    got, expected = accumulator.result(), fid.compute_statistics(x)
    self.assertEqual(got.num_examples, 1000)
    np.testing.assert_allclose(got.mu, expected.mu, rtol=1e-14)
    np.testing.assert_allclose(got.sigma, expected.sigma, rtol=1e-9, atol=1e-9)

  def test_too_few_examples_raise(self):
    with self.assertRaisesRegex(ValueError, "at least 2"):
      fid.compute_statistics(np.zeros((1, 3)))
    with self.assertRaisesRegex(ValueError, "2-D"):
      fid.compute_statistics(np.zeros((4,)))


class InceptionScoreTest(absltest.TestCase):

  def test_uniform_predictions_score_one(self):
    self.assertAlmostEqual(fid.inception_score(np.zeros((50, 1008))), 1.0, places=12)

  def test_confident_distinct_predictions_score_num_classes(self):
    num_classes = 10
    logits = 200.0 * np.eye(num_classes)[np.arange(60) % num_classes]  # softmax underflows to exact 0s
    self.assertAlmostEqual(fid.inception_score(logits), num_classes, places=9)

  def test_hand_computed_two_class_value(self):
    p = np.array([[0.9, 0.1], [0.1, 0.9]])
    kl = 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5)
    self.assertAlmostEqual(fid.inception_score(np.log(p)), np.exp(kl), places=12)

  def test_splits_are_scored_separately_and_averaged(self):
    # Split 1: all class 0 (score 1); split 2: classes 0 and 1 evenly (score 2) -> mean 1.5.
    logits = 100.0 * np.eye(2)[[0, 0, 0, 1]]
    self.assertAlmostEqual(fid.inception_score(logits, split_size=2), 1.5, places=9)
    self.assertAlmostEqual(fid.inception_score(logits), np.exp(0.75 * np.log(4 / 3) + 0.25 * np.log(4)), places=9)


class PrecisionRecallTest(absltest.TestCase):

  def test_identical_sets_have_full_precision_and_recall(self):
    x = np.random.default_rng(0).standard_normal((200, 16))
    self.assertEqual(fid.precision_recall(x, x), (1.0, 1.0))

  def test_disjoint_far_apart_sets_have_zero_precision_and_recall(self):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((100, 8)), rng.standard_normal((120, 8)) + 100.0
    self.assertEqual(fid.precision_recall(x, y), (0.0, 0.0))

  def test_hand_computed_one_dimensional_example(self):
    reference = np.arange(10.0)[:, None]
    # Squared 3rd-neighbour radii: 9 at the ends (0 and 9), 4 at 1..8.
    np.testing.assert_allclose(fid.manifold_radii(reference), [9, 4, 4, 4, 4, 4, 4, 4, 4, 9])
    samples = np.array([11.9, 12.5, 4.3, -3.5, -2.9])[:, None]   # inside: 11.9 (by 9), 4.3, -2.9 (by 0)
    precision, recall = fid.precision_recall(reference, samples)
    self.assertAlmostEqual(precision, 3 / 5)
    self.assertAlmostEqual(recall, 1.0)   # five spread samples have huge 3-NN balls

  def test_matches_brute_force_with_small_blocks(self):
    rng = np.random.default_rng(2)
    ref, samples = rng.standard_normal((37, 5)), rng.standard_normal((23, 5)) * 1.3 + 0.4
    k = 3

    def brute_radii(x):
      d = ((x[:, None] - x[None]) ** 2).sum(-1)
      return np.sort(d, axis=1)[:, k]

    def brute_inside(points, centres, radii):
      d = ((points[:, None] - centres[None]) ** 2).sum(-1)
      return np.mean(np.any(d <= radii[None], axis=1))

    ref_radii = brute_radii(ref)
    np.testing.assert_allclose(fid.manifold_radii(ref, k, max_block_elements=64), ref_radii, rtol=1e-5)
    got = fid.fraction_inside(samples, ref, ref_radii, max_block_elements=50)
    self.assertAlmostEqual(got, brute_inside(samples, ref, ref_radii))
    precision, recall = fid.precision_recall(ref, samples, k)
    self.assertAlmostEqual(precision, brute_inside(samples, ref, ref_radii))
    self.assertAlmostEqual(recall, brute_inside(ref, samples, brute_radii(samples)))
    self.assertGreater(precision, 0.0)
    self.assertLess(precision, 1.0)

  def test_reference_radii_are_computed_once_per_reference_and_k(self):
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((40, 4)).astype(np.float32)
    with mock.patch.object(fid, "manifold_radii", wraps=fid.manifold_radii) as computed:
      first = fid.reference_radii(ref, 3)
      again = fid.reference_radii(ref.copy(), 3)           # same content, another array
      other_k = fid.reference_radii(ref, 2)
      changed = ref.copy()
      changed[0, 0] += 1.0
      other_data = fid.reference_radii(changed, 3)
    self.assertEqual(computed.call_count, 3)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_allclose(first, fid.manifold_radii(ref, 3))
    np.testing.assert_allclose(other_k, fid.manifold_radii(ref, 2))
    np.testing.assert_allclose(other_data, fid.manifold_radii(changed, 3))

  def test_too_few_points_raise(self):
    with self.assertRaisesRegex(ValueError, "more than 3"):
      fid.manifold_radii(np.zeros((3, 2)))


class NpzTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

  def test_samples_round_trip(self):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    path = fid.save_samples_npz(os.path.join(self.dir, "samples.npz"), pixels.to_float(images), labels=np.arange(5))
    np.testing.assert_array_equal(fid.load_samples_npz(path), images)
    with np.load(path) as data:   # the layout ADM's evaluator and image_sample.py use
      self.assertEqual(sorted(data.files), ["arr_0", "arr_1"])
      self.assertEqual(data["arr_0"].dtype, np.uint8)
      np.testing.assert_array_equal(data["arr_1"], np.arange(5))

  def test_reference_batch_round_trip(self):
    rng = np.random.default_rng(1)
    stats = fid.compute_statistics(rng.standard_normal((20, 6)))
    spatial = fid.compute_statistics(rng.standard_normal((20, 3)))
    features = rng.standard_normal((20, 6)).astype(np.float32)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    path = fid.save_reference_batch(os.path.join(self.dir, "ref.npz"), stats=stats, spatial_stats=spatial,
                                    images=images, features=features, metadata={"feature_key": "abc"})
    loaded = fid.load_reference_batch(path)
    np.testing.assert_array_equal(loaded.stats.mu, stats.mu)
    np.testing.assert_array_equal(loaded.stats.sigma, stats.sigma)
    self.assertEqual(loaded.stats.num_examples, 20)
    np.testing.assert_array_equal(loaded.spatial_stats.sigma, spatial.sigma)
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.features, features)
    self.assertEqual(loaded.metadata, {"feature_key": "abc"})

  def test_reads_adm_reference_layout(self):
    rng = np.random.default_rng(2)
    mu, sigma = rng.standard_normal(4), _random_spd(rng, 4)
    mu_s, sigma_s = rng.standard_normal(3), _random_spd(rng, 3)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    path = os.path.join(self.dir, "VIRTUAL_like.npz")
    np.savez(path, arr_0=images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    loaded = fid.load_reference_batch(path)
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.stats.mu, mu)
    np.testing.assert_array_equal(loaded.spatial_stats.mu, mu_s)
    np.testing.assert_array_equal(loaded.spatial_stats.sigma, sigma_s)
    self.assertIsNone(loaded.features)
    self.assertEqual(loaded.metadata, {})
    images_only = os.path.join(self.dir, "images_only.npz")
    np.savez(images_only, images)   # positional -> arr_0, like ADM's sample batches
    self.assertIsNone(fid.load_reference_batch(images_only).stats)

  def test_bad_files_raise_clear_errors(self):
    with self.assertRaisesRegex(FileNotFoundError, "No such"):
      fid.load_samples_npz(os.path.join(self.dir, "missing.npz"))
    wrong = os.path.join(self.dir, "wrong.npz")
    np.savez(wrong, images=np.zeros((1, 2, 2, 3), np.uint8))
    with self.assertRaisesRegex(ValueError, "no `arr_0`"):
      fid.load_samples_npz(wrong)
    with self.assertRaisesRegex(ValueError, "not a reference batch"):
      fid.load_reference_batch(wrong)
    garbage = os.path.join(self.dir, "garbage.npz")
    with open(garbage, "wb") as f:
      pickle.dump({"a": 1}, f)
    with self.assertRaisesRegex(ValueError, "not a readable .npz"):
      fid.load_samples_npz(garbage)
    floats = os.path.join(self.dir, "floats.npz")
    np.savez(floats, np.zeros((1, 2, 2, 3), np.float32))
    with self.assertRaisesRegex(ValueError, "uint8 NHWC"):
      fid.load_samples_npz(floats)
    with self.assertRaisesRegex(ValueError, "end in .npz"):
      fid.save_samples_npz(os.path.join(tempfile.gettempdir(), "x.np"), np.zeros((1, 2, 2, 3), np.uint8))


if __name__ == "__main__":
  absltest.main()
