"""Tests of the guided-diffusion checkpoint importer.

The expected state-dict keys are written out here from guided-diffusion's module naming (UNetModel:
time_embed.{0,2}, label_emb, input_blocks.N.M, middle_block.{0,1,2}, output_blocks.N.M, out.{0,2}; ResBlock:
in_layers.{0,2}, emb_layers.1, out_layers.{0,3}, skip_connection; AttentionBlock: norm, qkv, proj_out;
Downsample: op; Upsample: conv), not derived from our key map.

tests/testdata/guided_diffusion_reference.npz holds outputs of guided-diffusion's PyTorch UNetModel (commit
22e0df8, CPU, float32) for two 8x8 configs, with the deterministic weights of `_deterministic_state_dict` and the
inputs of `_reference_inputs`; the generating script lives outside the repository (it needs torch).
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import json
import os
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import convert
from debias_jax import train_state
from debias_jax.models import unet
from tests import test_util

_REFERENCE = os.path.join(os.path.dirname(__file__), "testdata", "guided_diffusion_reference.npz")


def _config(image_size=16, channels=3, num_classes=3, **model):
  """The tiny config with a small class-conditional UNet (attention at 8x8); model fields by keyword."""
  return test_util.config({"data.image_size": image_size, "data.channels": channels, "data.num_classes": num_classes,
                           "model.attention_resolutions": (8,)}, {f"model.{k}": v for k, v in model.items()})


# --- guided-diffusion's keys, written out by module ---------------------------------------------------------------

def _gn(prefix, c):
  return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def _conv(prefix, cin, cout, k=3):
  return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def _linear(prefix, cin, cout):
  return {f"{prefix}.weight": (cout, cin), f"{prefix}.bias": (cout,)}


def _res(prefix, cin, cout, emb, scale_shift):
  keys = {**_gn(f"{prefix}.in_layers.0", cin), **_conv(f"{prefix}.in_layers.2", cin, cout),
          **_linear(f"{prefix}.emb_layers.1", emb, 2 * cout if scale_shift else cout),
          **_gn(f"{prefix}.out_layers.0", cout), **_conv(f"{prefix}.out_layers.3", cout, cout)}
  if cin != cout:
    keys.update(_conv(f"{prefix}.skip_connection", cin, cout, k=1))
  return keys


def _attn(prefix, c):
  return {**_gn(f"{prefix}.norm", c), f"{prefix}.qkv.weight": (3 * c, c, 1), f"{prefix}.qkv.bias": (3 * c,),
          f"{prefix}.proj_out.weight": (c, c, 1), f"{prefix}.proj_out.bias": (c,)}


def _expected_keys(channels=3, updown=True, scale_shift=True, learn_sigma=True, num_classes=3):
  """guided-diffusion keys and shapes of the two-level UNet of `_config`: 32/64 channels, attention at 8 (= ds 2)."""
  emb = 128
  res = lambda prefix, cin, cout: _res(prefix, cin, cout, emb, scale_shift)
  keys = {**_linear("time_embed.0", 32, emb), **_linear("time_embed.2", emb, emb)}
  if num_classes:
    keys["label_emb.weight"] = (num_classes, emb)
  keys.update(_conv("input_blocks.0.0", channels, 32))
  keys.update(res("input_blocks.1.0", 32, 32))
  keys.update(res("input_blocks.2.0", 32, 32) if updown else _conv("input_blocks.2.0.op", 32, 32))
  keys.update(res("input_blocks.3.0", 32, 64))
  keys.update(_attn("input_blocks.3.1", 64))
  keys.update(res("middle_block.0", 64, 64))
  keys.update(_attn("middle_block.1", 64))
  keys.update(res("middle_block.2", 64, 64))
  keys.update(res("output_blocks.0.0", 64 + 64, 64))
  keys.update(_attn("output_blocks.0.1", 64))
  keys.update(res("output_blocks.1.0", 64 + 32, 64))
  keys.update(_attn("output_blocks.1.1", 64))
  keys.update(res("output_blocks.1.2", 64, 64) if updown else _conv("output_blocks.1.2.conv", 64, 64))
  keys.update(res("output_blocks.2.0", 64 + 32, 32))
  keys.update(res("output_blocks.3.0", 32 + 32, 32))
  keys.update(_gn("out.0", 32))
  keys.update(_conv("out.2", 32, 2 * channels if learn_sigma else channels))
  return keys


def _distinct_state_dict(keys):
  """Every tensor element a different float32 integer, so that each converted value names its source."""
  sd, offset = {}, 0
  for key, shape in keys.items():
    n = int(np.prod(shape))
    sd[key] = np.arange(offset, offset + n, dtype=np.float32).reshape(shape)
    offset += n
  assert offset < 2 ** 24   # exact in float32
  return sd


def _deterministic_state_dict(keys):
  """Weights of a plausible scale from a fixed formula (no RNG, so the reference file can be regenerated)."""
  sd = {}
  for i, (key, shape) in enumerate(sorted(keys.items())):
    v = np.sin(0.7 * np.arange(int(np.prod(shape)), dtype=np.float64) + 1.3 * i).reshape(shape)
    if len(shape) == 1:
      v = 1 + 0.1 * v if key.endswith(".weight") else 0.1 * v
    elif not key.startswith("label_emb"):
      v = v / np.sqrt(np.prod(shape[1:]))
    sd[key] = v.astype(np.float32)
  return sd


def _reference_inputs(channels, num_classes):
  x = np.cos(0.37 * np.arange(2 * channels * 8 * 8, dtype=np.float64)).reshape(2, channels, 8, 8)
  t = np.array([5.0, 900.5], np.float32)
  y = np.array([0, num_classes - 1]) if num_classes else None
  return x.astype(np.float32), t, y


# Two 8x8 variants compared with PyTorch: (config, keys of the reference file).
_REFERENCE_CASES = {
    "legacy_updown_scale_shift_sigma_cond": dict(
        image_size=8, channels=1, num_classes=3, attention_resolutions=(4,), num_heads=2, num_head_channels=-1),
    "new_order_conv_resample_plain_uncond": dict(
        image_size=8, channels=1, num_classes=0, attention_resolutions=(4,), num_heads=2, num_head_channels=-1,
        use_new_attention_order=True, resblock_updown=False, use_scale_shift_norm=False, learn_sigma=False),
}


def _gd_to_flax(key):
  """Our param path for a guided-diffusion key (the test's own statement of the naming convention)."""
  if key == "label_emb.weight":
    return ("label_emb", "embedding")
  sub = {"in_layers.0": "in_norm", "in_layers.2": "in_conv", "emb_layers.1": "emb_proj",
         "out_layers.0": "out_norm", "out_layers.3": "out_conv", "skip_connection": "skip", "norm": "norm",
         "qkv": "qkv", "proj_out": "proj_out", "op": "op", "conv": "conv"}
  module, param = key.rsplit(".", 1)
  parts = module.split(".")
  depth = {"input_blocks": 3, "output_blocks": 3, "middle_block": 2}.get(parts[0], len(parts))
  path = ["_".join(parts[:depth])]          # input_blocks.3.1 -> input_blocks_3_1, out.0 -> out_0
  if parts[depth:]:
    path.append(sub[".".join(parts[depth:])])
  is_norm = path[-1] in ("in_norm", "out_norm", "norm", "out_0")
  return tuple(path) + ({"weight": "scale" if is_norm else "kernel", "bias": "bias"}[param],)


def _lookup(tree, path):
  for name in path:
    tree = tree[name]
  return tree


class KeyMapTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("updown_scale_shift_sigma_cond", dict(), dict()),
      ("conv_resample_plain_uncond", dict(resblock_updown=False, use_scale_shift_norm=False, learn_sigma=False,
                                          num_classes=0),
       dict(updown=False, scale_shift=False, learn_sigma=False, num_classes=0)),
  )
  def test_keys_and_shapes_match_guided_diffusion(self, overrides, expected_flags):
    model = builders.create_model(_config(**overrides))
    ours = {k: e.shape for k, e in convert.key_map(model).items()}
    self.assertEqual(ours, _expected_keys(**expected_flags))


