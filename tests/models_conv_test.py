"""The UNet's convolution: same values and gradients as XLA's, the GEMM weight gradient only where it is meant."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.models import conv
from tests import test_util

SAME = ((1, 1), (1, 1))


def xla_conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), SAME, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def inputs(shape, out_channels, dtype=jnp.float32):
  kx, kw, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape, dtype)
  w = (jax.random.normal(kw, (3, 3, shape[-1], out_channels)) / np.sqrt(9 * shape[-1])).astype(dtype)
  dy = jax.random.normal(kd, shape[:-1] + (out_channels,), dtype)
  return x, w, dy


def grads(conv_fn, x, w, dy):
  return jax.jit(jax.grad(lambda x, w: jnp.vdot(conv_fn(x, w), dy).astype(jnp.float32), (0, 1)))(x, w)


class WeightGradTest(parameterized.TestCase):

  @parameterized.parameters(((2, 5, 7, 3), 4), ((3, 16, 16, 96), 32), ((1, 4, 4, 8), 8))
  def test_gemms_equal_xla_weight_gradient(self, shape, out_channels):
    x, w, dy = inputs(shape, out_channels)
    expected = jax.vjp(lambda w: xla_conv(x, w), w)[1](dy)[0]
    got = jax.jit(conv.weight_grad_as_gemms)(x, dy)
    self.assertEqual(got.shape, w.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(expected))))

  def test_gemms_know_the_answer_for_a_single_pixel(self):
    # One pixel of x and one of dy: only the tap joining them gets x ⊗ dy; all others are exactly zero.
    x = jnp.zeros((1, 4, 4, 2)).at[0, 1, 2].set(jnp.array([1.0, 2.0]))
    dy = jnp.zeros((1, 4, 4, 3)).at[0, 2, 2].set(jnp.array([1.0, 10.0, 100.0]))
    dw = conv.weight_grad_as_gemms(x, dy)
    expected = np.zeros((3, 3, 2, 3))
    expected[0, 1] = np.outer([1.0, 2.0], [1.0, 10.0, 100.0])  # x row = dy row + i - 1, x col = dy col + j - 1
    np.testing.assert_array_equal(dw, expected)

  @parameterized.parameters(jnp.float32, jnp.bfloat16)
  def test_conv3x3_values_and_both_gradients_match_xla(self, dtype):
    x, w, dy = inputs((2, 16, 16, 96), 48, dtype)
    y, expected_y = jax.jit(conv.conv3x3)(x, w), jax.jit(xla_conv)(x, w)
    (gx, gw), (ex, ew) = grads(conv.conv3x3, x, w, dy), grads(xla_conv, x, w, dy)
    self.assertEqual((y.dtype, gx.dtype, gw.dtype), (dtype,) * 3)
    if dtype == jnp.float32:   # forward and input gradient are XLA's own; the weight gradient sums in another order
      np.testing.assert_array_equal(y, expected_y)
      np.testing.assert_array_equal(gx, ex)
    # bfloat16 on CPU: all three are GEMMs, equal to XLA's up to bfloat16 rounding
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    for got, expected in ((y, expected_y), (gx, ex), (gw, ew)):
      expected = np.asarray(expected, np.float32)
      np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=tol, atol=tol * np.abs(expected).max())

  def test_conv_as_gemms_equals_xla_in_float32_and_rounds_once_in_bfloat16(self):
    x, w, _ = inputs((2, 8, 8, 16), 8)
    np.testing.assert_allclose(jax.jit(conv.conv_as_gemms)(x, w), xla_conv(x, w), rtol=1e-5, atol=1e-5)
    # bfloat16 inputs: products exact in float32, summed in float32, rounded once: the float32 convolution of the
    # same values rounded to bfloat16, up to one bfloat16 step (the two sums run in different orders)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    exact = jax.lax.conv_general_dilated(xb.astype(jnp.float32), wb.astype(jnp.float32), (1, 1), SAME,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
    got = jax.jit(conv.conv_as_gemms)(xb, wb)
    self.assertEqual(got.dtype, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(exact.astype(jnp.bfloat16), np.float32),
                               rtol=1e-2, atol=1e-6)

  @parameterized.parameters((jnp.float32, ("convolution(", " dot(")), (jnp.bfloat16, (" dot(",)))
  def test_cpu_gemms_replace_the_convolutions_meant(self, dtype, expected_ops):
    # float32: the weight gradient is a GEMM, the forward and input gradient stay XLA's convolutions;
    # bfloat16: all three are GEMMs
    x, w, dy = inputs((2, 16, 16, 96), 32, dtype)
    loss = lambda x, w: jnp.vdot(conv.conv3x3(x, w), dy).astype(jnp.float32)
    weight_grad = jax.jit(jax.grad(loss, 1)).lower(x, w).compile().as_text()
    self.assertNotIn("convolution(", weight_grad)
    self.assertIn(" dot(", weight_grad)
    both = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(x, w).compile().as_text()
    self.assertEqual({op: op in both for op in ("convolution(", " dot(")},
                     {op: op in expected_ops for op in ("convolution(", " dot(")})


class DispatchTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("wide_and_large", (1, 16, 16, 64), {}, True),
      ("narrow_input", (1, 16, 16, 32), {}, False),
      ("narrow_output", (1, 16, 16, 128), {"features": 6}, False),
      ("small", (1, 8, 8, 256), {}, False),
      ("strided", (1, 16, 16, 128), {"strides": 2}, False),
      ("one_by_one", (1, 16, 16, 128), {"kernel_size": (1, 1), "padding": ((0, 0), (0, 0))}, False),
      ("grouped", (1, 16, 16, 128), {"feature_group_count": 2}, False),
      ("dilated", (1, 16, 16, 128), {"kernel_dilation": 2}, False),
  )
  def test_which_flax_convs_get_the_gemm_gradient(self, shape, overrides, expected):
    settings = {"features": 256, "kernel_size": (3, 3), "strides": 1, "padding": SAME, "kernel_dilation": 1,
                "feature_group_count": 1, **overrides}
    seen = []
    original = conv.conv3x3
    try:
      conv.conv3x3 = lambda *a: seen.append(True) or original(*a)
      module = nn.Conv(conv_general_dilated=conv.conv_general_dilated, **settings)
      x = jnp.ones(shape)
      params = module.init(jax.random.key(0), x)
      out = module.apply(params, x)
    finally:
      conv.conv3x3 = original
    self.assertEqual(bool(seen), expected)
    reference = nn.Conv(**settings).apply(params, x)
    np.testing.assert_array_equal(out, reference)


  @parameterized.named_parameters(
      ("one_by_one", (1, 4, 4, 24), {"kernel_size": (1, 1), "padding": ((0, 0), (0, 0))}, True),
      ("one_by_one_strided", (1, 4, 4, 24), {"kernel_size": (1, 1), "padding": ((0, 0), (0, 0)), "strides": 2},
       False),
      ("one_by_one_padded", (1, 4, 4, 24), {"kernel_size": (1, 1), "padding": ((1, 1), (1, 1))}, False),
      ("three_by_three", (1, 4, 4, 24), {}, False),
  )
  def test_which_flax_convs_become_a_dot(self, shape, overrides, expected):
    settings = {"features": 16, "kernel_size": (3, 3), "strides": 1, "padding": SAME, **overrides}
    module = nn.Conv(conv_general_dilated=conv.conv_general_dilated, **settings)
    x = jax.random.normal(jax.random.key(1), shape)
    params = module.init(jax.random.key(0), x)
    hlo = jax.jit(module.apply).lower(params, x).as_text()
    self.assertEqual("convolution" not in hlo, expected)
    np.testing.assert_allclose(module.apply(params, x), nn.Conv(**settings).apply(params, x), rtol=1e-5, atol=1e-5)

  @parameterized.parameters(jnp.float32, jnp.bfloat16)
  def test_pointwise_values_and_gradients_match_xla(self, dtype):
    kx, kw, kd = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, 8, 8, 48), dtype)
    w = (jax.random.normal(kw, (1, 1, 48, 40)) / np.sqrt(48)).astype(dtype)
    dy = jax.random.normal(kd, (2, 8, 8, 40), dtype)
    xla = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((0, 0), (0, 0)),
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for got, expected in zip((jax.jit(conv.pointwise)(x, w),) + grads(conv.pointwise, x, w, dy),
                             (jax.jit(xla)(x, w),) + grads(xla, x, w, dy)):
      self.assertEqual((got.shape, got.dtype), (expected.shape, expected.dtype))
      scale = float(jnp.max(jnp.abs(expected.astype(jnp.float32))))
      np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), rtol=tol,
                                 atol=tol * scale)

  def test_plain_xla_convolution_counts_more_flops_than_the_gemm_scan(self):
    # XLA counts the GEMM scan's body once: the FLOP count must come from XLA's own convolution (what
    # benchmark.py traces by building the UNet with lax.conv_general_dilated).
    x, w, dy = inputs((2, 16, 16, 64), 64)
    flops = lambda fn: jax.jit(jax.grad(lambda w, x, dy: jnp.vdot(fn(x, w), dy))).lower(
        w, x, dy).cost_analysis()["flops"]
    ours = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), SAME, dimension_numbers=conv._NHWC)
    self.assertLess(flops(ours), flops(xla_conv))


class MultiDeviceTest(absltest.TestCase):

  def test_batch_sharded_over_eight_devices_gives_the_single_device_gradient(self):
    script = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n"
        "from debias_jax.models import conv\n"
        "from tests.models_conv_test import inputs\n"
        "assert len(jax.devices()) == 8\n"
        "x, w, dy = inputs((8, 16, 16, 96), 32)\n"
        "f = jax.jit(jax.grad(lambda w, x, dy: jnp.vdot(conv.conv3x3(x, w), dy)))\n"
        "single = f(w, x, dy)\n"
        "batch = NamedSharding(Mesh(np.array(jax.devices()), ('data',)), P('data'))\n"
        "sharded = f(w, jax.device_put(x, batch), jax.device_put(dy, batch))\n"
        "assert len(sharded.sharding.device_set) == 8\n"
        "np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(single))))\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=test_util.REPO, env=test_util.devices_env(8),
                          capture_output=True, text=True)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn("ok", proc.stdout)


if __name__ == "__main__":
  absltest.main()
