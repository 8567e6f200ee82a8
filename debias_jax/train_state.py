"""The train state: params, their EMA copies, the optimizer's state and the run's key; how to make one.

Apart from the loop (train.py) so that checkpointing, conversion and sampling can build a state or its template
without importing the training loop.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from debias_jax import builders
from debias_jax import parallel
from debias_jax.models import unet


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: number of updates applied
  params: Any
  ema_params: tuple        # one params tree per config.ema_rates
  opt_state: Any
  rng: jax.Array           # uint32 key data of the run's base key


def state_from_params(config, params) -> TrainState:
  """A step-0 state whose EMA copies start at `params` (as guided-diffusion does)."""
  params = jax.tree.map(jnp.asarray, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=tuple(params for _ in config.ema_rates),
                    opt_state=builders.optimizer(config).init(params),
                    rng=jax.random.key_data(jax.random.key(int(config.seed))))


def create_train_state(config, model, rng) -> TrainState:
  return state_from_params(config, unet.init_params(model, rng))


def abstract_state(config, mesh=None) -> TrainState:
  """The train state's shapes and dtypes (no FLOPs), replicated over `mesh`: a template for restoring."""
  mesh = parallel.create_mesh() if mesh is None else mesh
  model = builders.create_model(config)
  replicated = parallel.replicated(mesh)
  template = jax.eval_shape(lambda rng: create_train_state(config, model, rng), jax.random.key(int(config.seed)))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), template)
