"""analysis/color.py: colour-shift identities on the 0-255 scale."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from debias_jax.analysis import color


class ColorShiftTest(parameterized.TestCase):

  @parameterized.parameters(1, 3)
  def test_a_shift_in_one_channel_is_reported_exactly(self, channels):
    images = np.random.default_rng(0).uniform(-0.5, 0.5, (64, 4, 4, channels)).astype(np.float64)
    shifted = images.copy()
    shifted[..., channels - 1] += 0.2                    # 0.2 * 127.5 = 25.5 on the 0-255 scale
    out = color.color_shift(shifted, images)
    expected = np.zeros(channels)
    expected[-1] = 25.5
    np.testing.assert_allclose(out["channel_shift"], expected, atol=1e-9)
    np.testing.assert_allclose(out["channel_w1"], expected, atol=1e-9)
    np.testing.assert_allclose(out["channel_fd"], 25.5 ** 2, rtol=1e-6)
    if channels == 3:
      self.assertAlmostEqual(out["b_minus_g_shift"], 25.5)
      self.assertAlmostEqual(out["r_minus_g_shift"], 0.0)
    else:
      self.assertNotIn("b_minus_g_shift", out)

  def test_channel_means_on_the_saved_scale(self):
    images = np.stack([np.full((2, 2, 3), -1.0), np.full((2, 2, 3), 1.0)])
    images[1, ..., 1] = 0.0
    np.testing.assert_allclose(color.channel_means(images), [[0, 0, 0], [255, 127.5, 255]])
    np.testing.assert_array_equal(color.channel_means(np.full((1, 2, 2, 3), 7, np.uint8)), [[7, 7, 7]])
    self.assertEqual(color.color_stats(images)["r_minus_g"], 63.75)


if __name__ == "__main__":
  absltest.main()
