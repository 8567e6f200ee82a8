"""TFDS source: a tiny dataset really prepared on disk (tfrecord and array_record), mock_data, tfds's default
data_dir, preparation by the program (one process and two joined processes), and fast failures."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from unittest import mock

import ml_collections
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from debias_jax import data
from debias_jax import train
from debias_jax.data import pipeline
from debias_jax.data import tfds_source
from tests import test_util

tf, tfds = tfds_source.import_tensorflow_datasets()
tfds.disable_progress_bar()

NUM_TRAIN = 13
NAME = "debias_tiny_images"   # DebiasTinyImages registered under tfds's name for it


def tiny_images(split_seed, n):
  rng = np.random.default_rng(split_seed)
  return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 3


class DebiasTinyImages(tfds.core.GeneratorBasedBuilder):
  """13 + 5 random 8x8 RGB images with 3 classes, generated locally (nothing to download)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, NUM_TRAIN), "test": self._generate_examples(1, 5)}

  def _generate_examples(self, seed, n):
    images, labels = tiny_images(seed, n)
    for i in range(n):
      yield i, {"image": images[i], "label": labels[i]}


def tfds_config(data_dir, name="debias_tiny_images", **fields):
  return test_util.section("data", **{"source": "tfds", "name": name, "data_dir": data_dir, "channels": 3, **fields})


class TfdsSourceTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dirs = {}
    for file_format in ("tfrecord", "array_record"):
      cls.dirs[file_format] = tempfile.mkdtemp()
      DebiasTinyImages(data_dir=cls.dirs[file_format], file_format=file_format).download_and_prepare()

  @classmethod
  def tearDownClass(cls):
    for d in cls.dirs.values():
      shutil.rmtree(d)
    super().tearDownClass()

  def tearDown(self):
    pipeline._cached_source.cache_clear()   # pylint: disable=protected-access
    super().tearDown()

  @parameterized.parameters(("tfrecord", "in_memory"), ("array_record", "random_access"))
  def test_reads_the_prepared_examples(self, file_format, access):
    config = tfds_config(self.dirs[file_format], num_classes=3)
    info = data.dataset_info(config)
    self.assertEqual(info["tfds_access"], access)
    self.assertEqual((info["num_examples"], info["num_classes"], info["image_shape"]), (NUM_TRAIN, 3, (8, 8, 3)))
    batch = next(data.create_eval_iterator(config, batch_size=NUM_TRAIN, process_index=0, process_count=1))
    images, labels = tiny_images(0, NUM_TRAIN)
    levels = (batch["image"] + 1.0) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)          # exactly the uint8 levels
    got = {(int(l), np.round(im).astype(np.uint8).tobytes()) for im, l in zip(levels, batch["label"])}
    self.assertEqual(got, {(int(l), im.tobytes()) for im, l in zip(images, labels)})

  def test_both_backends_give_the_same_batches(self):
    batches = {}
    for file_format in ("tfrecord", "array_record"):
      config = tfds_config(self.dirs[file_format], random_flip=True)
      iterators = [data.create_train_iterator(config, global_batch_size=6, seed=5, process_index=p, process_count=2)
                   for p in range(2)]
      batches[file_format] = [[next(it) for _ in range(5)] for it in iterators]
    for p in range(2):
      for a, b in zip(batches["tfrecord"][p], batches["array_record"][p]):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])

  def test_resume_with_random_access(self):
    config = tfds_config(self.dirs["array_record"], random_flip=True)
    full = data.create_train_iterator(config, global_batch_size=4, seed=2, process_index=0, process_count=1)
    full = [next(full) for _ in range(8)]
    resumed = data.create_train_iterator(config, global_batch_size=4, seed=2, start_step=5, process_index=0,
                                         process_count=1)
    for expected in full[5:]:
      np.testing.assert_array_equal(next(resumed)["image"], expected["image"])

  def test_resizes_to_image_size(self):
    batch = next(data.create_train_iterator(tfds_config(self.dirs["array_record"], image_size=4),
                                            global_batch_size=2, seed=0, process_index=0, process_count=1))
    self.assertEqual(batch["image"].shape, (2, 4, 4, 3))

  def test_bad_split_channels_access_and_size(self):
    with self.assertRaisesRegex(ValueError, r"data.split='validation'.*valid: test, train"):
      data.dataset_info(tfds_config(self.dirs["tfrecord"], split="validation"))
    with self.assertRaisesRegex(ValueError, "data.channels=1"):
      data.dataset_info(tfds_config(self.dirs["tfrecord"], channels=1))
    with self.assertRaisesRegex(ValueError, "convert_format"):
      data.dataset_info(tfds_config(self.dirs["tfrecord"], tfds_access="random_access"))
    with self.assertRaisesRegex(ValueError, "tfds_max_in_memory_gb"):
      data.dataset_info(tfds_config(self.dirs["tfrecord"], tfds_max_in_memory_gb=1e-9))
    with self.assertRaisesRegex(ValueError, "data.num_classes=10"):
      data.dataset_info(tfds_config(self.dirs["tfrecord"], num_classes=10))
    # TFDS slicing works.
    self.assertEqual(data.dataset_info(tfds_config(self.dirs["tfrecord"], split="train[:5]+test"))["num_examples"],
                     10)


