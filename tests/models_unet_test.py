"""Tests of the ADM UNet: parameter counts against guided-diffusion, shapes, dtypes, exact equivalences."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import functools

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np

from debias_jax import builders
from debias_jax import config_checks
from debias_jax.models import conv
from debias_jax.models import unet
from tests import test_util

def _config(**overrides):
  """The default config with data.* / model.* overrides given as data_x=... / x=..."""
  return test_util.config({(f"data.{k[len('data_'):]}" if k.startswith("data_") else f"model.{k}"): v
                           for k, v in overrides.items()}, base="default")


def _paper_config(image_size, channel_mult, num_classes, **overrides):
  """The paper's lightweight ADM (as the authors trained it)."""
  kwargs = dict(model_channels=128, num_res_blocks=1, attention_resolutions=(16,), num_heads=1,
                num_head_channels=64, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True,
                channel_mult=channel_mult, data_image_size=image_size, data_channels=3,
                data_num_classes=num_classes, dropout=0.0)
  kwargs.update(overrides)
  return _config(**kwargs)


def _tiny(**overrides):
  """8x8, two levels, attention at 4x4."""
  kwargs = dict(data_image_size=8, data_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_heads=1, num_head_channels=-1, dropout=0.0)
  kwargs.update(overrides)
  return _config(**kwargs)


def _micro(**overrides):
  """8x8, one level (attention only in the middle block): the cheapest UNet to compile."""
  return _tiny(**{"channel_mult": (1,), "attention_resolutions": (8,), **overrides})


@functools.lru_cache(maxsize=None)
def _jit_apply(model):
  """One compiled apply per distinct UNet (modules compare by value), shared between tests."""
  return jax.jit(model.apply, static_argnames="train")


