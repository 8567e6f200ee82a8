"""The train state: params, their EMA copies, the optimizer's state and the run's key; how to make one.

Apart from the loop (train.py) so that checkpointing, conversion and sampling can build a state or its template
without importing the training loop.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from debias_jax import parallel
from debias_jax.models import unet


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: number of updates applied
  params: Any
  ema_params: tuple        # one params tree per config.ema_rates
  opt_state: Any
  rng: jax.Array           # uint32 key data of the run's base key


def learning_rate_schedule(optim_config) -> optax.Schedule:
  """The learning rate at each step: constant, after an optional linear warm-up."""
  lr = float(optim_config.learning_rate)
  warmup = int(optim_config.warmup_steps)
  if warmup <= 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def make_optimizer(optim_config) -> optax.GradientTransformation:
  """AdamW with an optional linear warm-up and global-norm clipping (the authors: lr 2e-5, no decay, neither)."""
  adamw = optax.adamw(learning_rate_schedule(optim_config), b1=float(optim_config.b1), b2=float(optim_config.b2),
                      eps=float(optim_config.eps), weight_decay=float(optim_config.weight_decay))
  clip = float(optim_config.grad_clip_norm)
  return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw


def state_from_params(config, params) -> TrainState:
  """A step-0 state whose EMA copies start at `params` (as guided-diffusion does)."""
  params = jax.tree.map(jnp.asarray, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=tuple(params for _ in config.ema_rates),
                    opt_state=make_optimizer(config.optim).init(params),
                    rng=jax.random.key_data(jax.random.key(int(config.seed))))


def create_train_state(config, model, rng) -> TrainState:
  return state_from_params(config, unet.init_params(model, rng))


def abstract_state(config, mesh=None) -> TrainState:
  """The train state's shapes and dtypes (no FLOPs), replicated over `mesh`: a template for restoring."""
  mesh = parallel.create_mesh() if mesh is None else mesh
  model = unet.create_model(config)
  replicated = parallel.replicated(mesh)
  template = jax.eval_shape(lambda rng: create_train_state(config, model, rng), jax.random.key(int(config.seed)))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), template)