def files_under(directory):
  return [f for _, _, files in os.walk(directory) for f in files]


class TfdsFailuresTest(absltest.TestCase):

  def test_not_prepared_fails_fast_with_the_command(self):
    empty = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, empty)
    config = tfds_config(empty, name="mnist", channels=1, image_size=28)
    for check in (tfds_source.check_prepared,
                  lambda c: data.create_train_iterator(c, global_batch_size=2, seed=0, process_index=0,
                                                       process_count=1)):
      start = time.monotonic()
      with self.assertRaises(FileNotFoundError) as caught:
        check(config)
      self.assertLess(time.monotonic() - start, 10.0)
      message = str(caught.exception)
      self.assertIn(f"tfds build mnist --data_dir={empty} --file_format=array_record", message)
      self.assertIn("--config.data.tfds_prepare=True", message)
      self.assertIn("Nothing is downloaded unless data.tfds_prepare=True", message)
      self.assertEqual(files_under(empty), [])   # nothing was downloaded

  def test_check_prepared_passes_prepared_and_other_sources(self):
    prepared = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, prepared)
    DebiasTinyImages(data_dir=prepared, file_format="array_record").download_and_prepare()
    tfds_source.check_prepared(tfds_config(prepared))
    tfds_source.check_prepared(tfds_config(prepared, name=f"{NAME}:1.0.0"))
    with self.assertRaises(FileNotFoundError):
      tfds_source.check_prepared(tfds_config(prepared, name="mnist"))
    tfds_source.check_prepared(tfds_config(prepared, name="mnist", tfds_prepare=True))   # the program prepares it
    tfds_source.check_prepared(ml_collections.ConfigDict({"source": "embedded", "name": "digits"}))

  def test_unknown_name(self):
    with self.assertRaisesRegex(ValueError, "data.name='no_such_dataset_xyz'"):
      data.dataset_info(tfds_config(tempfile.gettempdir(), name="no_such_dataset_xyz"))

  def test_mock_data(self):
    """tfds.testing.mock_data with real mnist metadata written to a temp dir, through both backends."""
    metadata_dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, metadata_dir)
    builder = tfds.builder("mnist", data_dir=metadata_dir)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name="train", shard_lengths=[20], num_bytes=0, filename_template=None)]))
    builder.info.set_file_format("tfrecord")
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=20, data_dir=metadata_dir, policy=tfds.testing.MockPolicy.USE_FILES):
      for access in ("in_memory", "random_access"):
        pipeline._cached_source.cache_clear()   # pylint: disable=protected-access
        config = tfds_config(metadata_dir, name="mnist", channels=1, image_size=28, num_classes=10,
                             tfds_access=access, random_flip=True)
        self.assertEqual(data.dataset_info(config)["num_examples"], 20)
        batch = next(data.create_train_iterator(config, global_batch_size=8, seed=0, process_index=0,
                                                process_count=1))
        self.assertEqual(batch["image"].shape, (8, 28, 28, 1))
        self.assertEqual(batch["image"].dtype, np.float32)
        self.assertTrue(-1.0 <= batch["image"].min() < batch["image"].max() <= 1.0)
        self.assertTrue(np.all((batch["label"] >= 0) & (batch["label"] < 10)))
    pipeline._cached_source.cache_clear()   # pylint: disable=protected-access

  def test_tensorflow_sees_no_gpu(self):
    self.assertEqual(tf.config.get_visible_devices("GPU"), [])

  def test_main_fails_within_seconds_naming_the_prepare_command(self):
    """The README's CIFAR-10 command on a machine where the dataset is not prepared: the error comes within
    seconds of the command's start (not after TensorFlow and a 30M-parameter model), and nothing is downloaded."""
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    data_dir = os.path.join(tmp, "tfds")
    os.makedirs(data_dir)
    command = [sys.executable, "-m", "debias_jax.main", "--mode", "train", "--config",
               os.path.join(test_util.REPO, "configs", "paper", "cifar10.py"), "--workdir", os.path.join(tmp, "run")]
    start = time.monotonic()
    result = subprocess.run(command, cwd=test_util.REPO, env=dict(os.environ, TFDS_DATA_DIR=data_dir),
                            capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    self.assertNotEqual(result.returncode, 0)
    self.assertIn(f"tfds build cifar10 --data_dir={data_dir} --file_format=array_record", result.stderr)
    self.assertIn("--config.data.tfds_prepare=True", result.stderr)
    self.assertEqual(files_under(data_dir), [])
    self.assertLess(elapsed, 10.0, f"the missing dataset was reported after {elapsed:.1f} s")


def tfds_train_config(**data_overrides):
  """tiny.py on the tiny tfds dataset from tfds's default data_dir (data.data_dir empty): a one-level UNet, 2 steps."""
  config = test_util.config({"model.channel_mult": (1,), "model.attention_resolutions": (), "train.num_steps": 2,
                             "train.batch_size": 4, "train.log_every": 1, "train.checkpoint_every": 2,
                             "train.sample_every": 0})
  for key, value in tfds_config("", image_size=8, channels=3, num_classes=3, **data_overrides).items():
    config.data[key] = value
  return config


class DefaultDataDirTest(absltest.TestCase):
  """data.data_dir empty = tfds's default ($TFDS_DATA_DIR here, a temporary folder); data.tfds_prepare."""

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp)
    self.data_dir = os.path.join(self.tmp, "tensorflow_datasets")
    self.enter_context(mock.patch.dict(os.environ, {"TFDS_DATA_DIR": self.data_dir}))
    self.addCleanup(pipeline._cached_source.cache_clear)   # pylint: disable=protected-access

  def train(self, config):
    workdir = os.path.join(self.tmp, "run")
    state = train.train_and_evaluate(config, workdir)
    self.assertEqual(int(state.step), 2)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      losses = [json.loads(line)["loss"] for line in f]
    self.assertLen(losses, 2)
    self.assertTrue(np.all(np.isfinite(losses)))

  def test_default_data_dir(self):
    self.assertEqual(tfds_source.default_data_dir(), self.data_dir)
    with mock.patch.dict(os.environ), mock.patch.object(os.path, "expanduser", lambda p: p.replace("~", "/home/u")):
      del os.environ["TFDS_DATA_DIR"]
      self.assertEqual(tfds_source.default_data_dir(), "/home/u/tensorflow_datasets")

  def test_trains_from_the_default_data_dir(self):
    DebiasTinyImages(data_dir=self.data_dir, file_format="array_record").download_and_prepare()
    config = tfds_train_config()
    tfds_source.check_prepared(config.data)
    info = data.dataset_info(config.data)
    self.assertEqual((info["num_examples"], info["num_classes"], info["tfds_access"]), (NUM_TRAIN, 3, "random_access"))
    self.train(config)

  def test_prepares_a_missing_dataset_then_trains(self):
    with self.assertRaises(FileNotFoundError):
      data.dataset_info(tfds_train_config().data)
    config = tfds_train_config(tfds_prepare=True)
    tfds_source.check_prepared(config.data)   # the program will prepare it: no early failure
    self.train(config)
    builder = tfds.builder(NAME, data_dir=self.data_dir)
    self.assertTrue(builder.is_prepared())
    self.assertEqual(builder.info.file_format, tfds.core.file_adapters.FileFormat.ARRAY_RECORD)
    self.assertEqual(tfds_source.prepare(tfds, NAME, self.data_dir), [])   # prepared: nothing to do


