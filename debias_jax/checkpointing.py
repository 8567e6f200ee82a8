"""Checkpoints of the train state with orbax; the only module that knows orbax.

A checkpoint is the train state as a plain nested dict (flax's state-dict form: step, params, ema_params,
opt_state and rng key data) in orbax's item "default", and, beside it, the config it was trained with (item
"config", JSON): its provenance. Checkpoints written before the config item existed restore as they did.

Saves are asynchronous. Only committed checkpoints count (`all_steps`); a save that fails raises
CheckpointSaveError, once, naming the path and the cause. A checkpoint that cannot be read -- any file missing or
corrupt -- raises CheckpointError saying so, with the command that sets it aside; nothing is ever deleted here
except orbax's own unfinished temporary folders.

`restore_state` is how sampling, evaluation and analysis read a workdir's train state (checked against the config
it was trained with), `restore_params` the one params tree they sample with; `save_converted` writes imported
params as a step-0 checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from absl import logging
from etils import epath
import flax.serialization
import jax
import ml_collections
import orbax.checkpoint as ocp

from debias_jax import builders
from debias_jax import config_checks
from debias_jax import parallel
from debias_jax import storage
from debias_jax import train_state

STATE_ITEM, CONFIG_ITEM = "default", "config"
TMP_MARKER = ".orbax-checkpoint-tmp"
# The files orbax writes for every checkpoint of the state (one ocdbt manifest and array metadata per process on
# top): one missing means a partial copy or a damaged disk, even where orbax could still read the arrays.
STATE_FILES = ("_CHECKPOINT_METADATA", f"{STATE_ITEM}/_METADATA", f"{STATE_ITEM}/_sharding",
               f"{STATE_ITEM}/manifest.ocdbt")


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored into the state the config describes."""


class CheckpointSaveError(CheckpointError):
  """Writing a checkpoint failed (disk full, permissions, ...); the earlier checkpoints are intact."""


def _paths_and_shapes(tree) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ())) for path, leaf in flat}


