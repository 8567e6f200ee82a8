"""Samplers chosen by name: each returns a pure `sample(model_fn, x_T, rng) -> x0` that runs as one XLA program.

`model_fn(x, t)` is the network at original training timesteps t (float32, shape (B,)) with params and labels
already bound; jit the caller (`jax.jit(lambda params, x, rng: sample(partial(f, params), x, rng))`) so the
params stay arguments rather than constants.

DDPM (ancestral) and DDIM run on a respaced chain (`Schedule.respace`: "100", "ddim50", "10,15,20"); the
multistep solvers come from `solvers`. SAMPLERS, at the end, names them all.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from debias_jax.diffusion import reverse, solvers, targets
from debias_jax.diffusion.schedules import Schedule

SamplerFactory = Callable[..., Callable]


def sampler_names() -> tuple[str, ...]:
  return tuple(sorted(SAMPLERS))


def get_sampler(name: str, schedule: Schedule, steps, *, target: str = "eps", var_type: str = "fixed_small",
                clip_x0: bool = True, **options) -> Callable:
  """The sampler `name` over the training `schedule` in `steps` steps (an int or a respacing string).

  var_type tells how to read the model output: "learned_range" means 2C channels (the mean part is used by
  every sampler, the variance by DDPM only).
  """
  if name not in SAMPLERS:
    raise ValueError(f"Unknown sampler {name!r}; valid samplers: {', '.join(sampler_names())}.")
  targets.check_target(target)
  reverse.check_var_type(var_type)
  return SAMPLERS[name](schedule, steps, target=target, var_type=var_type, clip_x0=clip_x0, **options)


def _reverse_loop(chain: Schedule, step_fn, x_T, rng):
  """Runs step_fn(i, x, key) for i = N-1 .. 0 in one fori_loop."""
  n = chain.num_steps

  def body(j, carry):
    x, key = carry
    key, step_key = jax.random.split(key)
    return step_fn(n - 1 - j, x, step_key), key

  x, _ = jax.lax.fori_loop(0, n, body, (x_T, rng))
  return x


def _model_output(model_fn, chain: Schedule, x, i):
  batch_steps = jnp.full((x.shape[0],), i, jnp.int32)
  t = jnp.asarray(chain.timesteps, jnp.float32)[batch_steps]
  return model_fn(x, t).astype(jnp.float32), batch_steps


def ddpm_sampler(schedule: Schedule, steps, *, target, var_type, clip_x0):
  """Ancestral sampling on a respaced chain with the fixed or learned reverse variances."""
  chain = schedule.respace(steps)

  def sample(model_fn, x_T, rng):
    def step(i, x, key):
      output, batch_steps = _model_output(model_fn, chain, x, i)
      out = reverse.p_mean_variance(chain, target, var_type, output, x, batch_steps, clip_x0)
      noise = jax.random.normal(key, x.shape, x.dtype)
      return out["mean"] + jnp.where(i > 0, 1.0, 0.0) * jnp.exp(0.5 * out["log_variance"]) * noise
    return _reverse_loop(chain, step, x_T, rng)

  return sample


def ddim_sampler(schedule: Schedule, steps, *, target, var_type, clip_x0, eta: float = 0.0):
  """DDIM on a respaced chain; eta = 0 is deterministic, eta = 1 matches DDPM's posterior variance."""
  chain = schedule.respace(steps)

  def sample(model_fn, x_T, rng):
    def step(i, x, key):
      output, batch_steps = _model_output(model_fn, chain, x, i)
      out = reverse.p_mean_variance(chain, target, var_type, output, x, batch_steps, clip_x0)
      alpha_bar = targets.gather(chain.alphas_cumprod, batch_steps, x.ndim)
      alpha_bar_prev = targets.gather(chain.alphas_cumprod_prev, batch_steps, x.ndim)
      sigma = (eta * jnp.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
               * jnp.sqrt(1 - alpha_bar / alpha_bar_prev))
      mean = (out["x0"] * jnp.sqrt(alpha_bar_prev)
              + jnp.sqrt(jnp.maximum(1 - alpha_bar_prev - sigma ** 2, 0.0)) * out["eps"])
      noise = jax.random.normal(key, x.shape, x.dtype)
      return mean + jnp.where(i > 0, 1.0, 0.0) * sigma * noise
    return _reverse_loop(chain, step, x_T, rng)

  return sample


SAMPLERS: dict[str, SamplerFactory] = {
    "ddpm": ddpm_sampler,
    "ddim": ddim_sampler,
    "dpm_solver++": solvers.dpm_solver_pp_sampler,
    "dpm_solver": solvers.dpm_solver_sampler,
    "unipc": solvers.unipc_sampler,
}
