"""Training: one pure jitted train step and the thin loop that drives it (the state itself: train_state.py).

The loop: data -> step -> metrics / sample grids / checkpoints, resuming from the workdir's latest checkpoint.
The per-step randomness is fold_in(run key, step), and the batch at step s is a pure function of (seed, s), so a
resumed run continues the same stream and ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import time

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import generation
from debias_jax import jsonl
from debias_jax import logs
from debias_jax import parallel
from debias_jax import pixels
from debias_jax import preemption
from debias_jax import storage
from debias_jax import summaries
from debias_jax import train_state
from debias_jax import workdir_lock
from debias_jax.data import pipeline
from debias_jax.diffusion import losses

NO_NONFINITE_STEP = np.iinfo(np.int32).max
CONFIG_CHANGES = "config_changes.jsonl"   # deliberate config changes on resume (allow_config_change), per step


def init_metric_sums(num_steps: int) -> dict:
  """Zeroed (sum, count) accumulators, one buffer each (they are donated to the train step)."""
  terms = {"loss": jnp.zeros(1), "mse": jnp.zeros(1), "vb": jnp.zeros(1), "t": jnp.zeros(1, jnp.int32)}
  sums = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), losses.metric_sums(terms, num_steps))
  sums["grad_norm"] = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  return {"sums": sums, "first_nonfinite_step": jnp.full((), NO_NONFINITE_STEP, jnp.int32)}


def make_train_step(config, model, schedule):
  """train_step(state, metric_sums, batch) -> (state, metric_sums); with train.steps_per_call = K > 1 the batch
  arrays carry a leading axis of K steps and the call runs them in a lax.scan."""
  loss_fn = builders.loss_fn(config, schedule)
  tx = builders.optimizer(config)
  rates = tuple(float(r) for r in config.ema_rates)
  conditional = int(config.data.num_classes) > 0

  def one_step(state: train_state.TrainState, sums: dict, batch: dict):
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


def state_norms(state: train_state.TrainState, rates) -> dict:
  """Global norm of the params and each EMA copy's distance from them, relative to that norm: how far the
  averaged weights trail the trained ones (a jitted pass over the params, run when the loop logs)."""
  norm = optax.tree.norm(state.params)
  out = {"param_norm": norm}
  for rate, ema in zip(rates, state.ema_params):
    out[f"ema{float(rate):g}_distance"] = optax.tree.norm(jax.tree.map(jnp.subtract, ema, state.params)) / norm
  return out


class NonFiniteLossError(FloatingPointError):
  pass


def _check_finite(sums, checkpointer) -> None:
  bad = int(jax.device_get(sums["first_nonfinite_step"]))
  if bad != NO_NONFINITE_STEP:
    checkpointer.wait()   # name only a committed checkpoint
    latest = checkpointer.latest_step()
    kept = (f"the last good checkpoint (step {latest}) is kept in {checkpointer.directory}" if latest is not None
            else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"The loss or its gradient became NaN/inf at step {bad} (the update from step {bad}); training stopped "
        f"and {kept}. Lower optim.learning_rate, set optim.grad_clip_norm, or set loss.snr_clamp "
        f"if the weights are extreme.")


def _write_samples(config, generator, state, step, workdir, writer, stop) -> None:
  logging.info("Sampling %d images for the grid of step %d.", int(config.sampling.num_samples), step)
  start = time.monotonic()
  images = generator.generate(state.ema_params[0], int(config.sampling.num_samples), generation.sample_rng(config),
                              stop=stop)
  logging.info("Sampled the grid of step %d in %.1f s.", step, time.monotonic() - start)
  grid = pixels.image_grid(pixels.to_uint8(images))
  if jax.process_index() == 0:
    pixels.save_png(epath.Path(workdir) / "samples" / f"step_{step:08d}.png", grid,
                    upscale=max(1, 128 // int(config.data.image_size)))
  writer.write_images(step, {"samples": grid[None]})


def _check_resumed_config(config, checkpointer, step: int, workdir: str) -> None:
  """Refuses to resume with a changed config unless allowed; an allowed change is recorded."""
  saved = checkpointing.saved_config(checkpointer, step, workdir)
  if saved is None:
    return
  where = f"the checkpoint at step {step} in {checkpointer.directory}"
  differences = config_checks.check_provenance(config, saved, where, training=True)
  if differences:
    logging.warning("Resuming with a changed config (allow_config_change): %s", "; ".join(differences))
    jsonl.append(epath.Path(workdir) / CONFIG_CHANGES, {"step": step, "differences": differences})


def _drop_metrics_after(workdir: str, step: int) -> None:
  """A resumed run logs again the steps after its checkpoint: drop their earlier records (no step twice)."""
  path = epath.Path(workdir) / "metrics.jsonl"
  records = jsonl.read(path)
  kept = [r for r in records if r.get("step", 0) <= step]
  if jax.process_index() == 0 and len(kept) < len(records):
    storage.write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def _start_or_resume(config, model, checkpointer, workdir: str, replicated):
  """The latest checkpoint's state (after checking the config against it), or a fresh one."""
  init = jax.jit(lambda rng: train_state.create_train_state(config, model, rng), out_shardings=replicated)
  step = checkpointer.latest_step()
  if step is None:
    return init(jax.random.key(int(config.seed)))
  _check_resumed_config(config, checkpointer, step, workdir)
  template = train_state.abstract_state(config, replicated.mesh)
  state = checkpointer.restore(template, step)
  logging.info("Resumed from the checkpoint at step %d in %s.", step, checkpointer.directory)
  return state


