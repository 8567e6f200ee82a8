"""The one place that turns a config into the objects a run uses: the UNet, the noise schedule, the loss and the
optimizer (the sampler and the class labels to sample join them in `generation`).

The libraries below take plain arguments (a schedule, a weight table, a convolution), so each of them can be read
and tested without a config; the drivers (train, modes/, experiments/) call these builders. The config has been
checked by `config_checks.validate` first, so a builder reads each field as it is, and every default lives in
configs/default.py.
"""

from __future__ import annotations

import numpy as np
import optax

from debias_jax.diffusion import losses
from debias_jax.diffusion import weighting
from debias_jax.diffusion.schedules import Schedule
from debias_jax.models import conv as conv_lib
from debias_jax.models import unet


def create_model(config, conv_fn: unet.ConvFn = conv_lib.conv_general_dilated) -> unet.UNet:
  """The UNet described by config.model and config.data (image_size, channels, num_classes).

  conv_fn is the convolution of every layer: by default `conv.conv_general_dilated`, which keeps XLA's
  convolutions except where XLA:CPU's gradients are slow (it decides per platform when the program is lowered);
  `jax.lax.conv_general_dilated` gives XLA's own everywhere (same params, same maths up to float rounding).
  """
  m, d = config.model, config.data
  image_size, channels = int(d.image_size), int(d.channels)
  return unet.UNet(
      image_size=image_size,
      in_channels=channels,
      model_channels=int(m.model_channels),
      out_channels=2 * channels if m.learn_sigma else channels,
      num_res_blocks=int(m.num_res_blocks),
      attention_resolutions=tuple(int(r) for r in m.attention_resolutions),
      channel_mult=unet.resolve_channel_mult(tuple(m.channel_mult), image_size),
      dropout=float(m.dropout),
      num_classes=int(d.num_classes),
      num_heads=int(m.num_heads),
      num_head_channels=int(m.num_head_channels),
      use_scale_shift_norm=bool(m.use_scale_shift_norm),
      resblock_updown=bool(m.resblock_updown),
      use_new_attention_order=bool(m.use_new_attention_order),
      dtype=unet.DTYPES[str(m.dtype)],
      remat=bool(m.remat),
      conv=conv_fn,
  )


def schedule(config) -> Schedule:
  """The training chain of config.diffusion (float64 tables)."""
  return Schedule.named(config.diffusion.schedule, int(config.diffusion.num_timesteps))


def var_type(config) -> str:
  """How the reverse process gets its variances: learned (ADM's learned range) or fixed."""
  return "learned_range" if config.model.learn_sigma else "fixed_small"


def loss_weights(config, chain: Schedule) -> np.ndarray:
  """config.loss's weighting over the chain's steps, converted to config.loss.target's space."""
  loss = config.loss
  return weighting.loss_weights(chain, loss.weighting, loss.target, p2_k=loss.p2_k, p2_gamma=loss.p2_gamma,
                                min_snr_gamma=loss.min_snr_gamma, snr_clamp=loss.snr_clamp or None,
                                normalize=loss.normalize_weights)


def loss_fn(config, chain: Schedule):
  """loss_fn(predict, x0, rng) of config.loss on the chain (see diffusion/losses.py)."""
  return losses.make_loss_fn(chain, loss_weights(config, chain), config.loss.target, bool(config.model.learn_sigma),
                             config.loss.t_sampling)


def learning_rate(config) -> optax.Schedule:
  """The learning rate at each step: constant, after an optional linear warm-up."""
  lr, warmup = float(config.optim.learning_rate), int(config.optim.warmup_steps)
  if warmup <= 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def optimizer(config) -> optax.GradientTransformation:
  """AdamW with an optional linear warm-up and global-norm clipping (the authors: lr 2e-5, no decay, neither)."""
  o = config.optim
  adamw = optax.adamw(learning_rate(config), b1=float(o.b1), b2=float(o.b2), eps=float(o.eps),
                      weight_decay=float(o.weight_decay))
  clip = float(o.grad_clip_norm)
  return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw
