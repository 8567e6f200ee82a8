"""The UNet's convolution primitive: XLA's, except where XLA:CPU's gradients are slow.

`builders.create_model` passes `conv_general_dilated` below to every layer (the UNet takes its convolution as an
argument; `lax.conv_general_dilated` gives XLA's own everywhere). Two substitutions, both equal up to float
rounding (only the order of the sums changes):

- 3×3 "SAME" layers, wide and large enough: on CPU the weight gradient is nine GEMMs, one per kernel tap (shifted
  input, transposed, times the output gradient). XLA:CPU writes it as a convolution with the output gradient as
  its kernel, which ran at 12–30 GFLOP/s on an Intel Xeon where its forward and input-gradient convolutions
  reach ~90–120; it was half of a CIFAR-10 train step. (On an AMD EPYC XLA's own runs at ~110 GFLOP/s; the GEMMs
  are 1.2–1.6x faster there too.) Other platforms keep XLA's gradient (cuDNN and TPU convolutions are fast),
  chosen by `lax.platform_dependent` when the program is lowered; narrow or small layers keep it too.
- In bfloat16, the same layers' forward and input gradient are nine GEMMs too (`conv_as_gemms`), on CPU only:
  XLA:CPU runs bfloat16 dots on the matrix units of CPUs that have them (AMX: a 2048² product in 17 ms against
  101 ms in float32 on this project's Xeon) but not bfloat16 convolutions (a 32×32×256 3×3 layer: 133 ms, as slow
  as float32). The products are summed in float32, then rounded once to bfloat16.
- 1×1 layers (the ResBlock skips): a dot over channels on every platform, which is what a 1×1 convolution is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

# Where the nine GEMMs beat XLA:CPU's own weight gradient (measured on this project's 2-core Xeon, one thread,
# batch 32: 1.1-2.1x faster with 64-128 channels in and out at 16x16 and 32x32, 3.8x at 128x128; 0.5-0.9x with
# fewer than 64 channels on either side, e.g. the output convolution, or at 8x8).
MIN_CHANNELS = 64
MIN_PIXELS = 16 * 16

# Named scopes of the GEMM forms, so a profile (benchmark_profile) can tell forward, input- and weight-gradient
# GEMMs apart (all three are loops of dots in the compiled program).
FORWARD_GEMMS = "conv_forward_gemms"
INPUT_GRAD_GEMMS = "conv_input_grad_gemms"
WEIGHT_GRAD_GEMMS = "conv_weight_grad_gemms"

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))
_SAME_3X3 = ((1, 1), (1, 1))


def _xla_conv(x, w, precision=None):
  return lax.conv_general_dilated(x, w, (1, 1), _SAME_3X3, dimension_numbers=_NHWC, precision=precision)


def weight_grad_as_gemms(x, dy, precision=None):
  """d/dw of sum(conv3x3_same(x, w) * dy) as nine GEMMs: dw[i, j] = shift_ij(x)^T dy over all pixels.

  Each tap is computed transposed, dy^T shift_ij(x), with dy^T made once: both operands then have the summed
  pixel axis where a plain row-major GEMM wants it (AMD EPYC, one thread, batch 16, the CIFAR-10 UNet's layers:
  1.2-1.45x faster than contracting the pixel axis of both, the form before, and 1.2-1.6x XLA's own). A scan over
  the taps keeps one shifted copy of x alive at a time (unrolled, XLA materialised all nine: twice the temporary
  memory of the train step, and slower).
  """
  b, h, w, c = x.shape
  n = b * h * w
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dy_t = dy.reshape(n, dy.shape[-1]).T

  def tap(_, k):
    shifted = lax.dynamic_slice(padded, (0, k // 3, k % 3, 0), (b, h, w, c)).reshape(n, c)
    return None, lax.dot_general(dy_t, shifted, (((1,), (0,)), ((), ())), precision=precision)
  _, taps = lax.scan(tap, None, jnp.arange(9))
  return taps.transpose(0, 2, 1).reshape(3, 3, c, dy.shape[-1])


def conv_as_gemms(x, w, precision=None):
  """3×3 stride-1 "SAME" NHWC/HWIO convolution as nine GEMMs, y = sum_ij shift_ij(x) w[i, j], accumulated in
  float32 and returned in x's dtype; one shifted copy of x alive at a time (a scan over the taps)."""
  b, h, wd, c = x.shape
  n = b * h * wd
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

  def tap(acc, k_and_kernel):
    k, kernel = k_and_kernel
    shifted = lax.dynamic_slice(padded, (0, k // 3, k % 3, 0), (b, h, wd, c)).reshape(n, c)
    return acc + lax.dot_general(shifted, kernel, (((1,), (0,)), ((), ())), precision=precision,
                                 preferred_element_type=jnp.float32), None
  out = w.shape[-1]
  acc, _ = lax.scan(tap, jnp.zeros((n, out), jnp.float32), (jnp.arange(9), w.reshape(9, c, out)))
  return acc.reshape(b, h, wd, out).astype(x.dtype)


def _input_grad_as_gemms(dy, w, precision=None):
  """d/dx of sum(conv3x3_same(x, w) * dy): the same convolution of dy with the kernel flipped and transposed."""
  return conv_as_gemms(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), precision)


def _scoped(name: str, fn):
  def scoped(*args):
    with jax.named_scope(name):
      return fn(*args)
  return scoped


def _on_cpu_in_bfloat16(x, gemms, xla, *args):
  """`gemms(*args)` on CPU for bfloat16 inputs, else `xla(*args)` (the dtype is known when tracing)."""
  if x.dtype != jnp.bfloat16:
    return xla(*args)
  return lax.platform_dependent(*args, cpu=gemms, default=xla)


def _xla_weight_grad(x, dy, w, precision=None):
  return jax.vjp(lambda w: _xla_conv(x, w, precision), w)[1](dy)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x, w, precision=None):
  """3×3 stride-1 "SAME" NHWC/HWIO convolution; its weight gradient uses the nine GEMMs on CPU, and in bfloat16
  its forward and input gradient as well."""
  return _on_cpu_in_bfloat16(x, _scoped(FORWARD_GEMMS, lambda x, w: conv_as_gemms(x, w, precision)),
                             lambda x, w: _xla_conv(x, w, precision), x, w)


def _conv3x3_fwd(x, w, precision):
  return conv3x3(x, w, precision), (x, w)


def _conv3x3_bwd(precision, residuals, dy):
  x, w = residuals
  dx = _on_cpu_in_bfloat16(x, _scoped(INPUT_GRAD_GEMMS, lambda dy, w: _input_grad_as_gemms(dy, w, precision)),
                           lambda dy, w: jax.vjp(lambda x: _xla_conv(x, w, precision), x)[1](dy)[0], dy, w)
  dw = lax.platform_dependent(
      x, dy, w,
      cpu=_scoped(WEIGHT_GRAD_GEMMS, lambda x, dy, w: weight_grad_as_gemms(x, dy, precision).astype(w.dtype)),
      default=lambda x, dy, w: _xla_weight_grad(x, dy, w, precision))
  return dx, dw


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def uses_gemm_weight_grad(lhs_shape, rhs_shape, window_strides, padding, lhs_dilation, rhs_dilation,
                          dimension_numbers, feature_group_count) -> bool:
  """Whether a flax Conv call is the 3×3 SAME case, wide and large enough for the GEMMs to pay off on CPU."""
  return (_plain(window_strides, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, lhs_shape)
          and tuple(rhs_shape[:2]) == (3, 3) and tuple(map(tuple, padding)) == _SAME_3X3
          and min(lhs_shape[-1], rhs_shape[-1]) >= MIN_CHANNELS and lhs_shape[1] * lhs_shape[2] >= MIN_PIXELS)


def is_pointwise(lhs_shape, rhs_shape, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                 feature_group_count) -> bool:
  """Whether a flax Conv call is a 1×1 stride-1 unpadded NHWC convolution: a matrix product over channels."""
  return (_plain(window_strides, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, lhs_shape)
          and tuple(rhs_shape[:2]) == (1, 1) and all(tuple(p) == (0, 0) for p in padding))


def _plain(window_strides, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, lhs_shape) -> bool:
  ones = (None, (1, 1), [1, 1])
  return (len(lhs_shape) == 4 and tuple(window_strides) == (1, 1) and lhs_dilation in ones
          and rhs_dilation in ones and feature_group_count == 1 and dimension_numbers == _NHWC)


def pointwise(x, w, precision=None):
  """A 1×1 NHWC/HWIO convolution as a dot over channels.

  Its weight gradient is then a GEMM over all pixels; XLA:CPU's convolution form of it (a window the size of the
  image) ran at ~8 GFLOP/s, a third of the speed of the same layer written as a dot (forward and backward).
  """
  return lax.dot_general(x, w.reshape(w.shape[2:]), (((3,), (0,)), ((), ())), precision=precision)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` with `conv3x3` or `pointwise` substituted where they apply.

  The UNet takes its convolution as an argument (`unet.UNet.conv`); `builders.create_model` passes this one, and
  anything that wants XLA's own convolutions everywhere (counting FLOPs, say) passes `lax.conv_general_dilated`.
  """
  args = (lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count)
  if not kwargs and uses_gemm_weight_grad(*args):
    return conv3x3(lhs, rhs, precision)
  if not kwargs and is_pointwise(*args):
    return pointwise(lhs, rhs, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, precision=precision, **kwargs)
