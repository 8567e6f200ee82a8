"""Training: the train state, one pure jitted train step, and the thin loop that drives it.

The loop: data -> step -> metrics / sample grids / checkpoints, resuming from the workdir's latest checkpoint.
The per-step randomness is fold_in(run key, step), and the batch at step s is a pure function of (seed, s), so a
resumed run continues the same stream and ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from typing import Any

from absl import logging
from clu import periodic_actions
from etils import epath
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import jsonl
from debias_jax import parallel
from debias_jax import sampling
from debias_jax import storage
from debias_jax import summaries
from debias_jax.data import pipeline
from debias_jax.diffusion import losses
from debias_jax.diffusion import weighting
from debias_jax.models import unet

NO_NONFINITE_STEP = np.iinfo(np.int32).max


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


def init_metric_sums(num_steps: int) -> dict:
  """Zeroed (sum, count) accumulators, one buffer each (they are donated to the train step)."""
  terms = {"loss": jnp.zeros(1), "mse": jnp.zeros(1), "vb": jnp.zeros(1), "t": jnp.zeros(1, jnp.int32)}
  sums = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), losses.metric_sums(terms, num_steps))
  sums["grad_norm"] = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  return {"sums": sums, "first_nonfinite_step": jnp.full((), NO_NONFINITE_STEP, jnp.int32)}


def make_train_step(config, model, schedule):
  """train_step(state, metric_sums, batch) -> (state, metric_sums); with train.steps_per_call = K > 1 the batch
  arrays carry a leading axis of K steps and the call runs them in a lax.scan."""
  weights = weighting.loss_weights_from_config(schedule, config.loss)
  loss_fn = losses.make_loss_fn(schedule, weights, config.loss.target, bool(config.model.learn_sigma))
  tx = make_optimizer(config.optim)
  rates = tuple(float(r) for r in config.ema_rates)
  conditional = int(config.data.get("num_classes", 0)) > 0

  def one_step(state: TrainState, sums: dict, batch: dict):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    loss_key, dropout_key = jax.random.split(key)
    labels = batch["label"] if conditional else None

    def loss_of(params):
      predict = lambda x_t, t: model.apply({"params": params}, x_t, t, labels, train=True,
                                           rngs={"dropout": dropout_key})
      return loss_fn(predict, batch["image"], loss_key)

    (loss, terms), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = tuple(jax.tree.map(lambda e, p, r=rate: r * e + (1.0 - r) * p, e_params, params)
                for rate, e_params in zip(rates, state.ema_params))
    updated = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    # A non-finite loss or gradient leaves the state as it was and is reported; the loop stops on it.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    step_sums = losses.metric_sums(terms, schedule.num_steps)
    step_sums["grad_norm"] = (grad_norm, jnp.float32(1.0))
    sums = {"sums": jax.tree.map(jnp.add, sums["sums"], step_sums),
            "first_nonfinite_step": jnp.where(finite, sums["first_nonfinite_step"],
                                              jnp.minimum(sums["first_nonfinite_step"], state.step))}
    return state, sums

  if int(config.train.steps_per_call) == 1:
    return one_step

  def multi_step(state, sums, batches):
    (state, sums), _ = jax.lax.scan(lambda carry, b: (one_step(*carry, b), None), (state, sums), batches)
    return state, sums

  return multi_step


def state_norms(state: TrainState, rates) -> dict:
  """Global norm of the params and each EMA copy's distance from them, relative to that norm: how far the
  averaged weights trail the trained ones (a jitted pass over the params, run when the loop logs)."""
  norm = optax.tree.norm(state.params)
  out = {"param_norm": norm}
  for rate, ema in zip(rates, state.ema_params):
    out[f"ema{float(rate):g}_distance"] = optax.tree.norm(jax.tree.map(jnp.subtract, ema, state.params)) / norm
  return out


def save_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    storage.write_atomic(epath.Path(workdir) / "config.json", config.to_json_best_effort(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads((epath.Path(workdir) / "config.json").read_text()))


class _StopRequest:
  """Set by SIGTERM (preemption on most clouds); the loop saves and exits at the next step."""

  def __init__(self):
    self.requested = False
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True


class NonFiniteLossError(FloatingPointError):
  pass


def _check_finite(sums, checkpointer) -> None:
  bad = int(jax.device_get(sums["first_nonfinite_step"]))
  if bad != NO_NONFINITE_STEP:
    latest = checkpointer.latest_step()
    kept = (f"the last good checkpoint (step {latest}) is kept in {checkpointer.directory}" if latest is not None
            else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"The loss or its gradient became NaN/inf at step {bad} (the update from step {bad}); training stopped "
        f"and {kept}. Lower optim.learning_rate, set optim.grad_clip_norm, or set loss.snr_clamp "
        f"if the weights are extreme.")


def _write_samples(config, generator, state, step, workdir, writer):
  rng = jax.random.fold_in(jax.random.key(int(config.seed)), 0x5A)
  images = generator.generate(state.ema_params[0], int(config.sampling.num_samples), rng)
  grid = sampling.image_grid(sampling.to_uint8(images))
  if jax.process_index() == 0:
    sampling.save_png(epath.Path(workdir) / "samples" / f"step_{step:08d}.png", grid,
                      upscale=max(1, 128 // int(config.data.image_size)))
  writer.write_images(step, {"samples": grid[None]})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains config.train.num_steps steps in `workdir`, resuming from its latest checkpoint; returns the state."""
  mesh = parallel.create_mesh()
  config_checks.validate(config, num_devices=mesh.devices.size)
  model = unet.create_model(config)
  schedule = sampling.training_schedule(config)
  t = config.train
  steps_per_call, num_steps = int(t.steps_per_call), int(t.num_steps)

  replicated = parallel.replicated(mesh)
  init = jax.jit(lambda rng: create_train_state(config, model, rng), out_shardings=replicated)
  checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), keep=int(t.keep_checkpoints))
  if checkpointer.latest_step() is None:
    state = init(jax.random.key(int(config.seed)))
  else:
    template = jax.eval_shape(init, jax.random.key(int(config.seed)))
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), template)
    state = checkpointer.restore(template)
    logging.info("Resumed from the checkpoint at step %d in %s.", int(state.step), checkpointer.directory)
  save_config(config, workdir)
  step = int(jax.device_get(state.step))
  if step % steps_per_call:
    raise ValueError(f"The checkpoint is at step {step}, not a multiple of train.steps_per_call={steps_per_call}; "
                     f"resume with the steps_per_call it was trained with.")

  train_step = jax.jit(make_train_step(config, model, schedule),
                       in_shardings=(replicated, replicated, parallel.batch_sharding(mesh, int(steps_per_call > 1))),
                       out_shardings=(replicated, replicated), donate_argnums=(0, 1))
  fresh_sums = jax.jit(lambda: init_metric_sums(schedule.num_steps), out_shardings=replicated)
  sums = fresh_sums()
  generator = sampling.Generator(config, model, mesh, schedule)

  writer = summaries.create_writer(workdir, is_main=jax.process_index() == 0)
  if step == 0:
    writer.write_hparams(config.to_dict())
  learning_rate = learning_rate_schedule(config.optim)
  norms = jax.jit(lambda s: state_norms(s, config.ema_rates))
  hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=int(t.log_every))] if jax.process_index() == 0 else []
  batches = pipeline.create_train_iterator(config.data, global_batch_size=int(t.batch_size),
                                           seed=int(config.seed), start_step=step)
  stop = _StopRequest()
  every = lambda n: n > 0 and step % n == 0

  logging.info("Training from step %d to %d on %d devices.", step, num_steps, mesh.devices.size)
  while step < num_steps:
    local = [next(batches) for _ in range(steps_per_call)]
    if steps_per_call > 1:
      local = {k: np.stack([b[k] for b in local]) for k in ("image", "label")}
    else:
      local = {k: local[0][k] for k in ("image", "label")}
    state, sums = train_step(state, sums, parallel.global_batch(local, mesh, int(steps_per_call > 1)))
    for done in range(step + 1, step + steps_per_call + 1):  # clu's hooks expect every step
      for hook in hooks:
        hook(done)
    step += steps_per_call

    last = step >= num_steps
    preempted = checkpointer.reached_preemption(step)  # orbax makes every host agree on this one
    if jax.process_count() == 1:
      preempted = preempted or stop.requested
    elif every(int(t.log_every) or int(t.checkpoint_every) or steps_per_call):
      # SIGTERM reaches the hosts at different steps: they act on it together, at a step all of them check.
      preempted = preempted or bool(multihost_utils.process_allgather(np.array(stop.requested)).any())
    if every(int(t.log_every)) or last or preempted:
      _check_finite(sums, checkpointer)
      metrics = losses.finalize_metrics(jax.device_get(sums["sums"]))
      metrics["learning_rate"] = float(learning_rate(step - 1))  # the rate of this interval's last update
      metrics.update({k: float(v) for k, v in jax.device_get(norms(state)).items()})
      writer.write_scalars(step, metrics)
      jsonl.append(epath.Path(workdir) / "metrics.jsonl", {"step": step, **metrics})
      sums = fresh_sums()
    if every(int(t.checkpoint_every)) or last or preempted:
      _check_finite(sums, checkpointer)
      checkpointer.save(state)
    if every(int(t.sample_every)) or (last and int(t.sample_every) > 0):
      with hooks[0].timed("sample", wait_jax_async_dispatch=False) if hooks else contextlib.nullcontext():
        _write_samples(config, generator, state, step, workdir, writer)
    if preempted and not last:
      logging.warning("Stopped at step %d for preemption; rerun the same command to resume.", step)
      break
  checkpointer.close()
  writer.flush()
  return state


def abstract_state(config, mesh=None) -> TrainState:
  """The train state's shapes and dtypes (no FLOPs), replicated over `mesh`: a template for restoring."""
  mesh = parallel.create_mesh() if mesh is None else mesh
  model = unet.create_model(config)
  replicated = parallel.replicated(mesh)
  template = jax.eval_shape(lambda rng: create_train_state(config, model, rng), jax.random.key(int(config.seed)))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), template)


def restore_state(config, workdir: str, step: int | None = None, mesh=None) -> TrainState:
  """The train state saved in `workdir` at `step` (None or -1: the latest), replicated over `mesh`.

  For sampling, evaluation and analysis of a finished or running training: a missing checkpoint is named with
  the command that writes one, and a config that does not match the checkpoint is named by checkpointing.
  """
  directory = checkpointing.checkpoint_dir(workdir)
  train_hint = (f"Train first: python -m debias_jax.main --config=<the config> --workdir={workdir} (--mode train), "
                f"or import PyTorch weights with python -m debias_jax.convert.")
  if not epath.Path(directory).is_dir():
    raise checkpointing.CheckpointError(f"No checkpoints in {storage.absolute(workdir)} (no {directory} folder). "
                                        f"{train_hint}")
  checkpointer = checkpointing.Checkpointer(directory, async_save=False)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise checkpointing.CheckpointError(f"{checkpointer.directory} holds no checkpoint. {train_hint}")
    step = max(steps) if step is None or int(step) < 0 else int(step)
    if step not in steps:
      raise checkpointing.CheckpointError(f"No checkpoint at step {step} in {checkpointer.directory}; it holds "
                                          f"steps {sorted(steps)} (-1 picks the latest).")
    return checkpointer.restore(abstract_state(config, mesh), step)
  finally:
    checkpointer.close()
