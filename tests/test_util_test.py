"""The test environment (test_env) as JAX sees it, under pytest and as a script, and the shared test helpers."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import importlib
import os
import socket

from absl import flags
from absl.testing import absltest
import jax
from ml_collections import config_flags
import numpy as np

from tests import test_util


class TestEnvTest(absltest.TestCase):

  def test_jax_started_with_the_test_environment(self):
    for name, value in test_env.DEFAULTS.items():
      self.assertIn(name, os.environ)
    self.assertEqual(os.environ["JAX_PLATFORMS"], "cpu")
    self.assertEqual(jax.default_backend(), "cpu")
    self.assertEqual(jax.config.jax_compilation_cache_dir, os.environ["JAX_COMPILATION_CACHE_DIR"])
    self.assertEqual(jax.config.jax_persistent_cache_min_compile_time_secs,
                     float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    for flag in test_env.XLA_TEST_FLAGS:
      self.assertEqual(os.environ["XLA_FLAGS"].split().count(flag), 1, os.environ["XLA_FLAGS"])

  def test_importing_again_adds_nothing(self):
    before = dict(os.environ)
    importlib.reload(test_env)
    self.assertEqual(dict(os.environ), before)

  def test_the_repository_and_tests_are_importable(self):
    self.assertEqual(os.path.dirname(test_util.__file__), os.path.join(test_env.REPO, "tests"))
    import debias_jax  # pylint: disable=g-import-not-at-top
    self.assertEqual(os.path.dirname(os.path.dirname(debias_jax.__file__)), test_env.REPO)


class ConfigTest(absltest.TestCase):

  def test_dotted_overrides_in_order(self):
    config = test_util.config(test_util.ONE_LEVEL, {"train.batch_size": 4, "model.dropout": 0.1},
                              **{"train.batch_size": 2, "seed": 3})
    self.assertEqual(config.model.channel_mult, (1,))
    self.assertEqual(config.model.attention_resolutions, (8,))
    self.assertEqual((config.train.batch_size, config.model.dropout, config.seed), (2, 0.1, 3))
    self.assertEqual(config.data.image_size, 8)                       # the rest is configs/tiny.py's
    self.assertEqual(test_util.config(base="default").data.image_size, 16)
    self.assertEqual(test_util.config(base="compare.quick").compare.arms[0], "constant")

  def test_a_missing_section_is_an_error(self):
    with self.assertRaisesRegex(KeyError, "nope"):
      test_util.config(**{"nope.field": 1})

  def test_section(self):
    data = test_util.section("data", name="gmm", image_size=4)
    self.assertEqual((data.name, data.image_size, data.source), ("gmm", 4, "embedded"))
    self.assertEqual(test_util.section("eval", base="default").to_dict(),
                     test_util.config(base="default").eval.to_dict())

  def test_flags_give_the_same_config_on_the_command_line(self):
    overrides = {**test_util.SAMPLING, "train.num_steps": 3, "sampling.labels": (1, 2)}
    argv = ["prog", f"--config={os.path.join(test_util.REPO, 'configs', 'tiny.py')}", *test_util.flags(overrides)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv)
    self.assertEqual(argv[2], "--config.model.channel_mult=(1,)")
    values(argv)
    self.assertEqual(values.config.to_dict(), test_util.config(overrides).to_dict())


class HelpersTest(absltest.TestCase):

  def test_leaves(self):
    tree = {"b": jax.numpy.ones(2), "a": (np.zeros(1), 3.0)}
    got = test_util.leaves(tree)
    self.assertTrue(all(isinstance(x, np.ndarray) for x in got))
    np.testing.assert_array_equal(np.concatenate([x.ravel() for x in got]), [0.0, 3.0, 1.0, 1.0])

  def test_free_port_can_be_bound(self):
    port = test_util.free_port()
    with socket.socket() as s:
      s.bind(("127.0.0.1", port))

  def test_devices_env(self):
    env = test_util.devices_env(8, EXTRA="1")
    self.assertTrue(env["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=8"))
    self.assertEqual((env["JAX_PLATFORMS"], env["EXTRA"]), ("cpu", "1"))


if __name__ == "__main__":
  absltest.main()
