"""Exact tests of the noise schedules and their respacing."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts


from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from debias_jax.diffusion import schedules

LINEAR = schedules.Schedule.named("linear", 1000)
COSINE = schedules.Schedule.named("cosine", 1000)


class ScheduleTest(parameterized.TestCase):

  def test_linear_betas_match_definition(self):
    np.testing.assert_allclose(LINEAR.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(LINEAR.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-15)
    self.assertEqual(LINEAR.alphas_cumprod.dtype, np.float64)

  def test_linear_betas_scale_with_num_timesteps(self):
    betas = schedules.linear_betas(250)
    self.assertAlmostEqual(betas[0], 4e-4)
    self.assertAlmostEqual(betas[-1], 0.08)

  def test_cosine_alphas_cumprod_follow_the_closed_form(self):
    t = np.arange(1, 1001) / 1000
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    expected = f(t) / f(0)
    # Betas are capped at 0.999 only at the very last steps, where alpha_bar is ~0 anyway.
    np.testing.assert_allclose(COSINE.alphas_cumprod[:990], expected[:990], rtol=1e-10)
    self.assertLessEqual(COSINE.betas.max(), 0.999 + 1e-12)

  def test_snr_and_posterior_tables(self):
    s = LINEAR
    np.testing.assert_allclose(s.snr, s.alphas_cumprod / (1 - s.alphas_cumprod), rtol=1e-14)
    np.testing.assert_allclose(s.log_snr, np.log(s.snr), rtol=1e-12)
    # The posterior q(x_{t-1} | x_t, x0) by Bayes' rule on two Gaussians, written from scratch.
    a_prev, beta = s.alphas_cumprod_prev, s.betas
    with np.errstate(divide="ignore"):
      var = 1 / (1 / (1 - a_prev) + (1 - beta) / beta)
    np.testing.assert_allclose(s.posterior_variance[1:], var[1:], rtol=1e-10)
    self.assertEqual(s.posterior_variance[0], 0.0)
    np.testing.assert_allclose(s.posterior_mean_coef1[1:], (var * np.sqrt(a_prev) / (1 - a_prev))[1:], rtol=1e-10)
    self.assertAlmostEqual(s.posterior_mean_coef1[0], 1.0, places=12)  # x_{-1} is x0 itself
    np.testing.assert_allclose(s.posterior_mean_coef2[1:], (var * np.sqrt(1 - beta) / beta)[1:], rtol=1e-10)
    self.assertEqual(s.posterior_log_variance_clipped[0], np.log(s.posterior_variance[1]))

  def test_unknown_schedule_names_the_choices(self):
    with self.assertRaisesRegex(ValueError, "linear, cosine"):
      schedules.Schedule.named("quadratic")


class RespacingTest(parameterized.TestCase):

  @parameterized.parameters("100", "ddim50", "10,15,20", "1000", "ddim1000", 7)
  def test_respaced_chain_keeps_the_original_alphas_cumprod(self, spec):
    chain = LINEAR.respace(spec)
    np.testing.assert_array_equal(chain.alphas_cumprod, LINEAR.alphas_cumprod[chain.timesteps])
    np.testing.assert_allclose(np.cumprod(1 - chain.betas), chain.alphas_cumprod, rtol=1e-12)
    self.assertEqual(chain.num_train_timesteps, 1000)

  def test_ddim_spec_is_a_fixed_stride(self):
    np.testing.assert_array_equal(LINEAR.respace("ddim50").timesteps, np.arange(0, 1000, 20))
    np.testing.assert_array_equal(LINEAR.respace("ddim250").timesteps, np.arange(0, 1000, 4))

  def test_section_counts_select_guided_diffusions_indices(self):
    # Printed by guided_diffusion.respace.space_timesteps(1000, "10,15,20") and (1000, "25") (openai, 2021).
    expected = ([0, 37, 74, 111, 148, 185, 222, 259, 296, 333]
                + [334, 358, 381, 405, 429, 453, 476, 500, 524, 547, 571, 595, 619, 642, 666]
                + [667, 684, 702, 719, 737, 754, 772, 789, 807, 824, 842, 859, 877, 894, 912, 929, 947, 964,
                   982, 999])
    np.testing.assert_array_equal(schedules.space_timesteps(1000, "10,15,20"), expected)
    np.testing.assert_array_equal(
        schedules.space_timesteps(1000, "25"),
        [0, 42, 83, 125, 166, 208, 250, 291, 333, 375, 416, 458, 500, 541, 583, 624, 666, 708, 749, 791, 832,
         874, 916, 957, 999])

  def test_respacing_a_respaced_chain_maps_to_original_timesteps(self):
    chain = LINEAR.respace("100").respace("10")
    np.testing.assert_array_equal(chain.alphas_cumprod, LINEAR.alphas_cumprod[chain.timesteps])

  @parameterized.parameters("ddim999", "2000", "abc", "0")
  def test_bad_specs_fail_clearly(self, spec):
    with self.assertRaisesRegex(ValueError, "espacing|steps"):
      LINEAR.respace(spec)


if __name__ == "__main__":
  absltest.main()