class ConvertTest(parameterized.TestCase):

  def test_every_param_set_from_its_tensor(self):
    config = _config()
    sd = _distinct_state_dict(_expected_keys())
    params = convert.convert_state_dict(sd, config)
    # Same tree as the model's own params, all float32.
    shapes = unet.param_shapes(builders.create_model(config))
    self.assertEqual(jax.tree.structure(params), jax.tree.structure(shapes))
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(shapes)):
      self.assertEqual((got.shape, got.dtype), (want.shape, want.dtype))
    # Each tensor lands at its path with the right layout.
    for key, w in sd.items():
      got = _lookup(params, _gd_to_flax(key))
      if w.ndim == 4:      # conv (O, I, kh, kw) -> (kh, kw, I, O)
        want = np.einsum("oihw->hwio", w)
      elif w.ndim == 3:    # conv1d (O, I, 1) -> dense (I, O)
        want = w[:, :, 0].T
      elif w.ndim == 2 and key != "label_emb.weight":   # linear (O, I) -> (I, O)
        want = w.T
      else:
        want = w
      np.testing.assert_array_equal(got, want, err_msg=key)
    # ... and every value is used exactly once.
    np.testing.assert_array_equal(
        np.sort(np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])),
        np.sort(np.concatenate([np.ravel(x) for x in sd.values()])))

  def test_data_parallel_prefix_is_stripped(self):
    sd = _distinct_state_dict(_expected_keys())
    a = convert.convert_state_dict(sd, _config())
    b = convert.convert_state_dict({f"module.{k}": v for k, v in sd.items()}, _config())
    jax.tree.map(np.testing.assert_array_equal, a, b)

  def test_missing_unexpected_and_misshaped_reported_together(self):
    sd = _distinct_state_dict(_expected_keys())
    del sd["input_blocks.3.1.qkv.weight"]
    sd["input_blocks.9.0.foo.weight"] = np.zeros((2,), np.float32)
    sd["out.2.bias"] = np.zeros((5,), np.float32)
    with self.assertRaises(ValueError) as ctx:
      convert.convert_state_dict(sd, _config())
    message = str(ctx.exception)
    self.assertIn("Missing keys (1):\n  input_blocks.3.1.qkv.weight", message)
    self.assertIn("Unexpected keys (1):\n  input_blocks.9.0.foo.weight", message)
    self.assertIn("Wrong shapes (1):\n  out.2.bias: checkpoint (5,), expected (6,)", message)

  @parameterized.named_parameters(
      ("channels", dict(channels=1), "data.channels"),
      ("learn_sigma", dict(learn_sigma=False), "model.learn_sigma=False"),
      ("num_classes_absent", dict(num_classes=0), "data.num_classes=0"),
      ("num_classes_count", dict(num_classes=10), "label_emb has 3 classes"),
      ("attention", dict(attention_resolutions=(16, 8)), "model.attention_resolutions"),
      ("res_blocks", dict(num_res_blocks=2), "model.num_res_blocks"),
      ("channel_mult", dict(channel_mult=(1, 2, 2)), "model.channel_mult"),
      ("updown", dict(resblock_updown=False), "model.resblock_updown"),
      ("scale_shift", dict(use_scale_shift_norm=False), "model.use_scale_shift_norm"),
      ("model_channels", dict(model_channels=64, num_head_channels=32), "model.model_channels"),
  )
  def test_config_mismatch_names_the_field(self, overrides, field):
    sd = _distinct_state_dict(_expected_keys())
    with self.assertRaisesRegex(ValueError, "Likely cause:(.|\n)*" + field.replace(".", r"\.")):
      convert.convert_state_dict(sd, _config(**overrides))

  def test_learn_sigma_missing_in_config_other_direction(self):
    sd = _distinct_state_dict(_expected_keys(learn_sigma=False))
    with self.assertRaisesRegex(ValueError, r"model\.learn_sigma=True"):
      convert.convert_state_dict(sd, _config())

  def test_integer_tensor_rejected(self):
    sd = _distinct_state_dict(_expected_keys())
    sd["out.2.bias"] = sd["out.2.bias"].astype(np.int64)
    with self.assertRaisesRegex(ValueError, "out.2.bias"):
      convert.convert_state_dict(sd, _config())

  @parameterized.named_parameters(*[(name, name) for name in _REFERENCE_CASES])
  def test_outputs_match_guided_diffusion_pytorch(self, name):
    overrides = dict(_REFERENCE_CASES[name])
    config = _config(**overrides)
    model = builders.create_model(config)
    keys = {k: e.shape for k, e in convert.key_map(model).items()}
    params = convert.convert_state_dict(_deterministic_state_dict(keys), config)
    x, t, y = _reference_inputs(model.in_channels, model.num_classes)
    out = jax.jit(model.apply)({"params": params}, x.transpose(0, 2, 3, 1), t, y)
    with np.load(_REFERENCE) as ref:
      want = ref[name].transpose(0, 2, 3, 1)
      self.assertEqual(json.loads(str(ref[f"{name}__keys"])), sorted(keys))   # gd's own key list
    np.testing.assert_allclose(np.asarray(out), want, atol=2e-5, rtol=0)
    self.assertGreater(np.abs(want).max(), 0.1)


