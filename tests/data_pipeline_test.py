"""Batch interface and embedded datasets: shapes, ranges, labels, determinism, resumption, per-process slices."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from sklearn import datasets as sk_datasets

from debias_jax import config_checks
from debias_jax import data
from debias_jax.data import embedded
from debias_jax.data import pipeline
from tests import test_util


GMM = dict(name="gmm", image_size=4, channels=3, gmm_num_train=50, gmm_num_test=30)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


class EmbeddedDatasetsTest(parameterized.TestCase):

  def test_digits_native_is_sklearn_scaled(self):
    info = data.dataset_info(test_util.section("data"))
    self.assertEqual((info["num_examples"], info["num_classes"], info["image_shape"]), (1797, 10, (8, 8, 1)))
    batch = next(data.create_eval_iterator(test_util.section("data"), batch_size=1797, process_index=0,
                                           process_count=1))
    digits = sk_datasets.load_digits()
    # The evaluation order is a fixed permutation: compare as sets of (label, image).
    expected = {(int(t), im.astype(np.float32).tobytes()) for t, im in zip(digits.target, digits.images / 8.0 - 1.0)}
    got = {(int(t), im[..., 0].tobytes()) for t, im in zip(batch["label"], batch["image"])}
    self.assertEqual(got, expected)
    self.assertTrue(batch["mask"].all())

  @parameterized.parameters("bilinear", "nearest", "pad")
  def test_digits_16(self, mode):
    small, labels = embedded.digits_arrays(8)
    big, big_labels = embedded.digits_arrays(16, mode)
    self.assertEqual(big.shape, (1797, 16, 16, 1))
    np.testing.assert_array_equal(big_labels, labels)
    self.assertGreaterEqual(big.min(), -1.0)
    self.assertLessEqual(big.max(), 1.0)
    if mode == "nearest":
      np.testing.assert_array_equal(big[:, ::2, ::2], small)
      np.testing.assert_array_equal(big[:, 1::2, 1::2], small)
    elif mode == "pad":
      np.testing.assert_array_equal(big[:, 4:12, 4:12], small)
      self.assertTrue(np.all(big[:, :4] == -1.0) and np.all(big[:, :, 12:] == -1.0))
    else:  # bilinear upsampling by 2 keeps each 2x2 block's mean close to the source pixel and the image mean
      np.testing.assert_allclose(big.mean(axis=(1, 2, 3)), small.mean(axis=(1, 2, 3)), atol=0.03)

  def test_digits_default_16_is_bilinear(self):
    config = test_util.section("data", image_size=16)
    source = pipeline.create_source(config)
    np.testing.assert_array_equal(source.images, embedded.digits_arrays(16, "bilinear")[0])

  @parameterized.parameters(16, 32)
  def test_photo_patches(self, size):
    config = test_util.section("data", name="photo_patches", image_size=size, channels=3)
    info = data.dataset_info(config)
    self.assertEqual(info["image_shape"], (size, size, 3))
    self.assertEqual(info["num_classes"], len(embedded.PHOTO_NAMES))
    self.assertEqual(info["label_names"], list(embedded.PHOTO_NAMES))
    self.assertGreater(info["num_examples"], 3000)
    images, labels = embedded.photo_patch_arrays(size)
    self.assertEqual(images.dtype, np.uint8)
    np.testing.assert_array_equal(np.unique(labels), np.arange(len(embedded.PHOTO_NAMES)))
    # Natural colour photographs: the channels differ (not grey) and the patches span the range.
    self.assertGreater(np.abs(images[..., 0].astype(int) - images[..., 2]).mean(), 5)
    self.assertLess(images.min(), 10)
    self.assertGreater(images.max(), 245)
    batch = next(data.create_train_iterator(config, global_batch_size=16, seed=0, process_index=0, process_count=1))
    self.assertEqual(batch["image"].dtype, np.float32)
    self.assertGreaterEqual(batch["image"].min(), -1.0)
    self.assertLessEqual(batch["image"].max(), 1.0)
    # uint8 levels map exactly onto k / 127.5 - 1.
    levels = (batch["image"] + 1.0) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)

  def test_photo_patches_are_deterministic(self):
    a, _ = embedded.photo_patch_arrays(16)
    embedded.photo_patch_arrays.cache_clear()
    b, _ = embedded.photo_patch_arrays(16)
    np.testing.assert_array_equal(a, b)

  def test_gmm_dataset(self):
    config = test_util.section("data", **GMM)
    info = data.dataset_info(config)
    mixture = info["gmm"]
    self.assertIs(mixture, data.get_gmm(config))
    self.assertEqual((info["num_examples"], info["num_classes"], info["image_shape"]), (50, 8, (4, 4, 3)))
    self.assertEqual(mixture.shape, (4, 4, 3))
    test_info = data.dataset_info(test_util.section("data", **GMM, split="test"))
    self.assertEqual(test_info["num_examples"], 30)
    train = pipeline.create_source(config).images
    test = pipeline.create_source(test_util.section("data", **GMM, split="test")).images
    self.assertFalse(np.any(np.all(train[:30] == test, axis=(1, 2, 3))))
    # Same seed -> same data; another seed -> another mixture.
    again = make_fresh_gmm_source(config)
    np.testing.assert_array_equal(again.images, train)
    other = data.get_gmm(test_util.section("data", **GMM, gmm_seed=1))
    self.assertFalse(np.allclose(other.means, mixture.means))


def make_fresh_gmm_source(config):
  embedded._gmm_samples.cache_clear()     # pylint: disable=protected-access
  embedded._cached_gmm.cache_clear()      # pylint: disable=protected-access
  pipeline._cached_source.cache_clear()   # pylint: disable=protected-access
  return pipeline.create_source(config)


def _validated_info(data_config):
  config_checks.validate_data(data_config)
  return data.dataset_info(data_config)


class ConfigValidationTest(parameterized.TestCase):

  @parameterized.parameters(
      (dict(source="hdf5"), "data.source"),
      (dict(name="cifar"), "data.name"),
      (dict(image_size=32), "data.image_size"),
      (dict(channels=3), "data.channels"),
      (dict(split="test"), "data.split"),
      (dict(name="photo_patches", image_size=8, channels=3), "data.image_size"),
      (dict(name="photo_patches", image_size=16, channels=1), "data.channels"),
      (dict(name="gmm", image_size=1, channels=3), "data.image_size"),
      (dict(name="gmm", image_size=4, channels=3, gmm_rank=100), "data.gmm_rank"),
      (dict(num_classes=7), "data.num_classes"),
      (dict(digits_upsample="lanczos", image_size=16), "data.digits_upsample"),
      (dict(source="folder", channels=4), "data.channels"),
      (dict(source="folder", data_dir=""), "data.data_dir"),
      (dict(source="tfds", name=""), "data.name"),
  )
  def test_bad_config_names_the_field(self, overrides, field):
    """Checked by config_checks.validate_data before any data is read, or, for what only the dataset can tell
    (its classes, an existing folder), when the source is opened."""
    with self.assertRaisesRegex(ValueError, field):
      _validated_info(test_util.section("data", **overrides))

  def test_valid_choices_are_listed(self):
    with self.assertRaisesRegex(ValueError, r"valid: 8, 16"):
      _validated_info(test_util.section("data", image_size=32))
    with self.assertRaisesRegex(ValueError, r"digits, photo_patches, gmm"):
      _validated_info(test_util.section("data", name="mnist"))

  def test_batch_size_must_split_over_processes(self):
    with self.assertRaisesRegex(ValueError, "divisible"):
      data.create_train_iterator(test_util.section("data"), global_batch_size=6, seed=0, process_index=0,
                                 process_count=4)
    with self.assertRaisesRegex(ValueError, "process_index"):
      data.create_train_iterator(test_util.section("data"), global_batch_size=8, seed=0, process_index=2,
                                 process_count=2)

  def test_get_gmm_needs_gmm(self):
    with self.assertRaisesRegex(ValueError, "gmm"):
      data.get_gmm(test_util.section("data"))


class TrainIteratorTest(parameterized.TestCase):

  def iterator(self, config, batch=8, seed=3, start_step=0, index=0, count=1):
    return data.create_train_iterator(config, global_batch_size=batch, seed=seed, start_step=start_step,
                                      process_index=index, process_count=count)

  def test_shapes_and_dtypes(self):
    patches = test_util.section("data", name="photo_patches", image_size=16, channels=3)
    batch = next(self.iterator(patches, batch=12, count=3))
    self.assertEqual(batch["image"].shape, (4, 16, 16, 3))
    self.assertEqual(batch["image"].dtype, np.float32)
    self.assertEqual(batch["label"].shape, (4,))
    self.assertEqual(batch["label"].dtype, np.int32)

  @parameterized.parameters(False, True)
  def test_resume_equals_uninterrupted(self, random_flip):
    config = test_util.section("data", **GMM, random_flip=random_flip)   # 50 examples, batch 8: steps straddle epochs
    full = take(self.iterator(config), 20)
    resumed = take(self.iterator(config, start_step=13), 7)
    for a, b in zip(full[13:], resumed):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])

  def test_process_defaults_come_from_jax(self):
    config = test_util.section("data", **GMM)
    implicit = next(data.create_train_iterator(config, global_batch_size=8, seed=3))    # jax: process 0 of 1
    np.testing.assert_array_equal(implicit["image"], next(self.iterator(config))["image"])

  def test_seed_changes_order(self):
    a = next(self.iterator(test_util.section("data"), seed=0))
    b = next(self.iterator(test_util.section("data"), seed=1))
    self.assertFalse(np.array_equal(a["image"], b["image"]))

  @parameterized.parameters(2, 4)
  def test_process_slices_partition_the_global_batch(self, count):
    config = test_util.section("data", **GMM, random_flip=True)
    single = take(self.iterator(config, batch=16), 10)
    shards = [take(self.iterator(config, batch=16, index=p, count=count), 10) for p in range(count)]
    for step in range(10):
      for key in ("image", "label"):
        joined = np.concatenate([shards[p][step][key] for p in range(count)])
        np.testing.assert_array_equal(joined, single[step][key])
    # Disjoint: within one epoch-aligned step no example appears in two processes' slices.
    source = pipeline.create_source(config)
    order = pipeline._EpochOrder(source.num_examples, 3)  # pylint: disable=protected-access
    local = 16 // count
    for p in range(count):
      for q in range(p + 1, count):
        mine = order(np.arange(p * local, (p + 1) * local))
        theirs = order(np.arange(q * local, (q + 1) * local))
        self.assertEmpty(np.intersect1d(mine, theirs))

  def test_every_example_once_per_epoch(self):
    config = test_util.section("data", **GMM)   # 50 examples
    batches = take(self.iterator(config, batch=10), 10)   # two epochs
    train = pipeline.create_source(config).images
    for epoch in range(2):
      seen = np.concatenate([b["image"] for b in batches[5 * epoch:5 * (epoch + 1)]])
      self.assertEqual(sorted(map(bytes, seen.reshape(50, -1))), sorted(map(bytes, train.reshape(50, -1))))
    first = np.concatenate([b["image"] for b in batches[:5]])
    second = np.concatenate([b["image"] for b in batches[5:]])
    self.assertFalse(np.array_equal(first, second))   # reshuffled each epoch

  def test_random_flip_mirrors_some_examples(self):
    plain = take(self.iterator(test_util.section("data", **GMM), batch=50), 2)
    flipped = take(self.iterator(test_util.section("data", **GMM, random_flip=True), batch=50), 2)
    for step, (a, b) in enumerate(zip(plain, flipped)):
      mask = pipeline.flip_mask(3, step, 50)
      self.assertTrue(0 < mask.sum() < 50)
      np.testing.assert_array_equal(b["image"][mask], a["image"][mask][:, :, ::-1])
      np.testing.assert_array_equal(b["image"][~mask], a["image"][~mask])
      np.testing.assert_array_equal(b["label"], a["label"])

  def test_batches_do_not_alias_the_dataset(self):
    config = test_util.section("data", **GMM, random_flip=True)
    before = pipeline.create_source(config).images.copy()
    batch = next(self.iterator(config))
    batch["image"][:] = 7.0
    np.testing.assert_array_equal(pipeline.create_source(config).images, before)


class EvalIteratorTest(absltest.TestCase):

  def test_one_padded_pass_split_over_processes(self):
    config = test_util.section("data", **GMM)   # 50 examples
    per_process = [list(data.create_eval_iterator(config, batch_size=16, process_index=p, process_count=2))
                   for p in range(2)]
    self.assertEqual([len(b) for b in per_process], [4, 4])
    images, masks = [], []
    for step in range(4):
      for p in range(2):
        batch = per_process[p][step]
        self.assertEqual(batch["image"].shape, (8, 4, 4, 3))
        self.assertEqual(batch["mask"].dtype, bool)
        images.append(batch["image"][batch["mask"]])
        masks.append(batch["mask"])
        np.testing.assert_array_equal(batch["image"][~batch["mask"]], 0.0)
    self.assertEqual(int(np.concatenate(masks).sum()), 50)
    train = pipeline.create_source(config).images
    self.assertEqual(sorted(map(bytes, np.concatenate(images))), sorted(map(bytes, train)))
    # Deterministic, flip-free and independent of the process split.
    single = list(data.create_eval_iterator(config, batch_size=16, process_index=0, process_count=1))
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in single]),
                                  np.concatenate([np.concatenate([per_process[0][s]["image"],
                                                                  per_process[1][s]["image"]]) for s in range(4)]))

  def test_num_examples_prefix(self):
    config = test_util.section("data", name="photo_patches", image_size=16, channels=3)
    batches = list(data.create_eval_iterator(config, batch_size=64, num_examples=100, process_index=0,
                                             process_count=1))
    self.assertEqual(len(batches), 2)
    self.assertEqual(int(sum(b["mask"].sum() for b in batches)), 100)
    # A uniform subset: the patches are stored photo by photo, yet 100 examples come from every photo.
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    self.assertLen(np.unique(labels), len(embedded.PHOTO_NAMES))
    with self.assertRaisesRegex(ValueError, "num_examples"):
      data.create_eval_iterator(config, batch_size=64, num_examples=5000, process_index=0, process_count=1)


if __name__ == "__main__":
  absltest.main()
