"""The saved checkpoint format: a checkpoint written by an earlier version (tests/testdata/checkpoint_v1/: its
checkpoints/ folder and config.json, from a 2-step run of the smallest valid UNet) restores leaf for leaf, and
--mode sample runs on it. A change to the library that breaks either breaks users' saved runs.

checkpoint_v1/expected.json holds each leaf's tree path, shape, dtype and the SHA-256 of its bytes, computed from
the state in memory at the end of that run (not from a restore). The data is never rewritten: a new format gets a
new folder (write_testdata), and the old one must still restore.
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import hashlib
import json
import os
import shutil
import sys
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
import jax
import ml_collections
import numpy as np

from debias_jax import checkpointing
from debias_jax import train
from debias_jax import train_state
from tests import test_util

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata", "checkpoint_v1")
# configs/tiny.py with these overrides wrote checkpoint_v1: the smallest UNet the model accepts (32 channels, one
# level, no residual blocks on the way down), two steps, one checkpoint.
V1_OVERRIDES = {"model.channel_mult": (1,), "model.num_res_blocks": 0, "model.attention_resolutions": (),
                "model.num_head_channels": -1, "model.learn_sigma": False, "model.use_scale_shift_norm": False,
                "model.resblock_updown": False, "train.batch_size": 4, "train.num_steps": 2, "train.log_every": 1,
                "train.checkpoint_every": 2, "train.keep_checkpoints": 1, "train.sample_every": 0}
STEP = 2


def leaf_records(tree) -> list[dict]:
  """Path, shape, dtype and SHA-256 of every leaf, in tree order."""
  records = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    array = np.ascontiguousarray(np.asarray(leaf))
    records.append({"path": jax.tree_util.keystr(path), "shape": list(array.shape), "dtype": str(array.dtype),
                    "sha256": hashlib.sha256(array.tobytes()).hexdigest()})
  return records


def write_testdata(directory: str) -> None:
  """Trains the 2-step run and keeps its checkpoints/ and config.json, with expected.json, under `directory`."""
  workdir = os.path.join(directory, "workdir")
  state = train.train_and_evaluate(test_util.config(V1_OVERRIDES), workdir)
  shutil.copytree(os.path.join(workdir, "checkpoints"), os.path.join(directory, "checkpoints"))
  shutil.copy(os.path.join(workdir, "config.json"), directory)
  shutil.rmtree(workdir)
  with open(os.path.join(directory, "expected.json"), "w") as f:
    json.dump({"step": int(state.step), "leaves": leaf_records(state)}, f, indent=1)


def copy_of_testdata(test) -> str:
  """The saved workdir (checkpoints/ and config.json) copied to a temporary folder: the test data stays as is."""
  workdir = os.path.join(test_util.tmpdir(test), "workdir")
  shutil.copytree(TESTDATA, workdir, ignore=shutil.ignore_patterns("expected.json"))
  return workdir


class CheckpointFormatTest(absltest.TestCase):

  def test_every_leaf_restores_exactly(self):
    with open(os.path.join(TESTDATA, "config.json")) as f:
      config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(TESTDATA, "expected.json")) as f:
      expected = json.load(f)
    checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(copy_of_testdata(self)))
    self.assertEqual(checkpointer.all_steps(), [STEP])
    restored = checkpointer.restore(train_state.abstract_state(config))
    checkpointer.close()
    self.assertEqual(int(restored.step), expected["step"])
    got = leaf_records(restored)
    self.assertLen(got, len(expected["leaves"]))
    for g, e in zip(got, expected["leaves"]):
      self.assertEqual(g, e)

  def test_sample_mode_runs_on_it(self):
    from debias_jax import main  # pylint: disable=g-import-not-at-top
    workdir = copy_of_testdata(self)
    sampling = {"sampling.sampler": "ddim", "sampling.steps": "2", "sampling.num_samples": 4,
                "sampling.batch_size": 4}
    argv = ["main", "--mode=sample", f"--config={os.path.join(test_util.REPO, 'configs', 'tiny.py')}",
            f"--workdir={workdir}", *test_util.flags({**V1_OVERRIDES, **sampling})]
    with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):   # config_flags reads overrides from sys.argv
      flags.FLAGS(argv)
      main.main(["main"])
    samples = os.path.join(workdir, "samples")
    npz = [name for name in os.listdir(samples) if name.endswith(".npz")]
    self.assertLen(npz, 1)
    self.assertTrue(npz[0].startswith(f"step_{STEP:08d}_ddim_2_ema"), npz[0])
    with np.load(os.path.join(samples, npz[0])) as data:
      images = data["arr_0"]
    self.assertEqual((images.shape, images.dtype), ((4, 8, 8, 1), np.uint8))
    self.assertGreater(len(np.unique(images)), 1)


if __name__ == "__main__":
  absltest.main()
