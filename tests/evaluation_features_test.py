"""Feature spaces and the evaluation entry points: the stand-in network (accuracy, determinism, cache), pixel
features, reference statistics from the data pipeline, and evaluate_samples."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import os
import shutil
import tempfile
from unittest import mock

import numpy as np
from absl.testing import absltest
from sklearn import datasets as sk_datasets

from debias_jax import pixels
from debias_jax.evaluation import features
from debias_jax.evaluation import fid
from debias_jax.evaluation import inception
from tests import test_util

CHEAP = features.StandinRecipe(steps=20, batch_size=32)


def digits_config(image_size=8):
  return test_util.section("data", image_size=image_size)


def eval_config(cache_dir, **fields):
  return test_util.section("eval", **{"cache_dir": cache_dir, "batch_size": 128, **fields})


class FeaturesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.shared_cache_dir = tempfile.mkdtemp()
    cls.standin = features.standin_extractor(digits_config(), cache_dir=cls.shared_cache_dir, batch_size=64,
                                             recipe=CHEAP)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.shared_cache_dir, ignore_errors=True)
    super().tearDownClass()

  def setUp(self):
    super().setUp()
    self.cache_dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.cache_dir, ignore_errors=True)

  def test_standin_separates_held_out_digits(self):
    digits = sk_datasets.load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    labels = digits.target
    order = np.random.default_rng(123).permutation(len(labels))
    train, held_out = order[:1400], order[1400:]
    # A quarter of the default 400 steps keeps the test fast under the suite's -O0 XLA flags; the default recipe
    # reaches 0.98 held-out accuracy on digits.
    recipe = features.StandinRecipe(steps=100, holdout_fraction=0.0)
    model = features.train_standin(images[train], labels[train], recipe, num_classes=10)
    out = features.standin_apply_fn(model)(images[held_out])
    accuracy = np.mean(np.argmax(np.asarray(out["logits"]), axis=1) == labels[held_out])
    self.assertGreater(accuracy, 0.9)
    self.assertEqual(np.asarray(out["features"]).shape, (len(held_out), recipe.feature_dim))

  def test_standin_training_and_features_are_deterministic(self):
    images, labels, _ = features.load_dataset_arrays(digits_config(), max_examples=300)
    first = features.train_standin(images, labels, CHEAP)
    second = features.train_standin(images, labels, CHEAP)
    first_features = np.asarray(features.standin_apply_fn(first)(images)["features"])
    np.testing.assert_array_equal(first_features, np.asarray(features.standin_apply_fn(second)(images)["features"]))
    np.testing.assert_array_equal(first_features, np.asarray(features.standin_apply_fn(first)(images)["features"]))
    self.assertEqual(first.holdout_accuracy, second.holdout_accuracy)

  def test_standin_extractor_trains_once_then_reads_its_cache(self):
    config = digits_config()
    extractor = self.standin
    self.assertEqual(extractor.name, "standin")
    self.assertTrue(os.path.exists(extractor.info["cache_path"]))
    self.assertEqual(extractor.info["num_classes"], 10)
    images = features.load_dataset_arrays(config, max_examples=50)[0]
    expected = extractor.fn(images)
    with mock.patch.object(features, "train_standin", side_effect=AssertionError("retrained")):
      cached = features.standin_extractor(config, cache_dir=self.shared_cache_dir, batch_size=64, recipe=CHEAP)
    self.assertEqual(cached.key, extractor.key)
    np.testing.assert_array_equal(cached.fn(images), expected)
    with self.assertRaisesRegex(ValueError, "trained on images of shape"):
      extractor.fn(np.zeros((2, 16, 16, 1), np.float32))

  def test_pixel_reference_statistics_and_cache(self):
    config = digits_config()
    extractor = features.get_feature_extractor(eval_config(self.cache_dir, feature_space="pixels"), config)
    reference = features.reference_statistics(extractor, config, num_examples=300, cache_dir=self.cache_dir,
                                              batch_size=64)
    images = features.load_dataset_arrays(config, max_examples=300)[0]
    expected = fid.compute_statistics(images.reshape(300, -1))
    np.testing.assert_allclose(reference.stats.mu, expected.mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(reference.stats.sigma, expected.sigma, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(reference.features, images.reshape(300, -1))
    with mock.patch.object(features, "_eval_batches", side_effect=AssertionError("recomputed")):
      cached = features.reference_statistics(extractor, config, num_examples=300, cache_dir=self.cache_dir)
    np.testing.assert_array_equal(cached.stats.sigma, reference.stats.sigma)

  def test_evaluate_samples_on_the_data_itself(self):
    config = digits_config()
    extractor = features.pixel_extractor(batch_size=100)
    reference = features.reference_statistics(extractor, config, cache_dir=self.cache_dir)
    images = features.load_dataset_arrays(config)[0]
    metrics = features.evaluate_samples(extractor, images, reference)
    self.assertAlmostEqual(metrics["fid"], 0.0, delta=1e-6)
    self.assertEqual((metrics["precision"], metrics["recall"]), (1.0, 1.0))
    self.assertEqual(metrics["num_samples"], len(images))
    self.assertNotIn("inception_score", metrics)
    noise = np.random.default_rng(0).uniform(-1, 1, (200,) + images.shape[1:]).astype(np.float32)
    self.assertGreater(features.evaluate_samples(extractor, noise, reference)["fid"], 10.0)

  def test_evaluate_samples_from_npz_in_standin_space(self):
    config = digits_config()
    extractor = self.standin
    reference = features.reference_statistics(extractor, config, num_examples=500, cache_dir=self.cache_dir)
    images = features.load_dataset_arrays(config, max_examples=200)[0]
    path = fid.save_samples_npz(os.path.join(self.cache_dir, "samples.npz"), images)
    from_file = features.evaluate_samples(extractor, path, reference)
    from_arrays = features.evaluate_samples(extractor, pixels.to_uint8(images), reference)
    self.assertEqual(from_file, from_arrays)
    streamed = features.evaluate_samples(extractor, (images[i:i + 64] for i in range(0, 200, 64)), reference)
    self.assertEqual(streamed["num_samples"], 200)
    for key in ("fid", "inception_score", "precision", "recall"):
      self.assertAlmostEqual(streamed[key], features.evaluate_samples(extractor, images, reference)[key], places=8)
    self.assertBetween(from_file["inception_score"], 1.0, 10.0)
    self.assertLess(from_file["fid"], features.evaluate_samples(extractor, -images, reference)["fid"])

  def test_reference_from_npz_uses_only_matching_statistics(self):
    extractor = features.pixel_extractor()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    adm_path = os.path.join(self.cache_dir, "adm.npz")   # ADM's Inception statistics: another feature space
    np.savez(adm_path, arr_0=images, mu=np.zeros(2048), sigma=np.eye(2048))
    reference = features.reference_from_npz(extractor, adm_path)
    expected = fid.compute_statistics(pixels.to_float(images).reshape(30, -1))
    np.testing.assert_allclose(reference.stats.sigma, expected.sigma, rtol=1e-10, atol=1e-12)
    self.assertEqual(reference.features.shape, (30, 48))
    stats_only = os.path.join(self.cache_dir, "stats_only.npz")
    np.savez(stats_only, mu=np.zeros(2048), sigma=np.eye(2048))
    with self.assertRaisesRegex(ValueError, "no images"):
      features.reference_from_npz(extractor, stats_only)
    own = fid.save_reference_batch(os.path.join(self.cache_dir, "own.npz"), stats=expected,
                                   metadata={"feature_key": extractor.key})
    self.assertIs(features.reference_from_npz(extractor, own).features, None)
    np.testing.assert_array_equal(features.reference_from_npz(extractor, own).stats.mu, expected.mu)
    with self.assertRaisesRegex(ValueError, "different feature spaces"):
      features.evaluate_samples(extractor, images[:, :2, :2], reference)

  def test_evaluate_with_the_configured_reference(self):
    def evaluate(ev, data, samples):   # as --mode eval does: the configured extractor and reference
      extractor = features.get_feature_extractor(ev, data)
      return features.evaluate_samples(extractor, samples, features.reference_from_config(extractor, ev, data))

    config = digits_config()
    images = features.load_dataset_arrays(config, max_examples=400)[0]
    from_data = evaluate(eval_config(self.cache_dir, feature_space="pixels", num_reference=400), config, images)
    self.assertAlmostEqual(from_data["fid"], 0.0, delta=1e-6)
    reference = fid.save_reference_batch(os.path.join(self.cache_dir, "ref.npz"), images=images[:200])  # as uint8
    from_file = evaluate(eval_config(self.cache_dir, feature_space="pixels", reference_npz=reference), config,
                         pixels.to_uint8(images[:200]))
    self.assertAlmostEqual(from_file["fid"], 0.0, delta=1e-6)
    self.assertGreater(evaluate(eval_config(self.cache_dir, feature_space="pixels", reference_npz=reference), config,
                                images[200:])["fid"], 0.1)

  def test_feature_space_resolution_and_errors(self):
    resolve = features.resolve_feature_space
    self.assertEqual(resolve(eval_config(""), digits_config()), "standin")
    self.assertEqual(resolve(eval_config(""), test_util.section("data", name="photo_patches")), "standin")
    self.assertEqual(resolve(eval_config(""), test_util.section("data", name="gmm")), "pixels")
    self.assertEqual(resolve(eval_config(""), test_util.section("data", source="tfds", name="cifar10")), "inception")
    self.assertEqual(resolve(eval_config("", feature_space="pixels"), digits_config()), "pixels")
    self.assertEqual(resolve(eval_config(""), test_util.section("data", source="folder")), "inception")
    with self.assertRaisesRegex(ValueError, "Unknown eval.feature_space='fancy'"):
      resolve(eval_config("", feature_space="fancy"), digits_config())
    with self.assertRaisesRegex(inception.InceptionWeightsError, "eval.inception_weights is empty"):
      features.get_feature_extractor(eval_config("", feature_space="inception"), digits_config())
    with self.assertRaisesRegex(ValueError, "at least two classes"):
      features.train_standin(np.zeros((10, 8, 8, 1), np.float32), np.zeros(10, np.int32), CHEAP)


if __name__ == "__main__":
  absltest.main()
