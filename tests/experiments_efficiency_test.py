"""Iterations to match the baseline, and the per-seed statistics and verdict rule of the comparison."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import math

from absl.testing import absltest
import numpy as np

from debias_jax.experiments import efficiency

STEPS = [200, 400, 600, 800, 1000]
CONSTANT = [5.0, 3.1, 2.2, 1.61, 1.3]        # a decreasing error curve (e.g. MMD² per checkpoint)


class IterationsToMatchTest(absltest.TestCase):

  def test_planted_half_budget(self):
    # An arm that is constant's own run with every checkpoint relabelled to half the iterations.
    half = [s / 2 for s in STEPS]
    out = efficiency.iterations_to_match(STEPS, CONSTANT, CONSTANT, half)
    self.assertEqual(out["fraction"], 0.5)
    self.assertEqual(out["iteration"], 500.0)
    self.assertEqual((out["target"], out["budget"]), (1.3, 1000.0))
    # The same with a higher-is-better metric (e.g. a log-likelihood).
    out = efficiency.iterations_to_match(STEPS, [-v for v in CONSTANT], [-v for v in CONSTANT], half,
                                         higher_is_better=True)
    self.assertEqual(out["fraction"], 0.5)
    # The baseline against itself needs its whole budget.
    self.assertEqual(efficiency.iterations_to_match(STEPS, CONSTANT, CONSTANT)["fraction"], 1.0)

  def test_interpolates_linearly_between_checkpoints(self):
    arm = [4.0, 2.0, 1.0, 0.9, 0.8]
    # First at or below 1.3 at step 600 (1.0); step 400 had 2.0: 400 + (1.3 - 2.0) / (1.0 - 2.0) * 200 = 540.
    out = efficiency.iterations_to_match(STEPS, CONSTANT, arm)
    self.assertAlmostEqual(out["iteration"], 540.0, places=9)
    self.assertAlmostEqual(out["fraction"], 0.54, places=12)
    out = efficiency.iterations_to_match(STEPS, [-v for v in CONSTANT], [-v for v in arm], higher_is_better=True)
    self.assertAlmostEqual(out["iteration"], 540.0, places=9)
    # The arm's own checkpoint steps: between (300, 2.0) and (450, 1.0): 300 + 0.7 * 150 = 405.
    out = efficiency.iterations_to_match(STEPS, CONSTANT, [4.0, 2.0, 1.0], [150, 300, 450])
    self.assertAlmostEqual(out["iteration"], 405.0, places=9)
    self.assertAlmostEqual(out["fraction"], 0.405, places=12)

  def test_first_checkpoint_and_non_finite_values(self):
    self.assertEqual(efficiency.iterations_to_match(STEPS, CONSTANT, [1.0, 5, 5, 5, 5])["iteration"], 200.0)
    # A NaN evaluation never counts as reached, and is no point to interpolate from.
    self.assertEqual(efficiency.iterations_to_match(STEPS, CONSTANT, [9, math.nan, 1.0, 1, 1])["iteration"],
                     600.0)

  def test_never_reached_is_none(self):
    out = efficiency.iterations_to_match(STEPS, CONSTANT, [6.0, 4.0, 3.0, 2.0, 1.31])
    self.assertIsNone(out["iteration"])
    self.assertIsNone(out["fraction"])
    self.assertEqual(out["target"], 1.3)
    # Lower values never reach a higher-is-better target either.
    self.assertIsNone(efficiency.iterations_to_match(STEPS, CONSTANT, [0.0] * 5, higher_is_better=True)["fraction"])

  def test_bad_curves_are_refused(self):
    with self.assertRaisesRegex(ValueError, "strictly increasing"):
      efficiency.iterations_to_match([200, 200], [1.0, 1.0], [1.0, 1.0])
    with self.assertRaisesRegex(ValueError, "equal length"):
      efficiency.iterations_to_match(STEPS, CONSTANT, [1.0, 2.0])
    with self.assertRaisesRegex(ValueError, "nothing to match"):
      efficiency.iterations_to_match(STEPS, CONSTANT[:-1] + [math.nan], CONSTANT)


class SeedStatisticsTest(absltest.TestCase):

  def test_mean_sd_and_paired_differences(self):
    stats = efficiency.mean_sd([1.0, 2.0, 3.0, 4.0])
    self.assertEqual(stats["mean"], 2.5)
    self.assertAlmostEqual(stats["sd"], math.sqrt(5.0 / 3.0), places=12)
    self.assertIsNone(efficiency.mean_sd([3.0])["sd"])
    self.assertEqual(efficiency.paired_differences({0: 1.5, 1: 2.0}, {1: 3.0, 0: 1.0}), {0: 0.5, 1: -1.0})
    with self.assertRaisesRegex(ValueError, "same seeds"):
      efficiency.paired_differences({0: 1.0, 1: 2.0}, {0: 1.0, 2: 2.0})

  def test_sampling_seed_spread(self):
    # Mean over training seeds per sampling seed: (2, 4); their s.d. (ddof 1) is sqrt(2).
    self.assertAlmostEqual(efficiency.sampling_seed_spread(np.array([[1.0, 2.0], [3.0, 6.0]])), math.sqrt(2),
                           places=12)
    with self.assertRaisesRegex(ValueError, ">= 2 sampling seeds"):
      efficiency.sampling_seed_spread(np.ones((3, 1)))


class VerdictTest(absltest.TestCase):

  def test_supported_and_contradicted(self):
    # mean -3, seed spread sd/sqrt(n) = sqrt(2)/sqrt(2) = 1, sampling 1: noise sqrt(2) and 3 > 2 sqrt(2).
    out = efficiency.verdict([-2.0, -4.0], 1.0, expected_sign=-1)
    self.assertEqual(out["verdict"], efficiency.SUPPORTED)
    self.assertAlmostEqual(out["seed_spread"], 1.0, places=12)
    self.assertAlmostEqual(out["noise"], math.sqrt(2.0), places=12)
    self.assertEqual((out["mean"], out["n"]), (-3.0, 2))
    self.assertEqual(efficiency.verdict([-2.0, -4.0], 1.0, expected_sign=1)["verdict"], efficiency.CONTRADICTED)

  def test_not_supported(self):
    # Too small against the noise: sampling 1.4 makes noise sqrt(1 + 1.96) = 1.72 and 3 < 3.44.
    self.assertEqual(efficiency.verdict([-2.0, -4.0], 1.4, -1)["verdict"], efficiency.NOT_SUPPORTED)
    # Large, but the signs disagree (and a zero has no sign).
    self.assertEqual(efficiency.verdict([-5.0, -6.0, 0.1], 0.0, -1)["verdict"], efficiency.NOT_SUPPORTED)
    self.assertEqual(efficiency.verdict([-5.0, -6.0, 0.0], 0.0, -1)["verdict"], efficiency.NOT_SUPPORTED)
    # Identical differences with no sampling noise: noise 0, every sign agrees: supported.
    self.assertEqual(efficiency.verdict([-0.1, -0.1, -0.1], 0.0, -1)["verdict"], efficiency.SUPPORTED)
    self.assertEqual(efficiency.verdict([-0.1, -0.1, -0.1], 0.1, -1)["verdict"], efficiency.NOT_SUPPORTED)
    # One seed can never support a claim: its seed spread is unknown.
    one = efficiency.verdict([-10.0], 0.0, -1)
    self.assertEqual(one["verdict"], efficiency.NOT_SUPPORTED)
    self.assertIsNone(one["seed_spread"])

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, "expected_sign"):
      efficiency.verdict([1.0, 2.0], 0.0, 0)
    with self.assertRaisesRegex(ValueError, "finite"):
      efficiency.verdict([1.0, math.nan], 0.0, 1)
    with self.assertRaisesRegex(ValueError, "sampling_spread"):
      efficiency.verdict([1.0, 2.0], -1.0, 1)


if __name__ == "__main__":
  absltest.main()