class FileFormatTest(absltest.TestCase):

  def _write_safetensors(self, path, tensors, dtype_names):
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
      raw = array.tobytes()
      header[name] = {"dtype": dtype_names[name], "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
      chunks.append(raw)
      offset += len(raw)
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
      f.write(len(blob).to_bytes(8, "little") + blob + b"".join(chunks))

  def test_safetensors_f32_f16_bf16(self):
    a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    b = np.array([1.5, -0.25, 3.0], np.float16)
    c_float = np.array([[1.0, -2.0], [0.5, 3.140625]], np.float32)   # exactly representable in bfloat16
    c_bf16 = (c_float.view(np.uint32) >> 16).astype(np.uint16)
    path = os.path.join(test_util.tmpdir(self), "m.safetensors")
    self._write_safetensors(path, {"a": a, "b": b, "c": c_bf16}, {"a": "F32", "b": "F16", "c": "BF16"})
    got = convert.load_state_dict(path)
    self.assertEqual(sorted(got), ["a", "b", "c"])
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    np.testing.assert_array_equal(got["c"], c_float)

  def test_npz_and_safetensors_convert_alike(self):
    sd = _distinct_state_dict(_expected_keys())
    tmp = test_util.tmpdir(self)
    np.savez(os.path.join(tmp, "m.npz"), **sd)
    self._write_safetensors(os.path.join(tmp, "m.safetensors"), sd, {k: "F32" for k in sd})
    a = convert.convert_file(os.path.join(tmp, "m.npz"), _config())
    b = convert.convert_file(os.path.join(tmp, "m.safetensors"), _config())
    jax.tree.map(np.testing.assert_array_equal, a, b)

  def test_torch_missing_gives_install_hint(self):
    path = os.path.join(test_util.tmpdir(self), "m.pt")
    open(path, "wb").close()
    with mock.patch.dict(sys.modules, {"torch": None}):
      with self.assertRaisesRegex(ImportError, r"debias_jax\[torch\]"):
        convert.load_state_dict(path)

  def test_unknown_extension_and_missing_file(self):
    tmp = test_util.tmpdir(self)
    with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
      convert.load_state_dict(os.path.join(tmp, "nope.npz"))
    path = os.path.join(tmp, "m.ckpt")
    open(path, "wb").close()
    with self.assertRaisesRegex(ValueError, "safetensors"):
      convert.load_state_dict(path)


class CommandLineTest(absltest.TestCase):

  def test_converted_checkpoint_restores_as_a_train_state(self):
    sd = _distinct_state_dict(_expected_keys())
    tmp = test_util.tmpdir(self)
    np.savez(os.path.join(tmp, "m.npz"), **sd)
    config, workdir = _config(), os.path.join(tmp, "out")
    params = convert.run(config, os.path.join(tmp, "m.npz"), workdir)
    template = train_state.state_from_params(config, params)
    restored = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir)).restore(template)
    self.assertEqual(int(restored.step), 0)
    for tree in (restored.params, restored.ema_params[0]):
      for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    self.assertTrue(os.path.exists(os.path.join(workdir, "config.json")))
    with self.assertRaisesRegex(checkpointing.CheckpointError, "already holds checkpoints"):
      convert.run(config, os.path.join(tmp, "m.npz"), workdir)


if __name__ == "__main__":
  absltest.main()
