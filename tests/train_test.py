"""The training loop: learning, bit-exact resume, 1 vs 8 devices, multi-step calls, NaN stop, config errors."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import train
from debias_jax import train_state
from debias_jax.data import pipeline
from debias_jax.diffusion import losses
from tests import test_util


def fixed_batch_loss(config, params):
  """The loss on one fixed batch with fixed noise and timesteps: comparable across parameters."""
  model = builders.create_model(config)
  schedule = builders.schedule(config)
  loss_fn = losses.make_loss_fn(schedule, builders.loss_weights(config, schedule),
                                config.loss.target, config.model.learn_sigma)
  batch = next(pipeline.create_eval_iterator(config.data, batch_size=256))
  predict = lambda x, t: model.apply({"params": params}, x, t, None)
  return float(np.mean([loss_fn(predict, batch["image"], jax.random.key(k))[0] for k in range(4)]))


class TrainLoopTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    # One uninterrupted 20-step run, shared by the tests below.
    cls.config = test_util.config()
    cls.full = train.train_and_evaluate(cls.config, os.path.join(cls.tmp, "full"))

  def test_loss_falls(self):
    initial = train_state.create_train_state(self.config, builders.create_model(self.config), jax.random.key(0))
    before = fixed_batch_loss(self.config, initial.params)
    after = fixed_batch_loss(self.config, self.full.params)
    self.assertLess(after, 0.7 * before)
    records = [json.loads(l) for l in open(os.path.join(self.tmp, "full", "metrics.jsonl"))]
    self.assertEqual([r["step"] for r in records], [10, 20])
    for key in ("loss", "mse", "vb", "grad_norm", "loss_q0", "loss_q3"):
      self.assertTrue(np.isfinite(records[-1][key]), key)

  def test_resume_is_bit_exact(self):
    workdir = os.path.join(self.tmp, "resumed")
    first = train.train_and_evaluate(test_util.config(**{"train.num_steps": 10}), workdir)
    self.assertEqual(int(first.step), 10)
    resumed = train.train_and_evaluate(self.config, workdir)
    self.assertEqual(int(resumed.step), 20)
    for a, b in zip(test_util.leaves(resumed), test_util.leaves(self.full), strict=True):
      np.testing.assert_array_equal(a, b)
    self.assertEqual(checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps(), [10, 20])

  def test_several_steps_per_call_equal_single_steps(self):
    short = {**test_util.ONE_LEVEL, "train.num_steps": 4, "train.log_every": 4, "train.checkpoint_every": 4}
    single = train.train_and_evaluate(test_util.config(**short), os.path.join(self.tmp, "single4"))
    scanned = train.train_and_evaluate(test_util.config(**short, **{"train.steps_per_call": 2}),
                                       os.path.join(self.tmp, "scan4"))
    self.assertEqual(int(scanned.step), 4)
    config = test_util.config(**short)
    initial = train_state.create_train_state(config, builders.create_model(config), jax.random.key(0))
    test_util.assert_same_trajectory(self, scanned.params, single.params, initial.params)

  def test_ema_follows_its_definition(self):
    # After one step from params p0 with update to p1: ema = r p0 + (1 - r) p1.
    config = test_util.config(**{"train.num_steps": 1, "train.log_every": 1, "train.checkpoint_every": 1})
    model = builders.create_model(config)
    state0 = train_state.create_train_state(config, model, jax.random.key(0))
    state1 = train.train_and_evaluate(config, os.path.join(self.tmp, "ema"))
    rate = config.ema_rates[0]
    leaves = test_util.leaves
    for e, p0, p1 in zip(leaves(state1.ema_params[0]), leaves(state0.params), leaves(state1.params)):
      np.testing.assert_allclose(e, rate * p0 + (1 - rate) * p1, rtol=1e-5, atol=1e-7)

  def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(self):
    workdir = os.path.join(self.tmp, "nan")
    good = train.train_and_evaluate(test_util.config(test_util.ONE_LEVEL, {"train.num_steps": 4}), workdir)
    bad_config = test_util.config(test_util.ONE_LEVEL, {"optim.learning_rate": 1e30, "train.num_steps": 8,
                                                          "train.log_every": 2, "train.checkpoint_every": 2})
    with self.assertRaisesRegex(train.NonFiniteLossError, r"NaN/inf at step [5-8].*last good checkpoint \(step 4\)"):
      train.train_and_evaluate(bad_config, workdir)
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    self.assertEqual(checkpointer.latest_step(), 4)
    restored = checkpointer.restore(good)
    for a, b in zip(test_util.leaves(restored), test_util.leaves(good), strict=True):
      np.testing.assert_array_equal(a, b)

  def test_a_changed_model_is_named_on_resume(self):
    workdir = os.path.join(self.tmp, "full")
    with self.assertRaisesRegex(config_checks.ConfigError,
                                r"differs from the one the checkpoint at step 20(.|\n)*model.model_channels: trained "
                                r"with 32, given 64"):
      train.train_and_evaluate(test_util.config(**{"model.model_channels": 64, "train.num_steps": 30}), workdir)

  def test_a_damaged_checkpoint_is_reported_and_nothing_is_deleted(self):
    workdir = os.path.join(self.tmp, "damaged")
    state = train.train_and_evaluate(test_util.config(**{"train.num_steps": 10}), workdir)
    step_dir = os.path.join(workdir, "checkpoints", "10")
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs)
    data_files = [f for f in files if "ocdbt" in f or os.path.basename(f).startswith("d")] or files
    for f in data_files:
      with open(f, "r+b") as handle:
        handle.write(b"\x00garbage\x00" * 8)
    with self.assertRaisesRegex(checkpointing.CheckpointError, "could not be read.*Nothing was deleted"):
      checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).restore(state)
    self.assertEqual(sorted(os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs), files)


class MultiDeviceTest(absltest.TestCase):

  def test_one_and_eight_devices_give_the_same_parameters(self):
    tmp = tempfile.mkdtemp()
    script = (
        "import sys, json, numpy as np, jax\n"
        "from tests import test_util\n"
        "from debias_jax import train\n"
        "config = test_util.config(test_util.ONE_LEVEL, {'train.num_steps': 4, 'train.log_every': 1,"
        " 'train.checkpoint_every': 4})\n"
        "state = train.train_and_evaluate(config, sys.argv[1])\n"
        "first = json.loads(open(sys.argv[1] + '/metrics.jsonl').readline())\n"
        "leaves = jax.tree.leaves(jax.device_get(state.params))\n"
        "np.savez(sys.argv[1] + '.npz', *leaves, n=len(jax.devices()), loss0=first['loss'],"
        " gnorm0=first['grad_norm'])\n")
    results = {}
    for devices in (1, 8):
      env = test_util.devices_env(devices)
      out = os.path.join(tmp, f"d{devices}")
      proc = subprocess.run([sys.executable, "-c", script, out], cwd=test_util.REPO, env=env, capture_output=True,
                            text=True)
      self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
      results[devices] = np.load(out + ".npz")
      self.assertEqual(int(results[devices]["n"]), devices)
    one, eight = results[1], results[8]
    self.assertGreater(len(one.files), 10)
    config = test_util.config(**test_util.ONE_LEVEL)
    initial = train_state.create_train_state(config, builders.create_model(config), jax.random.key(0))
    as_list = lambda npz: [npz[f"arr_{i}"] for i in range(len(npz.files) - 3)]
    test_util.assert_same_trajectory(self, as_list(eight), as_list(one), initial.params)
    # The first step (same params, same per-example noise and t, gradients all-reduced) agrees to float precision.
    np.testing.assert_allclose(results[1]["loss0"], results[8]["loss0"], rtol=1e-5)
    np.testing.assert_allclose(results[1]["gnorm0"], results[8]["gnorm0"], rtol=1e-4)


if __name__ == "__main__":
  absltest.main()
