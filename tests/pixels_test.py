"""pixels: uint8 <-> [-1, 1] conversions (exact both ways, ADM's rounding), image grids and PNG files."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import os
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

from debias_jax import pixels


class ConversionTest(absltest.TestCase):

  def test_uint8_conversion_round_trips(self):
    all_levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    np.testing.assert_array_equal(pixels.to_uint8(pixels.to_float(all_levels)), all_levels)
    np.testing.assert_array_equal(pixels.to_uint8(np.array([-1.5, -1.0, 0.0, 1.0, 2.0])), [0, 0, 128, 255, 255])
    with self.assertRaisesRegex(ValueError, "uint8 or float"):
      pixels.to_uint8(np.zeros(3, np.int32))

  def test_to_float_is_the_correctly_rounded_level(self):
    levels = np.arange(256, dtype=np.uint8)
    exact = levels.astype(np.float64) / 127.5 - 1.0          # float32 of the exact value, one rounding
    np.testing.assert_array_equal(pixels.to_float(levels), exact.astype(np.float32))
    self.assertEqual(pixels.to_float(levels).dtype, np.float32)
    between = np.array([0.6, 200.7]) / 127.5 - 1.0     # rounded to the nearest level, not truncated
    np.testing.assert_array_equal(pixels.to_uint8(between), [1, 201])
    with self.assertRaisesRegex(ValueError, "uint8 or float"):
      pixels.to_float(np.zeros(3, np.int64))


class GridTest(absltest.TestCase):

  def test_grid_places_each_image_inside_white_borders_and_the_png_reads_back(self):
    images = np.arange(5 * 2 * 3 * 1, dtype=np.uint8).reshape(5, 2, 3, 1)
    grid = pixels.image_grid(images, columns=3)
    self.assertEqual(grid.shape, (2 * 3 + 1, 3 * 4 + 1, 1))
    np.testing.assert_array_equal(grid[1:3, 1:4], images[0])
    np.testing.assert_array_equal(grid[4:6, 5:8], images[4])       # row 1, column 1
    np.testing.assert_array_equal(grid[4:6, 9:12], 255)            # the empty sixth tile
    self.assertTrue((grid[0] == 255).all() and (grid[:, 0] == 255).all())
    path = os.path.join(tempfile.mkdtemp(), "grid.png")
    pixels.save_png(path, grid, upscale=2)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid[..., 0].repeat(2, 0).repeat(2, 1))


if __name__ == "__main__":
  absltest.main()
