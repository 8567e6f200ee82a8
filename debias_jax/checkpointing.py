"""Checkpoints of the train state with orbax; the only module that knows orbax.

A checkpoint is the train state as a plain nested dict (flax's state-dict form): step, params, ema_params,
opt_state and rng (key data). Saves are asynchronous; `wait()` before the process exits. Restoring checks
the saved shapes against the config's model first, so a changed config is named, not guessed.
"""

from __future__ import annotations

from absl import logging
from etils import epath
import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from debias_jax import storage


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored into the state the config describes."""


def _paths_and_shapes(tree) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ())) for path, leaf in flat}


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run under `directory`."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = str(storage.absolute(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state, force: bool = True) -> bool:
    """Starts saving `state` at its step (asynchronously); all processes must call it."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                              force=force)

  def restore(self, template, step: int | None = None):
    """The checkpoint at `step` (default: the latest) as a state like `template`, placed like its leaves.

    `template` may hold arrays or jax.ShapeDtypeStruct leaves with shardings.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    target = flax.serialization.to_state_dict(template)
    self._check_shapes(step, target)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), target)
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for damaged files
      raise CheckpointError(self._damaged_message(step, e)) from e
    return flax.serialization.from_state_dict(template, restored)

  def _check_shapes(self, step: int, target) -> None:
    try:
      saved = _paths_and_shapes(self._manager.item_metadata(step))
    except Exception as e:
      raise CheckpointError(self._damaged_message(step, e)) from e
    expected = _paths_and_shapes(target)
    problems = [f"{p}: saved {saved.get(p, 'missing')}, config wants {s}" for p, s in expected.items()
                if saved.get(p) != s]
    problems += [f"{p}: saved but not in the config's state" for p in saved if p not in expected]
    if problems:
      listing = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
      raise CheckpointError(
          f"The checkpoint at step {step} in {self.directory} does not match the config's model/optimiser "
          f"({len(problems)} differences):\n  {listing}\nRun with the config the checkpoint was written with "
          f"(saved as config.json in the workdir), or use a new --workdir.")

  def _damaged_message(self, step: int, error: Exception) -> str:
    earlier = [s for s in self.all_steps() if s < step]
    hint = (f"to resume from the previous checkpoint (step {max(earlier)}), move this one aside: "
            f"mv {self.directory}/{step} {self.directory}/{step}.damaged"
            if earlier else "there is no earlier checkpoint; start a new --workdir")
    return (f"The checkpoint at step {step} in {self.directory} could not be read ({type(error).__name__}: "
            f"{error}). Nothing was deleted; {hint}.")

  def reached_preemption(self, step: int) -> bool:
    """True on every process once a TPU/GPU preemption notice has been seen (multi-host safe)."""
    try:
      return bool(self._manager.reached_preemption(step))
    except Exception:  # pylint: disable=broad-except  (no preemption service outside jax.distributed)
      return False

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def checkpoint_dir(workdir: str) -> str:
  return str(epath.Path(workdir) / "checkpoints")


def save_converted(workdir: str, config, params) -> str:
  """Writes imported params (e.g. from a PyTorch checkpoint) as a step-0 train state: params = every EMA."""
  from debias_jax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  state = train.state_from_params(config, params)
  checkpointer = Checkpointer(checkpoint_dir(workdir), keep=int(config.train.keep_checkpoints))
  if checkpointer.latest_step() is not None:
    raise CheckpointError(f"{checkpointer.directory} already holds checkpoints (steps {checkpointer.all_steps()}); "
                          f"convert into an empty --workdir so nothing is overwritten.")
  checkpointer.save(state)
  checkpointer.close()
  train.save_config(config, workdir)
  logging.info("Wrote the converted params to %s (step 0).", checkpointer.directory)
  return checkpointer.directory


def host_array(x) -> np.ndarray:
  return np.asarray(jax.device_get(x))