def root_cause(error: BaseException) -> BaseException:
  """The innermost exception of a chain (orbax wraps the OSError of a full disk several times)."""
  seen = set()
  while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return error


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run under `directory` (local or gs://)."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = str(storage.absolute(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(), CONFIG_ITEM: ocp.JsonCheckpointHandler()})
    self._saving = None   # the step of the last save started

  def all_steps(self) -> list[int]:
    """Steps whose checkpoint is committed (an asynchronous save still running is not one of them)."""
    steps = list(self._manager.all_steps())
    if self._saving is not None and self._manager.is_saving_in_progress():
      steps = [s for s in steps if s != self._saving]
    return sorted(steps)

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, state, config=None) -> bool:
    """Starts saving `state` (with `config` as its provenance) at its step; all processes must call it."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return False
    self.wait()   # the previous save's failure, if any, is reported as its own (orbax would wait for it anyway)
    items = {STATE_ITEM: ocp.args.StandardSave(flax.serialization.to_state_dict(state))}
    if config is not None:
      items[CONFIG_ITEM] = ocp.args.JsonSave(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    self._saving = step
    try:
      return self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except  (disk full, permissions, ...)
      raise self._save_error(step, e) from e

  def check_for_errors(self) -> None:
    """Raises CheckpointSaveError if an asynchronous save has failed (cheap: call it every step)."""
    try:
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._saving, e) from e

  def wait(self) -> None:
    """Blocks until the save in flight is committed; raises CheckpointSaveError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._saving, e) from e

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()

  def _save_error(self, step, error: Exception) -> CheckpointSaveError:
    cause = root_cause(error)
    intact = [s for s in self._manager.all_steps() if s != step]
    kept = (f"the checkpoint at step {max(intact)} is intact" if intact else "no earlier checkpoint exists")
    return CheckpointSaveError(f"Saving the checkpoint at step {step} to {self.directory} failed "
                               f"({type(cause).__name__}: {cause}); training stopped and {kept}.")

  def restore(self, template, step: int | None = None):
    """The checkpoint at `step` (default: the latest) as a state like `template`, placed like its leaves.

    `template` may hold arrays or jax.ShapeDtypeStruct leaves with shardings.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    missing = self.missing_files(step)
    if missing:
      raise CheckpointError(self._damaged_message(step, FileNotFoundError(f"missing {', '.join(missing)}")))
    target = flax.serialization.to_state_dict(template)
    self._check_shapes(step, target)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), target)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          **{STATE_ITEM: ocp.args.StandardRestore(abstract)}))[STATE_ITEM]
    except Exception as e:  # orbax raises many types for damaged files
      raise CheckpointError(self._damaged_message(step, e)) from e
    return flax.serialization.from_state_dict(template, restored)

  def missing_files(self, step: int) -> list[str]:
    """Which of the files every checkpoint of the state has are missing from the one at `step`."""
    root = epath.Path(self.directory) / str(step)
    missing = [name for name in STATE_FILES if not (root / name).exists()]
    state = root / STATE_ITEM
    for process in sorted(p.name for p in state.glob("ocdbt.process_*")) if state.exists() else []:
      index = process.rsplit("_", 1)[-1]
      for name in (f"{process}/manifest.ocdbt", f"array_metadatas/process_{index}"):
        if not (state / name).exists():
          missing.append(f"{STATE_ITEM}/{name}")
    return missing

  def saved_config(self, step: int) -> dict | None:
    """The config saved with the checkpoint at `step`, or None for a checkpoint written without one."""
    if not (epath.Path(self.directory) / str(step) / CONFIG_ITEM).exists():
      return None
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))[
          CONFIG_ITEM]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(self._damaged_message(step, e)) from e

  def _check_shapes(self, step: int, target) -> None:
    try:
      saved = _paths_and_shapes(self._manager.item_metadata(step)[STATE_ITEM])
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(self._damaged_message(step, e)) from e
    if not saved:   # the metadata of the arrays is gone: not a config question
      raise CheckpointError(self._damaged_message(step, FileNotFoundError("its array metadata is missing")))
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

  def _damaged_message(self, step: int, error: BaseException) -> str:
    earlier = [s for s in self.all_steps() if s < step]
    hint = (f"to resume from the previous checkpoint (step {max(earlier)}), move this one aside: "
            f"mv {self.directory}/{step} {self.directory}/{step}.damaged"
            if earlier else "there is no earlier checkpoint; move it aside or start a new --workdir")
    return (f"The checkpoint at step {step} in {self.directory} is damaged and could not be read "
            f"({type(error).__name__}: {error}). Nothing was deleted; {hint}.")

  def reached_preemption(self, step: int) -> bool:
    """True on every process once a TPU/GPU preemption notice has been seen (multi-host safe)."""
    try:
      return bool(self._manager.reached_preemption(step))
    except Exception:  # pylint: disable=broad-except  (no preemption service outside jax.distributed)
      return False


def remove_unfinished_saves(directory: str) -> list[str]:
  """Deletes the temporary folders of saves that never committed (a killed run's); returns their names."""
  root = epath.Path(directory)
  if not root.exists():
    return []
  removed = []
  for path in root.iterdir():
    if TMP_MARKER in path.name:
      path.rmtree()
      removed.append(path.name)
  if removed:
    logging.warning("Removed unfinished checkpoint folders of an earlier run: %s", ", ".join(sorted(removed)))
  return sorted(removed)


def checkpoint_dir(workdir: str) -> str:
  return str(epath.Path(workdir) / "checkpoints")


# ----------------------------------------------------------------------------------------------------------------
# Train states in a workdir: their provenance (the config), restoring one, writing imported params as one.


def saved_steps(workdir: str) -> list[int]:
  """The committed checkpoint steps of a workdir, in order ([] if it has none)."""
  directory = checkpoint_dir(workdir)
  if not epath.Path(directory).is_dir():
    return []
  checkpointer = Checkpointer(directory, async_save=False)
  try:
    return sorted(checkpointer.all_steps())
  finally:
    checkpointer.close()


def save_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    storage.write_atomic(epath.Path(workdir) / "config.json", config.to_json_best_effort(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads((epath.Path(workdir) / "config.json").read_text()))


def saved_config(checkpointer, step: int, workdir: str) -> dict | None:
  """The config the checkpoint at `step` was trained with: saved with it, or (older checkpoints) config.json."""
  saved = checkpointer.saved_config(step)
  if saved is None and (epath.Path(workdir) / "config.json").exists():
    saved = load_config(workdir).to_dict()
  return saved


def restore_state(config, workdir: str, step: int | None = None, mesh=None) -> train_state.TrainState:
  """The train state saved in `workdir` at `step` (None or -1: the latest), replicated over `mesh`.

  For sampling, evaluation and analysis of a finished or running training: a missing checkpoint is named with
  the command that writes one, and a config that does not describe what was trained (model, diffusion, loss,
  data) is refused, listing every difference, before anything is computed.
  """
  directory = checkpoint_dir(workdir)
  train_hint = (f"Train first: python -m debias_jax.main --config=<the config> --workdir={workdir} (--mode train), "
                f"or import PyTorch weights with python -m debias_jax.convert.")
  if not epath.Path(directory).is_dir():
    raise CheckpointError(f"No checkpoints in {storage.absolute(workdir)} (no {directory} folder). {train_hint}")
  checkpointer = Checkpointer(directory, async_save=False)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise CheckpointError(f"{checkpointer.directory} holds no checkpoint. {train_hint}")
    step = max(steps) if step is None or int(step) < 0 else int(step)
    if step not in steps:
      raise CheckpointError(f"No checkpoint at step {step} in {checkpointer.directory}; it holds "
                            f"steps {sorted(steps)} (-1 picks the latest).")
    saved = saved_config(checkpointer, step, workdir)
    if saved is None:
      logging.warning("No config saved with the checkpoint at step %d in %s: cannot check that the config matches "
                      "the trained model.", step, checkpointer.directory)
    else:
      differences = config_checks.check_provenance(config, saved, f"the checkpoint at step {step} in "
                                                   f"{checkpointer.directory}", training=False)
      if differences:
        logging.warning("Using the checkpoint with a changed config (allow_config_change): %s",
                        "; ".join(differences))
    return checkpointer.restore(train_state.abstract_state(config, mesh), step)
  finally:
    checkpointer.close()


@dataclasses.dataclass
class Restored:
  """A checkpoint's params ready for sampling: the model, one params tree (replicated over mesh) and its name."""
  model: Any
  params: Any
  step: int
  params_name: str         # "ema0.999" (first EMA rate) or "params" (the raw, non-averaged weights)
  mesh: Any


def params_name(config, use_ema: bool) -> str:
  return f"ema{float(config.ema_rates[0]):g}" if use_ema else "params"


def restore_params(config, workdir: str, step: int = -1, use_ema: bool = True, mesh=None) -> Restored:
  """The params to sample with from the checkpoint at `step` (-1: the latest): the first EMA copy or the raw ones."""
  mesh = parallel.create_mesh() if mesh is None else mesh
  state = restore_state(config, workdir, None if int(step) < 0 else int(step), mesh)
  return params_of(config, state, use_ema, mesh)


def params_of(config, state: train_state.TrainState, use_ema: bool, mesh, model=None) -> Restored:
  """A restored train state's first EMA copy or raw params, ready for sampling (one restore serves both)."""
  params = state.ema_params[0] if use_ema else state.params
  return Restored(builders.create_model(config) if model is None else model, params, int(jax.device_get(state.step)),
                  params_name(config, use_ema), mesh)


def save_converted(workdir: str, config, params) -> str:
  """Writes imported params (e.g. from a PyTorch checkpoint) as a step-0 train state: params = every EMA."""
  state = train_state.state_from_params(config, params)
  checkpointer = Checkpointer(checkpoint_dir(workdir), keep=int(config.train.keep_checkpoints))
  if checkpointer.latest_step() is not None:
    raise CheckpointError(f"{checkpointer.directory} already holds checkpoints (steps "
                          f"{checkpointer.all_steps()}); convert into an empty --workdir so nothing "
                          f"is overwritten.")
  checkpointer.save(state, config)
  checkpointer.close()
  save_config(config, workdir)
  logging.info("Wrote the converted params to %s (step 0).", checkpointer.directory)
  return checkpointer.directory
