"""--mode eval: results that name their settings, agreement with --mode sample's files, resumption, errors."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import os
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np

from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import generation
from debias_jax import jsonl
from debias_jax.evaluation import features
from debias_jax.modes import evaluate
from debias_jax.modes import sample
from tests import test_util


def eval_config(cache_dir, **overrides):
  return test_util.config(test_util.SAMPLING, {"eval.feature_space": "pixels", "eval.num_samples": 16,
                                               "eval.num_reference": 64, "eval.cache_dir": cache_dir}, overrides)


class EvalModeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.workdir = os.path.join(cls.tmp, "run")
    config = eval_config(cls.tmp)
    test_util.write_checkpoint(config, cls.workdir, steps=(5,), params=test_util.random_params(config, seed=1))
    test_util.write_checkpoint(config, cls.workdir, steps=(10,), params=test_util.random_params(config, seed=2))
    cls.config = eval_config(cls.tmp, **{"eval.sampler_steps": ("ddim:3", "ddim:2")})
    with mock.patch.object(generation, "make_sampler", wraps=generation.make_sampler) as make_sampler:
      cls.records = evaluate.evaluate_checkpoints(cls.config, cls.workdir)
    cls.built = [c.args[2:] for c in make_sampler.call_args_list]
    cls.results_path = os.path.join(cls.workdir, "eval", "results.jsonl")

  def test_every_result_names_its_settings(self):
    self.assertEqual([(r["checkpoint_step"], r["sampler"], r["steps"]) for r in self.records],
                     [(5, "ddim", "3"), (5, "ddim", "2"), (10, "ddim", "3"), (10, "ddim", "2")])
    for record in self.records:
      self.assertEqual(record["num_samples"], 16)
      self.assertEqual(record["feature_space"], "pixels")
      self.assertEqual(record["params"], f"ema{self.config.ema_rates[0]}")
      self.assertEqual(record["reference"], "data:embedded/digits/train/64")
      self.assertGreater(record["fid"], 0.0)
      self.assertTrue(0.0 <= record["precision"] <= 1.0 and 0.0 <= record["recall"] <= 1.0)
    self.assertEqual(self.records[0]["sampler_options"], {"eta": 0.0, "clip_x0": True})
    self.assertNotEqual(self.records[0]["fid"], self.records[2]["fid"])   # other params, other samples
    self.assertEqual(jsonl.read(self.results_path)[:4], self.records)
    self.assertTrue(any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.dirname(self.results_path))))

  def test_each_sampler_is_built_once(self):
    # (Config validation builds config.sampling's own sampler, named by no argument.)
    self.assertEqual([args for args in self.built if args], [("ddim", "3"), ("ddim", "2")])

  def test_fid_is_that_of_the_sample_mode_files(self):
    config = eval_config(self.tmp, **{"sampling.num_samples": 16, "sampling.checkpoint_step": 5})
    npz = sample.sample_to_files(config, self.workdir)["npz"]
    extractor = features.get_feature_extractor(config.eval, config.data)
    reference = features.reference_from_config(extractor, config.eval, config.data)
    metrics = features.evaluate_samples(extractor, npz, reference, pr_k=int(config.eval.pr_k))
    np.testing.assert_allclose(metrics["fid"], self.records[0]["fid"], rtol=1e-9)
    np.testing.assert_allclose(metrics["precision"], self.records[0]["precision"])

  def test_a_rerun_skips_what_is_done_and_adds_only_what_is_new(self):
    with mock.patch.object(generation.Generator, "batches", side_effect=AssertionError("sampled again")):
      again = evaluate.evaluate_checkpoints(self.config, self.workdir)
      only_ten = evaluate.evaluate_checkpoints(
          eval_config(self.tmp, **{"eval.sampler_steps": ("ddim:3",), "eval.checkpoint_steps": (10,)}),
          self.workdir)
    self.assertEqual(again, self.records)
    self.assertEqual(only_ten, [self.records[2]])
    more = evaluate.evaluate_checkpoints(
        eval_config(self.tmp, **{"eval.checkpoint_steps": (10,), "eval.num_samples": 24}), self.workdir)
    self.assertEqual([(r["checkpoint_step"], r["sampler"], r["steps"], r["num_samples"]) for r in more],
                     [(10, "ddim", "3", 24)])
    lines = jsonl.read(self.results_path)
    self.assertLen(lines, 5)
    self.assertEqual(lines[-1], more[0])

  def test_missing_checkpoints_are_named(self):
    empty = os.path.join(self.tmp, "empty")
    with self.assertRaisesRegex(checkpointing.CheckpointError, "No checkpoints in .*empty.*--mode train"):
      evaluate.evaluate_checkpoints(self.config, empty)
    with self.assertRaisesRegex(checkpointing.CheckpointError, r"No checkpoint at steps \[7\].*\[5, 10\]"):
      evaluate.evaluate_checkpoints(eval_config(self.tmp, **{"eval.checkpoint_steps": (7,)}), self.workdir)

  def test_bad_sampler_steps_are_named(self):
    for entry, pattern in (("ddim50", "write 'sampler:steps'"), ("euler:10", "cannot build euler:10"),
                           ("ddim:ddim999", "cannot build ddim:ddim999")):
      with self.assertRaisesRegex(config_checks.ConfigError, pattern):
        evaluate.evaluate_checkpoints(eval_config(self.tmp, **{"eval.sampler_steps": (entry,)}), self.workdir)


class CommandLineTest(absltest.TestCase):

  def test_main_runs_the_eval_mode_with_overrides(self):
    """main.py's flags and dispatch, in this process (a subprocess would spend its time importing)."""
    from absl import flags  # pylint: disable=g-import-not-at-top
    from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
    from debias_jax import main  # pylint: disable=g-import-not-at-top
    tmp = tempfile.mkdtemp()
    workdir = os.path.join(tmp, "run")
    test_util.write_checkpoint(test_util.config(test_util.SAMPLING), workdir, steps=(20,))
    # Overrides that make the tiny config the small one above, so the compiled programs are shared (cache).
    argv = ["main", "--mode=eval", f"--config={os.path.join(test_util.REPO, 'configs', 'tiny.py')}",
            f"--workdir={workdir}", *test_util.flags(test_util.SAMPLING),
            "--config.eval.feature_space=pixels", "--config.eval.num_samples=8", "--config.eval.num_reference=32",
            f"--config.eval.cache_dir={tmp}", "--config.eval.sampler_steps=('ddim:2',)"]
    with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):   # config_flags reads overrides from sys.argv
      flags.FLAGS(argv)
      main.main(["main"])
    records = jsonl.read(os.path.join(workdir, "eval", "results.jsonl"))
    self.assertEqual([(r["checkpoint_step"], r["sampler"], r["steps"], r["num_samples"]) for r in records],
                     [(20, "ddim", "2", 8)])


if __name__ == "__main__":
  absltest.main()
