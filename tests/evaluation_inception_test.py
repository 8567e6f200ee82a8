"""The FID Inception-v3 port: output shapes with stand-in weights, the resize, weight files and their errors.

(The architecture was checked against pytorch-fid's FID Inception with random weights outside the test suite,
which has no torch: pool3, logits and spatial features agree to 1e-6 relative; see the evaluation report.)
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import os
import pickle
import shutil
import tempfile

import jax
import numpy as np
from absl.testing import absltest

from debias_jax.evaluation import inception


def _torch_layout(params):
  """Our params in pytorch-fid's state-dict naming and layouts (the inverse of convert_torch_state_dict)."""
  state = {}
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, value in flat:
    keys = [k.key for k in path]
    value = np.asarray(value)
    if keys[0] == "fc":
      state["fc." + {"kernel": "weight", "bias": "bias"}[keys[1]]] = value.T if keys[1] == "kernel" else value
    elif keys[-1] == "kernel":
      state[".".join(keys[:-1]) + ".weight"] = value.transpose(3, 2, 0, 1)
    else:
      name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[keys[-1]]
      state[".".join(keys[:-1]) + "." + name] = value
  return state


def _bilinear_reference(image, out_size):
  """torch's F.interpolate(mode='bilinear', align_corners=False), written out for one (H, W) channel."""
  in_size = image.shape[0]
  scale = in_size / out_size
  src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(int), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  rows = image[lo] * (1 - frac)[:, None] + image[hi] * frac[:, None]
  return rows[:, lo] * (1 - frac)[None, :] + rows[:, hi] * frac[None, :]


class InceptionTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params = inception.init_params(seed=0)
    cls.dir = tempfile.mkdtemp()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir, ignore_errors=True)
    super().tearDownClass()

  def test_forward_shapes_with_stand_in_weights(self):
    forward = inception.make_inception_fn(self.params, inception.NUM_CLASSES)
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)
    out = jax.device_get(forward(images))
    self.assertEqual(out["pool"].shape, (2, 2048))
    self.assertEqual(out["logits"].shape, (2, 1008))
    self.assertEqual(out["spatial"].shape, (2, 17 * 17 * 7))
    for value in out.values():
      self.assertTrue(np.isfinite(value).all())
    self.assertGreaterEqual(out["pool"].min(), 0.0)          # mean of ReLU outputs
    self.assertGreater(np.abs(out["pool"][0] - out["pool"][1]).max(), 0.0)   # depends on the image

  def test_preprocess_scales_repeats_and_resizes_like_torch(self):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (1, 7, 7, 1), dtype=np.uint8)
    as_float = grey.astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(inception.preprocess(grey, size=7), np.repeat(as_float, 3, -1), atol=1e-6)
    for in_size, out_size in ((5, 13), (20, 7), (16, 299)):
      image = rng.uniform(-1, 1, (1, in_size, in_size, 3)).astype(np.float32)
      got = np.asarray(inception.preprocess(image, size=out_size))
      for c in range(3):
        np.testing.assert_allclose(got[0, :, :, c], _bilinear_reference(image[0, :, :, c], out_size), atol=1e-5)
    with self.assertRaisesRegex(ValueError, "1 or 3 channels"):
      inception.preprocess(np.zeros((1, 8, 8, 2), np.float32))
    with self.assertRaisesRegex(ValueError, "uint8 or float"):
      inception.preprocess(np.zeros((1, 8, 8, 3), np.int32))

  def test_weight_file_round_trip(self):
    path = inception.save_params(os.path.join(self.dir, "weights.pickle"), self.params)
    loaded, num_classes = inception.load_params(path)
    self.assertEqual(num_classes, 1008)
    jax.tree.map(np.testing.assert_array_equal, loaded, self.params)
    with open(path, "rb") as f:   # the file is plain nested dicts of numpy arrays (jax-fid's format)
      raw = pickle.load(f)
    self.assertEqual(raw["Mixed_5b"]["branch1x1"]["conv"]["kernel"].shape, (1, 1, 192, 64))
    self.assertEqual(set(raw["Conv2d_1a_3x3"]["bn"]), {"scale", "bias", "mean", "var"})
    self.assertEqual(raw["fc"]["kernel"].shape, (2048, 1008))

  def test_file_without_classifier_loads_without_logits(self):
    tree = pickle.loads(pickle.dumps(jax.tree.map(np.asarray, self.params)))
    del tree["fc"]
    tree["AuxLogits"] = {"fc": {"kernel": np.zeros((768, 1000), np.float32)}}    # ignored
    tree["Conv2d_1a_3x3"]["conv"]["bias"] = np.zeros((32,), np.float32)          # ignored
    params, num_classes = inception.params_from_weight_dict(tree)
    self.assertEqual(num_classes, 0)
    self.assertNotIn("fc", params)

  def test_torch_state_dict_conversion(self):
    state = _torch_layout(self.params)
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)
    state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    params, num_classes = inception.params_from_weight_dict(inception.convert_torch_state_dict(state))
    self.assertEqual(num_classes, 1008)
    jax.tree.map(np.testing.assert_array_equal, params, self.params)
    with self.assertRaisesRegex(inception.InceptionWeightsError, "Unexpected entry"):
      inception.convert_torch_state_dict({"layer1.0.conv1.weight": np.zeros((1, 1, 1, 1))})

  def test_missing_or_empty_path_says_how_to_get_the_file(self):
    for path in ("", os.path.join(self.dir, "nope.pickle")):
      with self.assertRaises(inception.InceptionWeightsError) as error:
        inception.load_params(path)
      message = str(error.exception)
      self.assertIn("inception_v3_weights_fid.pickle", message)
      self.assertIn("pt_inception-2015-12-05", message)
      self.assertIn("eval.inception_weights", message)

  def test_corrupt_files_raise_clear_errors(self):
    garbage = os.path.join(self.dir, "garbage.pickle")
    with open(garbage, "wb") as f:
      f.write(b"\x00\x01 this is not a pickle")
    with self.assertRaisesRegex(inception.InceptionWeightsError, "not an Inception weight pickle"):
      inception.load_params(garbage)

    a_list = os.path.join(self.dir, "list.pickle")
    with open(a_list, "wb") as f:
      pickle.dump([1, 2, 3], f)
    with self.assertRaisesRegex(inception.InceptionWeightsError, "holds a list"):
      inception.load_params(a_list)

    hostile = os.path.join(self.dir, "hostile.pickle")
    with open(hostile, "wb") as f:
      pickle.dump({"Conv2d_1a_3x3": _Hostile()}, f)
    with self.assertRaisesRegex(inception.InceptionWeightsError, "posix.system|os.system"):
      inception.load_params(hostile)

  def test_mismatched_shapes_and_missing_entries_are_listed(self):
    tree = jax.tree.map(np.asarray, self.params)
    tree = pickle.loads(pickle.dumps(tree))
    tree["Mixed_5b"]["branch1x1"]["conv"]["kernel"] = np.zeros((3, 3, 192, 64), np.float32)
    del tree["Mixed_7c"]["branch_pool"]["bn"]["var"]
    path = os.path.join(self.dir, "mismatched.pickle")
    with open(path, "wb") as f:
      pickle.dump(tree, f)
    with self.assertRaises(inception.InceptionWeightsError) as error:
      inception.load_params(path)
    message = str(error.exception)
    self.assertIn("2 problems", message)
    self.assertIn("Mixed_5b/branch1x1/conv/kernel has shape (3, 3, 192, 64), expected (1, 1, 192, 64)", message)
    self.assertIn("missing Mixed_7c/branch_pool/bn/var", message)
    self.assertIn("Expected format", message)


class _Hostile:
  def __reduce__(self):
    return (os.system, ("echo should never run",))


if __name__ == "__main__":
  absltest.main()
