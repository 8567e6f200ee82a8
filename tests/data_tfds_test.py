"""TFDS source: a tiny dataset really prepared on disk (tfrecord and array_record), mock_data, and fast failures."""

import os
import shutil
import tempfile
import time

import ml_collections
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from debias_jax import data
from debias_jax.data import pipeline
from debias_jax.data import tfds_source

tf, tfds = tfds_source.import_tensorflow_datasets()
tfds.disable_progress_bar()

NUM_TRAIN = 13


def tiny_images(split_seed, n):
  rng = np.random.default_rng(split_seed)
  return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 3


class DebiasTinyImages(tfds.core.GeneratorBasedBuilder):
  """13 + 5 random 8x8 RGB images with 3 classes, generated locally (nothing to download)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, NUM_TRAIN), "test": self._generate_examples(1, 5)}

  def _generate_examples(self, seed, n):
    images, labels = tiny_images(seed, n)
    for i in range(n):
      yield i, {"image": images[i], "label": labels[i]}


def tfds_config(data_dir, name="debias_tiny_images", **overrides):
  config = ml_collections.ConfigDict({
      "source": "tfds", "name": name, "split": "train", "data_dir": data_dir, "image_size": 8, "channels": 3,
      "num_classes": 0, "random_flip": False, "shuffle_buffer": 0})
  for key, value in overrides.items():
    config[key] = value
  return config


class TfdsSourceTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dirs = {}
    for file_format in ("tfrecord", "array_record"):
      cls.dirs[file_format] = tempfile.mkdtemp()
      DebiasTinyImages(data_dir=cls.dirs[file_format], file_format=file_format).download_and_prepare()

  @classmethod
  def tearDownClass(cls):
    for d in cls.dirs.values():
      shutil.rmtree(d)
    super().tearDownClass()

  def tearDown(self):
    pipeline._SOURCE_CACHE.clear()   # pylint: disable=protected-access
    super().tearDown()

  @parameterized.parameters(("tfrecord", "in_memory"), ("array_record", "random_access"))
  def test_reads_the_prepared_examples(self, file_format, access):
    config = tfds_config(self.dirs[file_format], num_classes=3)
    info = data.dataset_info(config)
    self.assertEqual(info["tfds_access"], access)
    self.assertEqual((info["num_examples"], info["num_classes"], info["image_shape"]), (NUM_TRAIN, 3, (8, 8, 3)))
    batch = next(data.create_eval_iterator(config, batch_size=NUM_TRAIN, process_index=0, process_count=1))
    images, labels = tiny_images(0, NUM_TRAIN)
    levels = (batch["image"] + 1.0) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)          # exactly the uint8 levels
    got = {(int(l), np.round(im).astype(np.uint8).tobytes()) for im, l in zip(levels, batch["label"])}
    self.assertEqual(got, {(int(l), im.tobytes()) for im, l in zip(images, labels)})

  def test_both_backends_give_the_same_batches(self):
    batches = {}
    for file_format in ("tfrecord", "array_record"):
      config = tfds_config(self.dirs[file_format], random_flip=True)
      iterators = [data.create_train_iterator(config, global_batch_size=6, seed=5, process_index=p, process_count=2)
                   for p in range(2)]
      batches[file_format] = [[next(it) for _ in range(5)] for it in iterators]
    for p in range(2):
      for a, b in zip(batches["tfrecord"][p], batches["array_record"][p]):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])

  def test_resume_with_random_access(self):
    config = tfds_config(self.dirs["array_record"], random_flip=True)
    full = data.create_train_iterator(config, global_batch_size=4, seed=2, process_index=0, process_count=1)
    full = [next(full) for _ in range(8)]
    resumed = data.create_train_iterator(config, global_batch_size=4, seed=2, start_step=5, process_index=0,
                                         process_count=1)
    for expected in full[5:]:
      np.testing.assert_array_equal(next(resumed)["image"], expected["image"])

  def test_resizes_to_image_size(self):
    batch = next(data.create_train_iterator(tfds_config(self.dirs["array_record"], image_size=4),
                                            global_batch_size=2, seed=0, process_index=0, process_count=1))
    self.assertEqual(batch["image"].shape, (2, 4, 4, 3))

  def test_bad_split_channels_access_and_size(self):
    with self.assertRaisesRegex(ValueError, r"data.split='validation'.*valid: test, train"):
      data.dataset_info(tfds_config(self.dirs["tfrecord"], split="validation"))
    with self.assertRaisesRegex(ValueError, "data.channels=1"):
      data.dataset_info(tfds_config(self.dirs["tfrecord"], channels=1))
    with self.assertRaisesRegex(ValueError, "convert_format"):
      data.dataset_info(tfds_config(self.dirs["tfrecord"], tfds_access="random_access"))
    with self.assertRaisesRegex(ValueError, "tfds_max_in_memory_gb"):
      data.dataset_info(tfds_config(self.dirs["tfrecord"], tfds_max_in_memory_gb=1e-9))
    with self.assertRaisesRegex(ValueError, "data.num_classes=10"):
      data.dataset_info(tfds_config(self.dirs["tfrecord"], num_classes=10))
    # TFDS slicing works.
    self.assertEqual(data.dataset_info(tfds_config(self.dirs["tfrecord"], split="train[:5]+test"))["num_examples"],
                     10)


class TfdsFailuresTest(absltest.TestCase):

  def test_not_prepared_fails_fast_with_the_command(self):
    empty = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, empty)
    start = time.monotonic()
    with self.assertRaises(FileNotFoundError) as caught:
      data.create_train_iterator(tfds_config(empty, name="mnist", channels=1, image_size=28), global_batch_size=2,
                                 seed=0, process_index=0, process_count=1)
    self.assertLess(time.monotonic() - start, 10.0)
    message = str(caught.exception)
    self.assertIn(f"tfds build mnist --data_dir={empty}", message)
    self.assertIn("Nothing is downloaded", message)
    self.assertEqual([f for _, _, files in os.walk(empty) for f in files], [])   # nothing was downloaded

  def test_unknown_name_and_empty_data_dir(self):
    with self.assertRaisesRegex(ValueError, "data.name='no_such_dataset_xyz'"):
      data.dataset_info(tfds_config(tempfile.gettempdir(), name="no_such_dataset_xyz"))
    with self.assertRaisesRegex(ValueError, "data.data_dir is empty"):
      data.dataset_info(tfds_config("", name="mnist", channels=1))

  def test_mock_data(self):
    """tfds.testing.mock_data with real mnist metadata written to a temp dir, through both backends."""
    metadata_dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, metadata_dir)
    builder = tfds.builder("mnist", data_dir=metadata_dir)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name="train", shard_lengths=[20], num_bytes=0, filename_template=None)]))
    builder.info.set_file_format("tfrecord")
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=20, data_dir=metadata_dir, policy=tfds.testing.MockPolicy.USE_FILES):
      for access in ("in_memory", "random_access"):
        pipeline._SOURCE_CACHE.clear()   # pylint: disable=protected-access
        config = tfds_config(metadata_dir, name="mnist", channels=1, image_size=28, num_classes=10,
                             tfds_access=access, random_flip=True)
        self.assertEqual(data.dataset_info(config)["num_examples"], 20)
        batch = next(data.create_train_iterator(config, global_batch_size=8, seed=0, process_index=0,
                                                process_count=1))
        self.assertEqual(batch["image"].shape, (8, 28, 28, 1))
        self.assertEqual(batch["image"].dtype, np.float32)
        self.assertTrue(-1.0 <= batch["image"].min() < batch["image"].max() <= 1.0)
        self.assertTrue(np.all((batch["label"] >= 0) & (batch["label"] < 10)))
    pipeline._SOURCE_CACHE.clear()   # pylint: disable=protected-access

  def test_tensorflow_sees_no_gpu(self):
    self.assertEqual(tf.config.get_visible_devices("GPU"), [])


if __name__ == "__main__":
  absltest.main()
