"""The bias study: exact-denoiser known answers on the Gaussian mixture, colour-shift identities, and --mode analyze."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from PIL import Image

from debias_jax import config_checks
from debias_jax.analysis import bias
from debias_jax.analysis import color
from debias_jax.analysis import exact_denoiser
from debias_jax.analysis import study
from debias_jax.data import gmm as gmm_lib
from debias_jax.data import pipeline
from debias_jax.diffusion.schedules import Schedule
from debias_jax.models import unet
from tests import test_util

SCHEDULE = Schedule.named("linear", 1000)
BUCKETS = bias.make_buckets(SCHEDULE, 5)


def mixture(num_components=4, seed=1):
  return gmm_lib.make_gmm(image_size=4, channels=3, num_components=num_components, rank=3, seed=seed)


# x0_error_terms jitted with the closures and tables static, as suits the analytic model functions of these tests.
x0_error_by_bucket = jax.jit(bias.x0_error_terms, static_argnames=("model_fn", "schedule", "target", "buckets",
                                                                   "learn_sigma", "reference_fn"))


def errors(mix, x0, model_fn, buckets=BUCKETS, key=0):
  sums = x0_error_by_bucket(model_fn, SCHEDULE, "eps", x0, jax.random.key(key), buckets,
                            reference_fn=exact_denoiser.posterior_mean_fn(mix, SCHEDULE))
  return bias.finalize_sums(sums)


class BucketTest(parameterized.TestCase):

  @parameterized.parameters("t", "log_snr")
  def test_buckets_partition_the_timesteps(self, by):
    buckets = bias.make_buckets(SCHEDULE, 10, by)
    covered = np.concatenate([np.arange(lo, hi + 1) for lo, hi in buckets])
    np.testing.assert_array_equal(covered, np.arange(1000))
    self.assertLen(buckets, 10)
    if by == "t":
      self.assertEqual(buckets[0], (0, 99))
    else:   # bucket k+1 starts at the first t whose log SNR is below the k-th of 9 equally spaced levels
      log_snr = SCHEDULE.log_snr
      levels = np.linspace(log_snr[0], log_snr[-1], 11)[1:-1]
      for level, (lo, _) in zip(levels, buckets[1:]):
        self.assertLess(log_snr[lo], level)
        self.assertGreaterEqual(log_snr[lo - 1], level)
    info = bias.bucket_info(SCHEDULE, buckets)
    self.assertTrue(all(r["snr_max"] >= r["snr_geomean"] >= r["snr_min"] for r in info))

  def test_bad_bucketing_is_named(self):
    with self.assertRaisesRegex(ValueError, "bucket_by|log_snr"):
      bias.make_buckets(SCHEDULE, 10, "sigma")
    with self.assertRaisesRegex(ValueError, "num_buckets"):
      bias.make_buckets(SCHEDULE, 0)


class ExactDenoiserTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.mix = mixture()
    cls.x0, _ = cls.mix.sample(0, 512)
    cls.exact = errors(cls.mix, cls.x0, exact_denoiser.exact_model_fn(cls.mix, SCHEDULE, "eps"))

  def test_the_exact_denoiser_has_no_bias(self):
    exact = self.exact
    np.testing.assert_array_equal(exact["count"], 512)
    self.assertLess(exact["bias_mse"].max(), 1e-7 * exact["x0_mse"].min() + 1e-9)
    np.testing.assert_allclose(exact["bias_signed"], 0.0, atol=1e-4)
    np.testing.assert_allclose(exact["x0_mse"], exact["bayes_mse"], rtol=1e-4)

  def test_the_exact_error_is_the_posterior_variance_decreasing_with_snr(self):
    mse = self.exact["x0_mse"]                       # buckets run from low noise to high noise
    self.assertTrue(np.all(np.diff(mse) > 0), mse)
    # At the noisiest bucket (SNR < 0.002) E[x0 | x_t] is nearly the data mean: the error approaches (from below)
    # the batch's squared distance from the exact mean.
    spread = np.mean((self.x0.astype(np.float64) - self.mix.mean) ** 2)
    self.assertLess(mse[-1], spread)
    self.assertGreater(mse[-1], 0.95 * spread)

  def test_a_shifted_denoiser_reports_its_shift(self):
    delta = np.array([0.1, -0.05, 0.0], np.float32)
    shifted = errors(self.mix, self.x0, exact_denoiser.exact_model_fn(self.mix, SCHEDULE, "eps", x0_shift=delta))
    for name in ("bias_signed",):
      np.testing.assert_allclose(shifted[name], np.broadcast_to(delta, shifted[name].shape), atol=2e-4)
    np.testing.assert_allclose(shifted["bias_mse"], np.mean(delta ** 2), rtol=2e-3)
    # Same data, noise and t: the signed error against the data moves by exactly delta ...
    np.testing.assert_allclose(shifted["x0_signed"] - self.exact["x0_signed"],
                               np.broadcast_to(delta, shifted["x0_signed"].shape), atol=2e-4)
    # ... and the squared error by mean_c(delta_c^2 + 2 delta_c E[x0* - x0]_c), exactly.
    np.testing.assert_allclose(shifted["x0_mse"] - self.exact["x0_mse"],
                               np.mean(delta ** 2 + 2 * delta * self.exact["x0_signed"], axis=-1), rtol=2e-3)
    np.testing.assert_allclose(shifted["bayes_mse"], self.exact["bayes_mse"], rtol=1e-5)

  def test_first_step_prediction_is_the_data_mean(self):
    x_T = jax.random.normal(jax.random.key(3), (256,) + self.mix.shape)
    delta = np.array([0.0, 0.2, -0.1], np.float32)
    for shift in (None, delta):
      model_fn = exact_denoiser.exact_model_fn(self.mix, SCHEDULE, "eps", x0_shift=shift)
      x0_hat = np.asarray(jax.jit(lambda x: bias.first_step_prediction(model_fn, SCHEDULE, "eps", x))(x_T))
      reference = np.asarray(self.mix.posterior_mean(x_T, SCHEDULE.alphas_cumprod[-1]))
      stats = bias.mean_prediction_stats(x0_hat, self.mix.mean, reference)
      expected = np.zeros(3) if shift is None else delta
      np.testing.assert_allclose(stats["channel_shift"], expected, atol=2e-3)
      np.testing.assert_allclose(stats["bias_channel_shift"], expected, atol=2e-4)
      np.testing.assert_allclose(stats["per_sample_mse"], np.mean(expected ** 2), atol=2e-4)


class SingleGaussianTest(absltest.TestCase):

  def test_x0_error_matches_the_gaussian_mmse_and_eps_error_is_snr_times_it(self):
    # One Gaussian N(mu, S): E|x0 - E[x0|x_t]|^2 = sum_i s_i (1 - a) / (a s_i + 1 - a) over eigenvalues s_i of S.
    mix = mixture(num_components=1)
    x0, _ = mix.sample(0, 4096)
    buckets = ((100, 100), (400, 400), (700, 700), (950, 950))
    means = errors(mix, x0, exact_denoiser.exact_model_fn(mix, SCHEDULE, "eps"), buckets)
    eigenvalues = np.linalg.eigvalsh(mix.component_covariance(0))
    for i, (t, _) in enumerate(buckets):
      a = SCHEDULE.alphas_cumprod[t]
      mmse = np.sum(eigenvalues * (1 - a) / (a * eigenvalues + 1 - a)) / mix.dim
      np.testing.assert_allclose(means["x0_mse"][i], mmse, rtol=0.03)
      np.testing.assert_allclose(means["eps_mse"][i], SCHEDULE.snr[t] * means["x0_mse"][i], rtol=1e-3)


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


class SampleQualityTest(absltest.TestCase):

  def test_mmd_known_answer(self):
    x = np.array([[0.0], [1.0]])
    self.assertAlmostEqual(exact_denoiser.mmd_squared(x, x, 1.0), np.exp(-0.5) - 1.0)

  def test_true_samples_score_as_true_and_shifted_samples_do_not(self):
    mix = mixture()
    reference, _ = mix.sample(0, 600)
    fresh, _ = mix.sample(1, 300)
    good = exact_denoiser.sample_quality(mix, fresh, reference)
    bad = exact_denoiser.sample_quality(mix, fresh + np.array([0.2, 0.0, 0.0], np.float32), reference)
    self.assertLess(abs(good["log_likelihood_gap"]), 0.02)
    self.assertLess(abs(good["mmd"]), 0.005)
    self.assertGreater(bad["log_likelihood_gap"], 0.2)
    self.assertGreater(bad["mmd"], 0.02)
    self.assertEqual(good["mmd_bandwidth"], bad["mmd_bandwidth"])


class AnalyzeModeTest(absltest.TestCase):
  """--mode analyze end to end, on a network whose output is exactly zero (ADM's output layer is zero at init):
  with an x0 target its estimate is 0 everywhere, so every figure has a known answer from the data alone.
  One-channel 8x8 mixture data: the same network and sampler programs as the sample/eval tests (compiled once)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = test_util.config(test_util.SAMPLING, {
        "data.name": "gmm", "analysis.num_examples": 50, "analysis.num_buckets": 4, "analysis.batch_size": 8,
        "analysis.num_samples": 20, "analysis.sampling_steps": (2, 3)})
    cls.workdir = tempfile.mkdtemp()
    shapes = unet.param_shapes(unet.create_model(cls.config))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
    test_util.write_checkpoint(cls.config, cls.workdir, steps=(7,), params=zeros)
    cls.result = study.analyze(cls.config, cls.workdir)
    images = np.concatenate([b["image"][b["mask"]] for b in pipeline.create_eval_iterator(
        cls.config.data, batch_size=50, num_examples=50)])
    cls.data = images.astype(np.float64)

  def test_x0_errors_of_a_zero_estimate(self):
    rows = self.result["x0_error"]["buckets"]
    self.assertLen(rows, 4)
    for row in rows:
      self.assertEqual(row["count"], 50)                   # 50 examples in batches of 8: padding is masked
      np.testing.assert_allclose(row["x0_mse"], np.mean(self.data ** 2), rtol=1e-5)
      np.testing.assert_allclose(row["x0_signed"], -self.data.mean(axis=(0, 1, 2)), atol=1e-6)
    self.assertEqual([r["t_min"] for r in rows], [0, 250, 500, 750])
    np.testing.assert_allclose(self.result["x0_error"]["data_variance"], np.mean(np.var(self.data, axis=0)),
                               rtol=1e-9)

  def test_first_step_and_colour_shift_of_a_zero_estimate(self):
    first = self.result["first_step"]
    data_mean = self.data.mean(axis=0)
    np.testing.assert_allclose(first["per_sample_mse"], np.mean(data_mean ** 2), rtol=1e-6)
    np.testing.assert_allclose(first["channel_shift"], -data_mean.mean(axis=(0, 1)), atol=1e-9)
    rows = self.result["color_shift"]["samplers"]["ddim"]
    self.assertEqual([r["steps"] for r in rows], [2, 3])
    data_channels = color.channel_means(self.data).mean(axis=0)
    for row in rows:                                      # every sample is the constant 0 -> 127.5 per channel
      self.assertEqual(row["num_samples"], 20)
      np.testing.assert_allclose(row["channel_shift"], 127.5 - data_channels, atol=1e-6)
      self.assertIn("mmd", row)
    self.assertEqual([r["steps"] for r in self.result["color_shift"]["exact_denoiser"]["ddim"]], [2, 3])
    summary = self.result["summary"]
    np.testing.assert_allclose(summary["x0_mse_high_noise"], np.mean(self.data ** 2), rtol=1e-5)
    np.testing.assert_allclose(summary["x0_mse_low_noise"], np.mean(self.data ** 2), rtol=1e-5)
    self.assertEqual(summary["first_step_mse"], first["per_sample_mse"])
    np.testing.assert_allclose(summary["ddim_max_channel_shift_few_steps"], np.max(np.abs(127.5 - data_channels)))

  def test_files(self):
    out = os.path.join(self.workdir, "analysis")
    with open(os.path.join(out, "step_00000007.json")) as f:
      saved = json.load(f)
    self.assertEqual(saved["checkpoint_step"], 7)
    self.assertEqual(saved["x0_error"]["buckets"], self.result["x0_error"]["buckets"])
    for name in ("x0_error", "signed_error", "color_shift"):
      self.assertGreater(os.path.getsize(os.path.join(out, f"step_00000007_{name}.png")), 10_000, name)
    strip = np.asarray(Image.open(os.path.join(out, "step_00000007_samples_ddim.png")))
    self.assertEqual(strip.shape, (8 * (2 * 9 + 1), 8 * (16 * 9 + 1)))   # 2 step counts x 16 images, 8x upscale
    self.assertTrue(any(f.startswith("events.out.tfevents") for f in os.listdir(out)))

  def test_bad_analysis_config_is_named(self):
    with self.assertRaisesRegex(config_checks.ConfigError, "analysis.sampling_steps has 2000"):
      config_checks.check_analysis_config(
          test_util.config(test_util.SAMPLING, {"analysis.sampling_steps": (2000,)}), 1)
    with self.assertRaisesRegex(config_checks.ConfigError, "analysis.batch_size=30 is not divisible by the 8"):
      config_checks.check_analysis_config(test_util.config(test_util.SAMPLING, {"analysis.batch_size": 30}), 8)


if __name__ == "__main__":
  absltest.main()