class _Loop:
  """The training loop's pieces that outlive one step: programs, writers and the stop request."""

  def __init__(self, config, workdir: str, checkpointer, stop, mesh, model):
    self.config, self.workdir, self.checkpointer, self.mesh = config, workdir, checkpointer, mesh
    self.single_process = jax.process_count() == 1
    # Multi-host runs stop together at agreed steps, never in the middle of a program every host must run.
    self.stop = stop if self.single_process else None
    self.request = stop
    t = config.train
    self.steps_per_call, self.num_steps = int(t.steps_per_call), int(t.num_steps)
    schedule = builders.schedule(config)
    replicated = parallel.replicated(mesh)
    self.train_step = jax.jit(
        make_train_step(config, model, schedule),
        in_shardings=(replicated, replicated, parallel.batch_sharding(mesh, int(self.steps_per_call > 1))),
        out_shardings=(replicated, replicated), donate_argnums=(0, 1))
    self.fresh_sums = jax.jit(lambda: init_metric_sums(schedule.num_steps), out_shardings=replicated)
    self.norms = jax.jit(lambda s: state_norms(s, config.ema_rates))
    self.learning_rate = builders.learning_rate(config)
    self.generator = generation.Generator(config, model, mesh, schedule)
    self.writer = summaries.create_writer(workdir, is_main=jax.process_index() == 0)

  def batch(self, batches) -> dict:
    local = [next(batches) for _ in range(self.steps_per_call)]
    if self.steps_per_call > 1:
      local = {k: np.stack([b[k] for b in local]) for k in ("image", "label")}
    else:
      local = {k: local[0][k] for k in ("image", "label")}
    return parallel.global_batch(local, self.mesh, int(self.steps_per_call > 1))

  def preempted(self, step: int, check_all_hosts: bool) -> bool:
    if self.checkpointer.reached_preemption(step):  # orbax makes every host agree on this one
      return True
    if self.single_process:
      return self.request.requested
    # SIGTERM reaches the hosts at different steps: they act on it together, at a step all of them check.
    return check_all_hosts and bool(multihost_utils.process_allgather(np.array(self.request.requested)).any())

  def log(self, step: int, state, sums, progress: logs.Progress) -> None:
    _check_finite(sums, self.checkpointer)
    progress.update(0, report=True)
    metrics = losses.finalize_metrics(jax.device_get(sums["sums"]))
    metrics["steps_per_second"] = progress.rate
    metrics["learning_rate"] = float(self.learning_rate(step - 1))  # the rate of this interval's last update
    metrics.update({k: float(v) for k, v in jax.device_get(self.norms(state)).items()})
    self.writer.write_scalars(step, metrics)
    self.writer.flush()
    jsonl.append(epath.Path(self.workdir) / "metrics.jsonl", {"step": step, **metrics})

  def run(self, state, start: int, lock) -> train_state.TrainState:
    """Steps from `start` to train.num_steps; raises preemption.Preempted after saving if stopped early."""
    t, config = self.config.train, self.config
    every = lambda n, step: n > 0 and step % n == 0
    batches = pipeline.create_train_iterator(config.data, global_batch_size=int(t.batch_size),
                                             seed=int(config.seed), start_step=start)
    sums, step = self.fresh_sums(), start
    progress = logs.Progress("Training", self.num_steps, "steps", done=start)
    try:
      first = self.batch(batches)
      logging.info("Compiling the train step.")
      step_fn = preemption.run_until_stopped(lambda: self.train_step.lower(state, sums, first).compile(),
                                             self.stop, "the first compilation of the train step")
      logging.info("Training from step %d to %d on %d devices.", step, self.num_steps, self.mesh.devices.size)
      batch = first
      while step < self.num_steps:
        state, sums = step_fn(state, sums, batch)
        step += self.steps_per_call
        progress.update(self.steps_per_call, report=False)
        self.checkpointer.check_for_errors()
        last = step >= self.num_steps
        preempted = self.preempted(step, every(int(t.log_every) or int(t.checkpoint_every) or self.steps_per_call,
                                               step))
        if every(int(t.log_every), step) or last or preempted:
          self.log(step, state, sums, progress)
          sums = self.fresh_sums()
          if lock is not None:
            lock.check()
        if every(int(t.checkpoint_every), step) or last or preempted:
          _check_finite(sums, self.checkpointer)
          self.checkpointer.save(state, config)
        if preempted and not last:
          raise preemption.Preempted(f"Stopped at step {step} for preemption.")
        if (every(int(t.sample_every), step) or (last and int(t.sample_every) > 0)) and not self.request.requested:
          _write_samples(config, self.generator, state, step, self.workdir, self.writer, self.stop)
        if not last:
          batch = self.batch(batches)
    except preemption.Preempted:
      self.checkpointer.save(state, config)   # a no-op when this step is saved already
      self.checkpointer.wait()
      logging.warning("Stopped at step %d for preemption; the checkpoint is saved: rerun the same command to "
                      "resume.", int(jax.device_get(state.step)))
      raise
    finally:
      self.writer.flush()
    return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
  """Trains config.train.num_steps steps in `workdir`, resuming from its latest checkpoint; returns the state.

  Everything that can be wrong with the inputs (config, data, workdir lock, the config of the checkpoint to
  resume) is checked before a model is built or anything is written. A SIGTERM stops the run within about a
  step -- even during the first compilation or a sample grid -- with its state saved, and raises
  preemption.Preempted; a failed save raises checkpointing.CheckpointSaveError at once.
  """
  mesh = parallel.create_mesh()
  config_checks.validate(config, "train", mesh.devices.size)
  pipeline.open_source(config.data)   # a missing dataset fails here, in seconds, leaving the workdir untouched
  with contextlib.ExitStack() as stack:
    stop = stack.enter_context(preemption.StopRequest())
    lock = _lock_workdir(workdir)
    if lock is not None:
      stack.callback(lock.release)
    directory = checkpointing.checkpoint_dir(workdir)
    if jax.process_index() == 0:
      checkpointing.remove_unfinished_saves(directory)
    checkpointer = checkpointing.Checkpointer(directory, keep=int(config.train.keep_checkpoints))
    try:
      model = builders.create_model(config)
      state = _start_or_resume(config, model, checkpointer, workdir, parallel.replicated(mesh))
      step = int(jax.device_get(state.step))
      if step % int(config.train.steps_per_call):
        raise ValueError(f"The checkpoint is at step {step}, not a multiple of train.steps_per_call="
                         f"{config.train.steps_per_call}; resume with the steps_per_call it was trained with.")
      checkpointing.save_config(config, workdir)
      _drop_metrics_after(workdir, step)
      loop = _Loop(config, workdir, checkpointer, stop, mesh, model)
      if step == 0:
        loop.writer.write_hparams(config.to_dict())
      state = loop.run(state, step, lock)
    except BaseException as error:
      _close_quietly(checkpointer, error)   # the save in flight finishes (or its failure is logged); error stands
      raise
    checkpointer.close()
  return state


def _lock_workdir(workdir: str) -> workdir_lock.WorkdirLock | None:
  """Process 0 locks the workdir for this run (one trainer per workdir); every process raises if it could not."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = workdir_lock.WorkdirLock(workdir).acquire()
    except workdir_lock.WorkdirLockError as e:
      error = e
  if jax.process_count() > 1 and bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None))):
    if lock is not None:
      lock.release()
    raise error or workdir_lock.WorkdirLockError(
        f"Process 0 could not lock {workdir} (another trainer holds it); its log names the holder.")
  if error is not None:
    raise error
  return lock


def _close_quietly(checkpointer, error: BaseException) -> None:
  try:
    checkpointer.close()
  except checkpointing.CheckpointError as e:
    if str(e) != str(error):
      logging.error("%s", e)
