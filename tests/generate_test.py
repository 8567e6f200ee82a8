"""--mode sample: ADM-layout files, determinism, labels, EMA vs raw params, and clear errors."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import json
import os
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import generate
from debias_jax import parallel
from debias_jax import sampling
from debias_jax.models import unet
from tests import test_util


def load(path):
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


class SampleModeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.config = test_util.config(test_util.SAMPLING)
    cls.workdir = os.path.join(cls.tmp, "uncond")
    test_util.write_checkpoint(cls.config, cls.workdir, steps=(5, 10))
    cls.record = generate.sample_to_files(cls.config, cls.workdir)

  def test_npz_has_the_adm_layout_and_the_grid_exists(self):
    record = self.record
    self.assertEqual(record["checkpoint_step"], 10)      # -1: the latest
    self.assertEqual(os.path.basename(record["npz"]),
                     f"step_00000010_ddim_3_ema{self.config.ema_rates[0]}_n16_seed0.npz")
    self.assertEqual(os.path.dirname(record["npz"]), os.path.join(self.workdir, "samples"))
    arrays = load(record["npz"])
    self.assertEqual(sorted(arrays), ["arr_0"])           # unconditional: no labels
    self.assertEqual(arrays["arr_0"].shape, (16, 8, 8, 1))
    self.assertEqual(arrays["arr_0"].dtype, np.uint8)
    self.assertGreater(np.unique(arrays["arr_0"]).size, 10)  # real images, not a constant
    grid = np.asarray(Image.open(record["grid"]))
    upscale = 128 // 8
    self.assertEqual(grid.shape, (upscale * (4 * 9 + 1), upscale * (4 * 9 + 1)))   # 4x4 tiles, 1 px borders
    expected = sampling.image_grid(arrays["arr_0"])[..., 0].repeat(upscale, 0).repeat(upscale, 1)
    np.testing.assert_array_equal(grid, expected)
    with open(record["npz"][:-len(".npz")] + ".json") as f:
      self.assertEqual(json.load(f)["steps"], "3")

  def test_same_seed_same_samples_and_the_stream_does_not_depend_on_the_count(self):
    saved = load(self.record["npz"])["arr_0"]
    again = load(generate.sample_to_files(self.config, self.workdir)["npz"])["arr_0"]
    np.testing.assert_array_equal(again, saved)
    # The stream itself, with the params in memory: 8 samples are the first 8 of 16; another seed differs.
    generator = sampling.Generator(self.config, builders.create_model(self.config), parallel.create_mesh())
    params = test_util.random_params(self.config)

    def stream(config, num):
      batches = generate.sample_batches(generator, params, num, generate.sample_rng(config), batch_size=8,
                                        sampler="ddim", steps="3")
      return sampling.to_uint8(np.concatenate([images for images, _ in batches]))

    np.testing.assert_array_equal(stream(self.config, 8), saved[:8])
    other_seed = stream(test_util.config(test_util.SAMPLING, seed=1), 8)
    self.assertGreater(np.abs(other_seed.astype(int) - saved[:8]).mean(), 1.0)

  def test_checkpoint_step_and_raw_params(self):
    workdir = os.path.join(self.tmp, "ema")
    config = test_util.config(test_util.SAMPLING)
    test_util.write_checkpoint(config, workdir, steps=(3,), params=test_util.random_params(config, seed=1),
                               ema_params=test_util.random_params(config, seed=0))
    raw_config = test_util.config(test_util.SAMPLING, {"sampling.use_ema": False, "sampling.checkpoint_step": 3})
    raw = generate.sample_to_files(raw_config, workdir)
    self.assertIn("step_00000003_ddim_3_params_n16", raw["npz"])
    ema = generate.sample_to_files(config, workdir)
    # The EMA params here are the params of the first workdir, sampled with the same key: the same images.
    np.testing.assert_array_equal(load(ema["npz"])["arr_0"], load(self.record["npz"])["arr_0"])
    self.assertGreater(np.abs(load(raw["npz"])["arr_0"].astype(int) - load(ema["npz"])["arr_0"]).mean(), 1.0)

  def test_missing_checkpoint_names_the_workdir_and_what_to_run(self):
    empty = os.path.join(self.tmp, "nothing_here")
    with self.assertRaisesRegex(checkpointing.CheckpointError, f"No checkpoints in {empty}.*--mode train"):
      generate.sample_to_files(self.config, empty)
    self.assertFalse(os.path.exists(empty))
    with self.assertRaisesRegex(checkpointing.CheckpointError, r"No checkpoint at step 7 .*\[5, 10\]"):
      generate.sample_to_files(test_util.config(test_util.SAMPLING, {"sampling.checkpoint_step": 7}), self.workdir)

  def test_a_config_that_reads_the_model_differently_is_named(self):
    with self.assertRaisesRegex(config_checks.ConfigError, "config.loss.target: trained with 'x0', given 'v'"):
      generate.sample_to_files(test_util.config(test_util.SAMPLING, {"loss.target": "v"}), self.workdir)
    with self.assertRaisesRegex(config_checks.ConfigError, "sampling.labels.*unconditional"):
      generate.sample_to_files(test_util.config(test_util.SAMPLING, {"sampling.labels": (1,)}), self.workdir)


class ConditionalSampleTest(absltest.TestCase):

  def test_labels_cycle_or_are_given_and_reach_the_model(self):
    config = test_util.config(test_util.SAMPLING, {"data.num_classes": 10})
    workdir = tempfile.mkdtemp()
    test_util.write_checkpoint(config, workdir)
    cycled = load(generate.sample_to_files(config, workdir)["npz"])
    self.assertEqual(sorted(cycled), ["arr_0", "arr_1"])
    np.testing.assert_array_equal(cycled["arr_1"], np.arange(16) % 10)
    labelled = test_util.config(test_util.SAMPLING, {"data.num_classes": 10, "sampling.labels": (3,)})
    given = load(generate.sample_to_files(labelled, workdir)["npz"])
    np.testing.assert_array_equal(given["arr_1"], np.full(16, 3))
    # Same noise, other labels: example 3 has label 3 in both runs, example 0 does not.
    np.testing.assert_array_equal(given["arr_0"][3], cycled["arr_0"][3])
    self.assertGreater(np.abs(given["arr_0"][0].astype(int) - cycled["arr_0"][0]).mean(), 0.5)
    with self.assertRaisesRegex(config_checks.ConfigError, r"sampling.labels has \[12\], outside \[0, 10\)"):
      generate.sample_to_files(test_util.config(test_util.SAMPLING, {"data.num_classes": 10, "sampling.labels": (12,)}),
                               workdir)


if __name__ == "__main__":
  absltest.main()
