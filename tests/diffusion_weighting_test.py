"""Exact tests of the loss weightings over t, defined once in eps space and converted per target."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts


from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from debias_jax.diffusion import schedules
from debias_jax.diffusion import weighting

LINEAR = schedules.Schedule.named("linear", 1000)
COSINE = schedules.Schedule.named("cosine", 1000)


class WeightingTest(parameterized.TestCase):

  def test_debias_known_values_on_the_linear_schedule(self):
    w = weighting.loss_weights(LINEAR, "debias")
    # To every digit the paper quotes (157.407 is itself rounded: 1e-6 relative would ask for digits not given).
    self.assertEqual(round(w[0], 7), 0.0100005)
    self.assertEqual(round(w[99], 6), 0.338828)
    self.assertEqual(round(w[999], 3), 157.407)
    self.assertEqual(round(w.mean(), 3), 17.817)

  def test_debias_on_the_cosine_schedule(self):
    w = weighting.loss_weights(COSINE, "debias")
    self.assertAlmostEqual(w.max() / 20291, 1.0, places=4)
    self.assertAlmostEqual(w.mean(), 24.81, places=2)

  def test_debias_is_p2_with_k0_gamma_half(self):
    np.testing.assert_allclose(weighting.loss_weights(LINEAR, "debias"),
                               weighting.loss_weights(LINEAR, "p2", p2_k=0.0, p2_gamma=0.5), rtol=1e-14)

  def test_eps_space_definitions(self):
    snr = LINEAR.snr
    cases = {"constant": np.ones(1000), "snr": 1 / snr, "p2": 1 / (1 + snr),
             "min_snr": np.minimum(snr, 5.0) / snr}
    for name, expected in cases.items():
      np.testing.assert_allclose(weighting.loss_weights(LINEAR, name), expected, rtol=1e-14, err_msg=name)

  @parameterized.parameters(*weighting.WEIGHTINGS)
  def test_x0_space_weight_is_the_same_for_every_target(self, name):
    snr = LINEAR.snr
    x0_space = weighting.loss_weights(LINEAR, name, "x0")
    np.testing.assert_allclose(weighting.loss_weights(LINEAR, name, "eps") * snr, x0_space, rtol=1e-12)
    np.testing.assert_allclose(weighting.loss_weights(LINEAR, name, "v") * (1 + snr), x0_space, rtol=1e-12)

  def test_inverse_snr_is_constant_x0_prediction(self):
    np.testing.assert_allclose(weighting.loss_weights(LINEAR, "snr", "x0"), np.ones(1000), rtol=1e-12)

  def test_normalize_gives_mean_one_in_eps_space(self):
    for target, factor in (("eps", 1.0), ("x0", LINEAR.snr), ("v", LINEAR.snr / (1 + LINEAR.snr))):
      w = weighting.loss_weights(LINEAR, "debias", target, normalize=True) / factor
      self.assertAlmostEqual(w.mean(), 1.0, places=12)

  def test_snr_clamp_bounds_the_weight(self):
    w = weighting.loss_weights(LINEAR, "debias", snr_clamp=100.0)
    self.assertAlmostEqual(w.min(), 0.1, places=12)
    self.assertAlmostEqual(w.max(), 10.0, places=12)
    inside = (LINEAR.snr > 0.01) & (LINEAR.snr < 100)
    self.assertGreater(inside.sum(), 500)
    np.testing.assert_allclose(w[inside], weighting.loss_weights(LINEAR, "debias")[inside], rtol=1e-14)

  def test_unknown_weighting_lists_the_valid_names(self):
    with self.assertRaisesRegex(ValueError, "constant, debias, snr, p2, min_snr"):
      weighting.loss_weights(LINEAR, "uniform")


if __name__ == "__main__":
  absltest.main()