# Two JAX processes joined by jax.distributed call tfds_source.prepare in turn: on a data_dir they share, on a
# data_dir of their own each (a local disk per host), on one already prepared, and on one where process 0 fails.
PREPARE_WORKER = r"""
import json, os, sys
import jax
process, port, tmp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address="127.0.0.1:" + port, num_processes=2, process_id=process)
from debias_jax.data import tfds_source
from tests import data_tfds_source_test
tfds = data_tfds_source_test.tfds
result = {}
for case, data_dir in (("shared", "shared"), ("own", f"own{process}"), ("again", "shared"),
                       ("fails_on_0", "file" if process == 0 else "fresh1")):
  try:
    result[case] = tfds_source.prepare(tfds, data_tfds_source_test.NAME, os.path.join(tmp, data_dir))
  except RuntimeError as e:
    result[case] = str(e).splitlines()[0]
print("RESULT " + json.dumps(result))
"""


class TwoProcessPrepareTest(absltest.TestCase):

  def test_process_0_prepares_while_the_other_waits(self):
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    with open(os.path.join(tmp, "file"), "w") as f:   # a data_dir that is a file: preparing it fails
      f.write("")
    port = str(test_util.free_port())
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE_WORKER, str(p), port, tmp], cwd=test_util.REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in range(2)]
    outputs = []
    for proc in procs:
      try:
        outputs.append(proc.communicate(timeout=240)[0])
      except subprocess.TimeoutExpired:
        for p in procs:
          p.kill()
        self.fail("a process hung in tfds_source.prepare")
    results = []
    for proc, output in zip(procs, outputs):
      lines = [l for l in output.splitlines() if l.startswith("RESULT ")]
      self.assertEqual((proc.returncode, len(lines)), (0, 1), output[-3000:])
      results.append(json.loads(lines[0][len("RESULT "):]))
    self.assertEqual([r["shared"] for r in results], [["built"], []])    # only process 0 downloads
    self.assertEqual([r["own"] for r in results], [["built"], ["built"]])
    self.assertEqual([r["again"] for r in results], [[], []])
    self.assertStartsWith(results[0]["fails_on_0"], f"Could not prepare TFDS dataset {NAME!r}")
    self.assertStartsWith(results[1]["fails_on_0"], f"Could not prepare TFDS dataset {NAME!r}")
    self.assertIn("Process 0 failed", results[1]["fails_on_0"])
    for data_dir in ("shared", "own0", "own1"):
      self.assertTrue(tfds.builder(NAME, data_dir=os.path.join(tmp, data_dir)).is_prepared(), data_dir)
    self.assertFalse(os.path.exists(os.path.join(tmp, "fresh1")))   # process 1 did not try after 0 failed


if __name__ == "__main__":
  absltest.main()
