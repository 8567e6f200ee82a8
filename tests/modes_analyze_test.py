"""--mode analyze (modes/analyze.py): the study of analysis/study.py end to end with known answers; its config
check."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import copy
import json
import os
import tempfile

from absl.testing import absltest
import jax
import numpy as np
from PIL import Image

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax.analysis import color
from debias_jax.analysis import exact_metrics
from debias_jax.modes import analyze
from debias_jax.data import pipeline
from debias_jax.models import unet
from tests import test_util


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
    shapes = unet.param_shapes(builders.create_model(cls.config))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
    test_util.write_checkpoint(cls.config, cls.workdir, steps=(7,), params=zeros)
    cls.result = analyze.analyze(cls.config, cls.workdir)
    images = np.concatenate([b["image"][b["mask"]] for b in pipeline.create_eval_iterator(
        cls.config.data, batch_size=50, num_examples=50)])
    cls.data = images.astype(np.float64)
    cls.mixture = pipeline.get_gmm(cls.config.data)

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
      # exact responsibilities of the all-zero samples against the mixture weights (exact_metrics' closed forms
      # are tested in analysis_exact_metrics_test): the study records that TV for every sampler setting
      zeros = np.zeros((20,) + tuple(self.mixture.shape), np.float32)
      self.assertAlmostEqual(row["component_tv"], exact_metrics.component_tv(self.mixture, zeros)["component_tv"],
                             places=6)
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


def _without_timings(record):
  """A result record without its "seconds" entries (wall times differ from run to run)."""
  if isinstance(record, dict):
    return {k: _without_timings(v) for k, v in record.items() if k != "seconds"}
  if isinstance(record, list):
    return [_without_timings(v) for v in record]
  return record


class AnalyzerTest(absltest.TestCase):
  """One Analyzer over several checkpoints and both params of each (what compare's exact phase does) writes what a
  fresh `--mode analyze` of each writes: its shared programs, restored state and exact-denoiser samples carry
  nothing of one study into the next."""

  def test_shared_studies_equal_fresh_ones(self):
    config = test_util.config(test_util.SAMPLING, {
        "data.name": "gmm", "analysis.num_examples": 16, "analysis.num_buckets": 4, "analysis.batch_size": 8,
        "analysis.num_samples": 8, "analysis.sampling_steps": (2,)})
    workdir = tempfile.mkdtemp()
    for step, seed in ((3, 1), (5, 3)):   # raw and EMA params differ, and differ between the checkpoints
      test_util.write_checkpoint(config, workdir, steps=(step,), params=test_util.random_params(config, seed),
                                 ema_params=test_util.random_params(config, seed + 1))
    requests = [(3, True), (3, False), (5, True), (5, False)]
    analyzer = analyze.Analyzer(config, workdir)
    shared = [analyzer.analyze(step, use_ema, ("ddim",), (2,), figures=False) for step, use_ema in requests]
    for (step, use_ema), record in zip(requests, shared):
      c = copy.deepcopy(config)
      c.analysis.checkpoint_step, c.sampling.use_ema, c.analysis.samplers = step, use_ema, ("ddim",)
      fresh = analyze.analyze(c, workdir, figures=False)
      for key in ("x0_error", "first_step", "color_shift", "summary"):
        self.assertEqual(_without_timings(record[key]), _without_timings(fresh[key]),
                         f"{key} of step {step}, use_ema={use_ema}")
      self.assertEqual((record["checkpoint_step"], record["params"]),
                       (step, checkpointing.params_name(config, use_ema)))
    self.assertNotEqual(shared[0]["x0_error"], shared[1]["x0_error"])    # so the comparison above can fail
    self.assertNotEqual(shared[0]["x0_error"], shared[2]["x0_error"])


if __name__ == "__main__":
  absltest.main()