def _random_params(model, seed=0):
  """Params with every leaf random (including the zero-initialised ones), built in numpy without compiling init."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "scale":
      return (1 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    if name == "bias":
      return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if name == "kernel" else 1
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, unet.param_shapes(model))


def _inputs(model, batch=2, seed=1):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, model.image_size, model.image_size, model.in_channels)).astype(np.float32)
  t = np.array([3.0, 917.25, 0.0, 500.0][:batch], np.float32)
  y = rng.integers(0, model.num_classes, batch) if model.num_classes else None
  return x, t, y


class ParamCountTest(parameterized.TestCase):
  # Expected counts are sum(p.numel()) of guided-diffusion's UNetModel (openai/guided-diffusion, PyTorch)
  # built with the same options.
  def test_paper_256px_lightweight_adm(self):
    config = _paper_config(256, (1, 1, 2, 2, 4, 4), 0)
    self.assertEqual(unet.param_count(builders.create_model(config)), 93_563_910)

  def test_paper_256px_default_channel_mult(self):
    self.assertEqual(unet.param_count(builders.create_model(_paper_config(256, (), 0))), 93_563_910)

  def test_cifar10_32px_class_conditional(self):
    config = _paper_config(32, (1, 2, 2, 2), 10)
    self.assertEqual(unet.param_count(builders.create_model(config)), 30_473_990)

  @parameterized.named_parameters(
      # 32 px, model_channels 64, attention at 16 and 8, 32 channels per head, 10 classes.
      ("updown_scale_shift", dict(model_channels=64, attention_resolutions=(16, 8), num_head_channels=32),
       10, 7_833_734),
      # 32 px, (1, 2, 2), 2 res blocks, conv down/up-sampling, additive embedding, no learned sigma.
      ("conv_resample_plain", dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                                   attention_resolutions=(8,), num_heads=2, num_head_channels=-1,
                                   resblock_updown=False, use_scale_shift_norm=False, learn_sigma=False),
       0, 1_624_323),
  )
  def test_small_variants(self, overrides, num_classes, expected):
    overrides = dict(overrides)
    config = _paper_config(32, overrides.pop("channel_mult", (1, 2, 2, 2)), num_classes, **overrides)
    self.assertEqual(unet.param_count(builders.create_model(config)), expected)


class GroupNorm32Test(parameterized.TestCase):
  """The fused GroupNorm against flax's nn.GroupNorm followed by the FiLM and SiLU it replaces."""

  def _inputs(self, dtype, shape=(3, 8, 8, 64)):
    k = jax.random.split(jax.random.key(0), 5)
    x = (2 * jax.random.normal(k[0], shape) + 1).astype(dtype)
    params = {"scale": 1 + 0.1 * jax.random.normal(k[1], shape[-1:]), "bias": 0.1 * jax.random.normal(k[2], shape[-1:])}
    scale, shift = (0.3 * jax.random.normal(k[i], (shape[0], shape[-1])).astype(dtype) for i in (3, 4))
    return x, params, scale, shift

  @staticmethod
  def _flax(params, x, scale=None, shift=None, silu=False):
    y = flax_nn.GroupNorm(num_groups=unet.NUM_GROUPS, epsilon=1e-5, use_fast_variance=False).apply(
        {"params": params}, x.astype(jnp.float32))
    if scale is not None:
      y = y * (1 + scale.astype(jnp.float32)[:, None, None]) + shift.astype(jnp.float32)[:, None, None]
    return (flax_nn.silu(y) if silu else y).astype(x.dtype)

  def test_same_params_as_flax(self):
    x, *_ = self._inputs(jnp.float32)
    ours = unet.GroupNorm32().init(jax.random.key(0), x)["params"]
    theirs = flax_nn.GroupNorm(num_groups=unet.NUM_GROUPS).init(jax.random.key(0), x)["params"]
    self.assertEqual(jax.tree.map(lambda a: (a.shape, a.dtype), ours), jax.tree.map(lambda a: (a.shape, a.dtype), theirs))
    for name in ("scale", "bias"):
      np.testing.assert_array_equal(ours[name], theirs[name])

  @parameterized.named_parameters(("plain", False, False), ("silu", False, True), ("film_silu", True, True))
  def test_values_and_gradients_equal_flax_up_to_rounding(self, film, silu):
    x, params, scale, shift = self._inputs(jnp.float32)
    film_args = (scale, shift) if film else ()
    dy = jax.random.normal(jax.random.key(9), x.shape)

    def loss(fn):
      return lambda params, x, *film: jnp.sum(fn(params, x, *film) * dy)
    ours = lambda params, x, *film: unet.GroupNorm32(silu=silu).apply({"params": params}, x, *film)
    theirs = lambda params, x, *film: self._flax(params, x, *film, silu=silu)
    np.testing.assert_allclose(ours(params, x, *film_args), theirs(params, x, *film_args), rtol=1e-5, atol=1e-5)
    argnums = tuple(range(2 + len(film_args)))
    for g_ours, g_theirs in zip(jax.tree.leaves(jax.grad(loss(ours), argnums)(params, x, *film_args)),
                                jax.tree.leaves(jax.grad(loss(theirs), argnums)(params, x, *film_args))):
      np.testing.assert_allclose(g_ours, g_theirs, rtol=1e-4, atol=1e-4)
    # not vacuous: the output is normalised per group, not per channel or per image
    y = np.asarray(unet.GroupNorm32().apply({"params": jax.tree.map(jnp.ones_like, params) | {"bias": jnp.zeros(64)}}, x))
    groups = y.reshape(3, -1, unet.NUM_GROUPS, 2)
    np.testing.assert_allclose(groups.mean((1, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(groups.var((1, 3)), 1, atol=1e-3)

  def test_bfloat16_input_within_rounding_and_dtype_kept(self):
    x, params, scale, shift = self._inputs(jnp.bfloat16)
    ours = unet.GroupNorm32(silu=True).apply({"params": params}, x, scale, shift)
    self.assertEqual(ours.dtype, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(ours, np.float32),
                               np.asarray(self._flax(params, x, scale, shift, silu=True), np.float32), rtol=2 ** -7, atol=2 ** -7)

  def test_channels_not_divisible_by_the_groups(self):
    with self.assertRaisesRegex(ValueError, "divisible by 32"):
      unet.GroupNorm32().init(jax.random.key(0), jnp.zeros((1, 4, 4, 48)))


class ScaleShiftProjectionTest(parameterized.TestCase):
  """The FiLM projection as two products against the split of the nn.Dense it replaces."""

  def _dense(self, dtype=jnp.float32):
    return flax_nn.Dense(24, dtype=dtype, param_dtype=jnp.float32, kernel_init=unet._torch_kernel_init(),
                         bias_init=unet._torch_bias_init(40))

  def test_same_params_and_init_as_dense(self):
    x = jnp.ones((3, 40))
    ours = unet.ScaleShiftProjection(24, 40).init(jax.random.key(1), x)["params"]
    theirs = self._dense().init(jax.random.key(1), x)["params"]
    self.assertEqual(set(ours), {"kernel", "bias"})
    for name in ours:
      np.testing.assert_array_equal(ours[name], theirs[name])

  @parameterized.named_parameters(("float32", jnp.float32, 1e-5), ("bfloat16", jnp.bfloat16, 2 ** -6))
  def test_the_halves_of_dense_up_to_rounding_values_and_gradients(self, dtype, tol):
    k = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(k[0], (3, 40))
    params = {"kernel": jax.random.normal(k[1], (40, 24)), "bias": jax.random.normal(k[2], (24,))}
    ours = lambda p, x: unet.ScaleShiftProjection(24, 40, dtype).apply({"params": p}, x)
    theirs = lambda p, x: tuple(jnp.split(self._dense(dtype).apply({"params": p}, x), 2, axis=-1))
    scale, shift = ours(params, x)
    self.assertEqual((scale.shape, shift.shape, scale.dtype), ((3, 12), (3, 12), dtype))
    for a, b in zip(ours(params, x), theirs(params, x)):
      np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol * 8)
    dy = jax.random.normal(jax.random.key(3), (2, 3, 12))
    grads = [jax.grad(lambda p, x, f=f: sum(jnp.sum(o.astype(jnp.float32) * d) for o, d in zip(f(p, x), dy)),
                      (0, 1))(params, x) for f in (ours, theirs)]
    for g_ours, g_theirs in zip(*map(jax.tree.leaves, grads)):
      np.testing.assert_allclose(g_ours, g_theirs, rtol=tol, atol=tol * 8)


class UNetTest(parameterized.TestCase):

  def test_timestep_embedding_known_values(self):
    t = jnp.array([0.0, 2.5])
    emb = np.asarray(unet.timestep_embedding(t, 4))
    # freqs = 10000**(-i/2) for i = 0, 1 -> (1, 0.01); layout [cos, cos, sin, sin].
    np.testing.assert_allclose(emb[0], [1, 1, 0, 0], atol=0)
    np.testing.assert_allclose(emb[1], [np.cos(2.5), np.cos(0.025), np.sin(2.5), np.sin(0.025)], rtol=1e-6)
    self.assertEqual(unet.timestep_embedding(t, 5).shape, (2, 5))

  def test_init_output_is_exactly_zero_and_params_float32(self):
    # ADM zero-initialises the output convolution. (An rbg key: threefry init compiles slowly on CPU.)
    model = builders.create_model(_micro())
    params = unet.init_params(model, jax.random.key(0, impl="rbg"))
    for leaf in jax.tree.leaves(params):
      self.assertEqual(leaf.dtype, jnp.float32)
    x, t, _ = _inputs(model)
    np.testing.assert_array_equal(np.asarray(_jit_apply(model)({"params": params}, x, t)), 0.0)
    self.assertTrue(np.any(np.asarray(params["input_blocks_0_0"]["kernel"]) != 0))
    # PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernels and biases.
    kernel = np.asarray(params["time_embed_2"]["kernel"])
    self.assertLessEqual(np.abs(kernel).max(), 1 / np.sqrt(128))
    self.assertGreater(np.abs(kernel).max(), 0.9 / np.sqrt(128))

  @parameterized.named_parameters(
      ("learn_sigma_class_conditional_two_levels", _tiny, True, 5),
      ("fixed_sigma_unconditional_one_level", _micro, False, 0),
  )
  def test_output_shape(self, make_config, learn_sigma, num_classes):
    model = builders.create_model(make_config(learn_sigma=learn_sigma, data_num_classes=num_classes))
    params = _random_params(model)
    x, t, y = _inputs(model)
    out = _jit_apply(model)({"params": params}, x, t, y)
    self.assertEqual(out.shape, (2, 8, 8, 6 if learn_sigma else 3))
    self.assertEqual(out.dtype, jnp.float32)
    self.assertTrue(np.all(np.isfinite(out)))
    if num_classes:   # the label changes the output
      out2 = _jit_apply(model)({"params": params}, x, t, (y + 1) % num_classes)
      self.assertGreater(float(jnp.abs(out2 - out).max()), 1e-3)

  def test_labels_required_iff_class_conditional(self):
    model = builders.create_model(_micro(data_num_classes=5))
    x, t, _ = _inputs(model)
    with self.assertRaisesRegex(ValueError, "class-conditional"):
      jax.eval_shape(model.init, jax.random.key(0), x, t)

  def test_bfloat16_compute_float32_params_and_output(self):
    f32 = builders.create_model(_micro())
    bf16 = builders.create_model(_micro(dtype="bfloat16"))
    self.assertEqual(bf16.dtype, jnp.bfloat16)
    shapes = unet.param_shapes(bf16)
    self.assertEqual({leaf.dtype for leaf in jax.tree.leaves(shapes)}, {jnp.dtype(jnp.float32)})
    params = _random_params(f32)
    x, t, _ = _inputs(f32)
    out32 = _jit_apply(f32)({"params": params}, x, t)
    out16 = _jit_apply(bf16)({"params": params}, x, t)
    self.assertEqual(out16.dtype, jnp.float32)
    err = float(jnp.abs(out16 - out32).max() / jnp.abs(out32).max())
    self.assertLess(err, 0.1)
    self.assertGreater(err, 0.0)   # it really computed in bfloat16

  def test_attention_orders_agree_after_permuting_qkv(self):
    # Legacy order packs qkv channels as (head, q|k|v, ch), the new order as (q|k|v, head, ch).
    legacy = builders.create_model(_micro(num_heads=2))
    new = builders.create_model(_micro(num_heads=2, use_new_attention_order=True))
    params = _random_params(legacy)
    x, t, _ = _inputs(legacy)
    heads, ch = 2, 16

    def to_new_order(path, leaf):
      if "qkv" not in [p.key for p in path]:
        return leaf
      # legacy channel h*3ch + s*ch + c  ->  new channel s*(heads*ch) + h*ch + c
      lead = leaf.shape[:-1]
      return leaf.reshape(lead + (heads, 3, ch)).swapaxes(-3, -2).reshape(leaf.shape)

    out_legacy = _jit_apply(legacy)({"params": params}, x, t)
    out_new_same = _jit_apply(new)({"params": params}, x, t)
    out_new_permuted = _jit_apply(new)({"params": jax.tree_util.tree_map_with_path(to_new_order, params)}, x, t)
    np.testing.assert_allclose(out_new_permuted, out_legacy, atol=1e-5, rtol=1e-5)
    self.assertGreater(float(jnp.abs(out_new_same - out_legacy).max()), 1e-3)

  def test_remat_same_params_and_outputs_and_checkpoints_the_gradient(self):
    plain = builders.create_model(_micro(dropout=0.1))
    remat = builders.create_model(_micro(dropout=0.1, remat=True))
    self.assertEqual(jax.tree.structure(unet.param_shapes(plain)), jax.tree.structure(unet.param_shapes(remat)))
    params = _random_params(plain)
    x, t, _ = _inputs(plain)
    rngs = {"dropout": jax.random.key(3)}
    out_plain = _jit_apply(plain)({"params": params}, x, t, train=True, rngs=rngs)
    out_remat = _jit_apply(remat)({"params": params}, x, t, train=True, rngs=rngs)
    np.testing.assert_allclose(out_remat, out_plain, atol=1e-6)   # same dropout masks too

    def rematted(model):   # top-level jax.checkpoint equations of the forward pass
      jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, x, t, train=True, rngs=rngs))(params)
      return sum(eqn.primitive.name in ("checkpoint", "remat", "remat2") for eqn in jaxpr.eqns)
    # Every ResBlock and AttentionBlock: input_blocks.1.{0,1}, middle_block.{0,1,2}, output_blocks.{0,1}.{0,1}.
    self.assertEqual(rematted(remat), 9)
    self.assertEqual(rematted(plain), 0)

  def test_injected_convolution_same_params_outputs_and_gradients(self):
    # create_model injects conv.conv_general_dilated (GEMM weight gradients, 1x1 layers as dots); a UNet on XLA's
    # own convolutions has the same params and computes the same function and gradients up to float rounding.
    # 16x16 with 64 channels reaches the GEMM weight gradient; the channel change reaches the 1x1 skip.
    config = _tiny(data_image_size=16, model_channels=64, channel_mult=(1, 2), attention_resolutions=(8,))
    ours = builders.create_model(config)
    plain = ours.clone(conv=jax.lax.conv_general_dilated)
    self.assertIs(ours.conv, conv.conv_general_dilated)
    self.assertEqual(jax.tree.structure(unet.param_shapes(ours)), jax.tree.structure(unet.param_shapes(plain)))
    params = _random_params(ours)
    x, t, _ = _inputs(ours)

    def loss_and_grads(model):
      loss = lambda p: jnp.mean(model.apply({"params": p}, x, t) ** 2)
      return jax.jit(jax.value_and_grad(loss))(params)

    (loss, grads), (plain_loss, plain_grads) = loss_and_grads(ours), loss_and_grads(plain)
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-5)
    for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(plain_grads)):
      np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(e))) + 1e-7,
                                 err_msg=jax.tree_util.keystr(path))
    convolutions = lambda model: jax.jit(model.apply).lower({"params": params}, x, t).as_text().count("convolution")
    self.assertLess(convolutions(ours), convolutions(plain))   # the 1x1 skip is a dot

  def test_dropout_uses_dropout_rng_only_in_training(self):
    model = builders.create_model(_micro(dropout=0.5))
    params = _random_params(model)
    x, t, _ = _inputs(model)
    apply = _jit_apply(model)
    eval_out = apply({"params": params}, x, t, train=False)
    no_dropout = _jit_apply(builders.create_model(_micro()))({"params": params}, x, t)
    np.testing.assert_allclose(eval_out, no_dropout, atol=1e-6)
    a = apply({"params": params}, x, t, train=True, rngs={"dropout": jax.random.key(1)})
    b = apply({"params": params}, x, t, train=True, rngs={"dropout": jax.random.key(2)})
    a2 = apply({"params": params}, x, t, train=True, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(a, a2)
    self.assertGreater(float(jnp.abs(a - b).max()), 1e-3)

  def test_default_channel_mult(self):
    self.assertEqual(builders.create_model(_config(data_image_size=64)).channel_mult, (1, 2, 3, 4))
    self.assertEqual(builders.create_model(_config(data_image_size=16)).channel_mult, (1, 2, 2))
    self.assertEqual(builders.create_model(_config(data_image_size=8, attention_resolutions=(4,))).channel_mult,
                     (1, 2))

  @parameterized.named_parameters(
      ("image_size_not_divisible", dict(data_image_size=20, channel_mult=(1, 2, 2, 2)), "data.image_size"),
      ("no_default_mult", dict(data_image_size=48, channel_mult=()), "model.channel_mult"),
      ("attention_never_occurs", dict(attention_resolutions=(5,)), "model.attention_resolutions"),
      ("attention_below_lowest", dict(attention_resolutions=(2,)), "model.attention_resolutions"),
      ("groupnorm_groups", dict(model_channels=16), "GroupNorm"),
      ("head_channels", dict(num_head_channels=24), "model.num_head_channels"),
      ("num_heads", dict(num_heads=3), "model.num_heads"),
      ("dtype", dict(dtype="float64"), "model.dtype"),
  )
  def test_invalid_config_names_the_field(self, overrides, field):
    with self.assertRaisesRegex(config_checks.ConfigError, field.replace(".", r"\.")):
      config_checks.validate_model(_config(**overrides))

  def test_wrong_input_shape(self):
    model = builders.create_model(_tiny())
    with self.assertRaisesRegex(ValueError, r"\(B, 8, 8, 3\)"):
      jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)))


if __name__ == "__main__":
  absltest.main()
