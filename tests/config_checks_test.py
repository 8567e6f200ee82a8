"""config_checks: every bad field of a config is named with its valid values, before any compute, in the modes
that read it."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

from absl.testing import absltest
from absl.testing import parameterized

from debias_jax import config_checks
from tests import test_util


class ConfigValidationTest(parameterized.TestCase):

  @parameterized.parameters(
      ("loss.weighting", "uniform", "loss.weighting.*constant, debias"),
      ("loss.target", "score", "loss.target.*eps, x0, v"),
      ("diffusion.schedule", "quadratic", "diffusion.schedule.*linear, cosine"),
      ("sampling.sampler", "euler", "sampling.sampler.*ddim"),
      ("sampling.steps", "ddim999", "sampling.steps"),
      ("model.attention_resolutions", (3,), "model.attention_resolutions"),
      ("model.channel_mult", (1, 2, 2, 2, 2), "channel_mult"),
      ("data.name", "mnist", "data.name"),
      ("data.image_size", 12, "data.image_size"),
      ("train.log_every", 3, "train.log_every.*steps_per_call", {"train.steps_per_call": 2}),
      ("ema_rates", (1.5,), "ema_rates"),
      ("optim.learning_rate", -1.0, "optim.learning_rate"),
      ("loss.t_sampling", "sometimes", "loss.t_sampling.*uniform, importance"),
  )
  def test_invalid_config_names_the_field(self, field, value, pattern, extra=None):
    config = test_util.config(**{field: value, **(extra or {})})
    with self.assertRaisesRegex(ValueError, pattern):
      config_checks.validate(config)

  def test_batch_not_divisible_by_devices(self):
    with self.assertRaisesRegex(ValueError, "train.batch_size=12 is not divisible by the 8 devices"):
      config_checks.validate(test_util.config(**{"train.batch_size": 12}), num_devices=8)

  def test_valid_configs_pass(self):
    config_checks.validate(test_util.config(), num_devices=1)

  @parameterized.parameters(
      ("sample", {"sampling.labels": (3,)}, "sampling.labels.*unconditional"),
      ("eval", {"eval.sampler_steps": ("ddim50",)}, "eval.sampler_steps has 'ddim50'"),
      ("eval", {"eval.feature_space": "clip"}, "eval.feature_space.*inception"),
      ("eval", {"eval.num_samples": 0}, "eval.num_samples"),
      ("analyze", {"analysis.bucket_by": "snr"}, "analysis.bucket_by"),
  )
  def test_each_mode_checks_what_it_reads(self, mode, overrides, pattern):
    config = test_util.config(**overrides)
    for other in config_checks.MODES:   # a field only `mode` reads does not stop the other modes
      if other != mode:
        config_checks.validate(config, other, num_devices=1)
    with self.assertRaisesRegex(config_checks.ConfigError, pattern):
      config_checks.validate(config, mode, num_devices=1)

  def test_unknown_mode(self):
    with self.assertRaisesRegex(config_checks.ConfigError, "mode.*train, sample, eval, analyze"):
      config_checks.validate(test_util.config(), "serve")


if __name__ == "__main__":
  absltest.main()
