"""Image-folder source: recursive listing, class labels, ADM resizing, and a clear error for an unreadable file."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import os
import shutil
import tempfile

import numpy as np
from absl.testing import absltest
from PIL import Image

from debias_jax import data
from debias_jax.data import images as images_lib
from debias_jax.data import pipeline
from tests import test_util


def folder_config(root, **fields):
  return test_util.section("data", **{"source": "folder", "data_dir": root, "channels": 3, **fields})


def solid(colour, size=(12, 10)):
  return Image.new("RGB", size, colour)


class AdmResizeTest(absltest.TestCase):

  def test_box_halvings_then_centre_crop(self):
    # 64x48 to 12: short side 48 -> 24 -> 12 by two box halvings, then no bicubic change (scale 1), then the
    # 16-wide result is cropped to columns 2..13. Each level hides a zero-mean 2x2 checkerboard that only an exact
    # 2x2 mean removes, with integer means so that no rounding is involved: the answer is exact.
    rng = np.random.default_rng(0)
    expected = rng.integers(16, 240, (12, 16, 3))

    def upsample_with_checkerboard(array, amplitude):
      checker = np.array([[1, -1], [-1, 1]])[:, :, None] * amplitude
      return np.kron(array, np.ones((2, 2, 1), int)) + np.tile(checker, (array.shape[0], array.shape[1], 1))

    array = upsample_with_checkerboard(upsample_with_checkerboard(expected, 7), 5).astype(np.uint8)
    out = images_lib.adm_resize(Image.fromarray(array), 12)
    self.assertEqual(out.shape, (12, 12, 3))
    np.testing.assert_array_equal(out, expected[:, 2:14])

  def test_box_halvings_of_random_pixels(self):
    array = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = images_lib.adm_resize(Image.fromarray(array), 12)
    blocks = array.reshape(12, 4, 16, 4, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(out, blocks[:, 2:14], atol=2.0)   # two rounded 2x2 means vs one 4x4 mean

  def test_bicubic_to_short_side_then_centre_crop(self):
    # 40x20 to 16: no halving (20 < 32), bicubic to 32x16, crop columns 8..23: left half red, right half blue.
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)
    array[:, 20:] = (0, 0, 255)
    out = images_lib.adm_resize(Image.fromarray(array), 16)
    self.assertEqual(out.shape, (16, 16, 3))
    np.testing.assert_array_equal(out[:, :6], np.broadcast_to([255, 0, 0], (16, 6, 3)))
    np.testing.assert_array_equal(out[:, 10:], np.broadcast_to([0, 0, 255], (16, 6, 3)))

  def test_tall_image_and_upsampling(self):
    array = np.full((30, 7, 3), 77, np.uint8)      # short side 7 < 16: bicubic upsampling of a constant
    out = images_lib.adm_resize(Image.fromarray(array), 16)
    np.testing.assert_array_equal(out, np.full((16, 16, 3), 77))


class FolderSourceTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root)
    colours = {"cats": [(255, 0, 0), (250, 10, 0)], "dogs": [(0, 255, 0)], "birds": [(0, 0, 255), (0, 10, 250)]}
    self.expected = {}
    for cls, cols in colours.items():
      for i, colour in enumerate(cols):
        sub = os.path.join(self.root, cls, "nested" if i else "")
        os.makedirs(sub, exist_ok=True)
        ext = (".png", ".JPEG", ".jpg")[i % 3]
        path = os.path.join(sub, f"im{i}{ext}")
        solid(colour, (16 + 4 * i, 12)).save(path, format="PNG" if ext == ".png" else "JPEG", quality=100)
        self.expected[colour] = cls
    with open(os.path.join(self.root, "cats", "notes.txt"), "w") as f:
      f.write("not an image, not listed")

  def test_listing_labels_and_values(self):
    info = data.dataset_info(folder_config(self.root))
    self.assertEqual(info["num_examples"], 5)
    self.assertEqual(info["label_names"], ["birds", "cats", "dogs"])
    self.assertEqual(info["num_classes"], 3)
    batch = next(data.create_eval_iterator(folder_config(self.root), batch_size=5, process_index=0,
                                           process_count=1))
    self.assertEqual(batch["image"].shape, (5, 8, 8, 3))
    for image, label in zip(batch["image"], batch["label"]):
      colour = np.round((image.mean(axis=(0, 1)) + 1) * 127.5)
      nearest = min(self.expected, key=lambda c: np.abs(np.array(c) - colour).sum())
      self.assertLess(np.abs(np.array(nearest) - colour).max(), 4)          # JPEG is lossy
      self.assertEqual(info["label_names"][label], self.expected[nearest])

  def test_grey_conversion_and_num_classes_check(self):
    batch = next(data.create_train_iterator(folder_config(self.root, channels=1, num_classes=3), global_batch_size=4,
                                            seed=0, process_index=0, process_count=1))
    self.assertEqual(batch["image"].shape, (4, 8, 8, 1))
    with self.assertRaisesRegex(ValueError, "data.num_classes=5.*3 classes"):
      data.dataset_info(folder_config(self.root, num_classes=5))

  def test_unlabelled_when_images_lie_in_the_root(self):
    solid((9, 9, 9)).save(os.path.join(self.root, "loose.png"))
    info = data.dataset_info(folder_config(self.root))
    self.assertEqual((info["num_examples"], info["num_classes"]), (6, 0))
    batch = next(data.create_eval_iterator(folder_config(self.root), batch_size=6, process_index=0,
                                           process_count=1))
    np.testing.assert_array_equal(batch["label"], 0)

  def test_unreadable_file_is_named(self):
    bad = os.path.join(self.root, "dogs", "broken.png")
    with open(bad, "wb") as f:
      f.write(b"\x89PNG\r\n\x1a\n this is not really a png")
    iterator = data.create_eval_iterator(folder_config(self.root), batch_size=6, process_index=0, process_count=1)
    with self.assertRaises(images_lib.UnreadableImageError) as caught:
      next(iterator)
    self.assertIn(bad, str(caught.exception))
    self.assertEqual(caught.exception.path, bad)
    train = data.create_train_iterator(folder_config(self.root), global_batch_size=6, seed=0, process_index=0,
                                       process_count=1)
    with self.assertRaisesRegex(ValueError, "broken.png"):
      next(train)

  def test_train_batches_are_deterministic_and_resumable(self):
    config = folder_config(self.root, random_flip=True)
    uninterrupted = data.create_train_iterator(config, global_batch_size=4, seed=1, process_index=0, process_count=1)
    first = [next(uninterrupted) for _ in range(4)]
    resumed = data.create_train_iterator(config, global_batch_size=4, seed=1, start_step=2, process_index=0,
                                         process_count=1)
    for expected in first[2:]:
      got = next(resumed)
      np.testing.assert_array_equal(got["image"], expected["image"])
      np.testing.assert_array_equal(got["label"], expected["label"])

  def test_missing_or_empty_folder(self):
    with self.assertRaisesRegex(FileNotFoundError, "not a directory"):
      data.dataset_info(folder_config(os.path.join(self.root, "nope")))
    empty = tempfile.mkdtemp(dir=self.root)
    with self.assertRaisesRegex(FileNotFoundError, "No .jpg"):
      data.dataset_info(folder_config(empty))

  def tearDown(self):
    pipeline._cached_source.cache_clear()   # pylint: disable=protected-access  (the folders change between tests)
    super().tearDown()


if __name__ == "__main__":
  absltest.main()
