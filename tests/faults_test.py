"""Faults injected into training runs: kills around saves, SIGTERM while compiling or sampling, a full disk, damaged
checkpoints, a changed config on resume, a second trainer, a missing dataset. Nothing saved may be lost, and every
failure must say what happened and what to do.

Subprocess runs use the command line (`python -m debias_jax.main`), each bounded in time; their programs come from
the test session's compilation cache after the first run.
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import contextlib
import errno
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
from etils import epath
import numpy as np

from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import jsonl
from debias_jax import preemption
from debias_jax import train
from debias_jax import train_state
from debias_jax import workdir_lock
from tests import test_util

REPO = pathlib.Path(test_util.REPO)
# A one-level UNet on 8x8 digits: a few milliseconds a step, so that saves come every few steps.
SMALL = {"model.channel_mult": (1,), "model.attention_resolutions": (8,), "train.batch_size": 8,
         "train.sample_every": 0}
KILL_RUN = {**SMALL, "train.num_steps": 24, "train.log_every": 2, "train.checkpoint_every": 2,
            "train.keep_checkpoints": 1}
EXIT_BOUND_S = 15.0     # SIGTERM to process exit, saving included


def config(**overrides):
  return test_util.config(SMALL, overrides)


def environment(**extra) -> dict:
  # The vector width pinned, so that runs from the command line compute exactly what this process computes.
  xla = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_prefer_vector_width=256".strip()
  return {**os.environ, "XLA_FLAGS": xla, "PYTHONPATH": str(REPO), **extra}


def start(workdir: str, overrides: dict, **env) -> subprocess.Popen:
  argv = [sys.executable, "-m", "debias_jax.main", "--config", str(REPO / "configs" / "tiny.py"), "--workdir",
          workdir] + test_util.flags(overrides)
  return subprocess.Popen(argv, cwd=REPO, env=environment(**env), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def restore(workdir: str, overrides: dict, step=None):
  c = config(**overrides)
  return checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir)).restore(train_state.abstract_state(c), step)


def lock_holder(workdir: str) -> int | None:
  try:
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
      return json.load(f)["pid"]
  except (OSError, ValueError, KeyError):
    return None


def step_dirs(workdir: str) -> list[str]:
  directory = os.path.join(workdir, "checkpoints")
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


class KillAroundSavesTest(absltest.TestCase):
  """SIGKILL at five moments around saves; after each, the run resumes; the end is bit-identical."""

  def test_resumes_bit_identically_after_kills_at_five_moments(self):
    tmp = tempfile.mkdtemp()
    reference = os.path.join(tmp, "reference")
    proc = start(reference, KILL_RUN)
    _, err = proc.communicate(timeout=300)
    self.assertEqual(proc.returncode, 0, err[-3000:])

    workdir = os.path.join(tmp, "killed")
    unfinished = lambda names: any(checkpointing.TMP_MARKER in n for n in names)
    # Each moment is a condition on this run: the step folders it has added, and whether it holds the workdir's
    # lock (it has passed its checks). The runs follow each other in one workdir, each resuming the last.
    moments = {
        "before the first save": lambda new, held: held and not new,
        "mid-write (an unfinished save folder exists)": lambda new, held: unfinished(new),
        "just after a commit": lambda new, held: bool(new) and not unfinished(new),
        "while the old step is deleted (two steps on disk)": lambda new, held: len(new) >= 2,
        "at a random moment": None,
    }
    rng = np.random.default_rng(0)
    happened = {}
    for name, condition in moments.items():
      before = set(step_dirs(workdir))
      proc = start(workdir, KILL_RUN)
      deadline, kill_at = time.monotonic() + 120, None
      while proc.poll() is None and time.monotonic() < deadline:
        new = sorted(set(step_dirs(workdir)) - before)
        held = lock_holder(workdir) == proc.pid
        if condition is None:
          kill_at = kill_at or (time.monotonic() + rng.uniform(0.0, 2.0) if held else None)
          fire = kill_at is not None and time.monotonic() >= kill_at
        else:
          fire = condition(new, held)
        if fire:
          proc.send_signal(signal.SIGKILL)
          happened[name] = new
          break
        time.sleep(0.002)
      proc.wait(timeout=60)
    # A run may finish before its moment comes (a save is over in milliseconds); most moments must be reached.
    self.assertGreaterEqual(len(happened), 3, f"kill moments reached: {happened}")
    proc = start(workdir, KILL_RUN)
    _, err = proc.communicate(timeout=300)
    self.assertEqual(proc.returncode, 0, err[-3000:])
    for a, b in zip(test_util.leaves(restore(workdir, KILL_RUN)), test_util.leaves(restore(reference, KILL_RUN)),
                    strict=True):
      np.testing.assert_array_equal(a, b)
    steps = [r["step"] for r in jsonl.read(os.path.join(workdir, "metrics.jsonl"))]
    self.assertEqual(steps, sorted(set(steps)), "a step logged twice")
    self.assertEqual(steps[-1], 24)
    self.assertFalse([n for n in step_dirs(workdir) if checkpointing.TMP_MARKER in n])


class SigtermTest(absltest.TestCase):

  def _stop_when(self, proc, line_pattern: str) -> float:
    """Sends SIGTERM once the run logs a line matching the pattern; returns the seconds until it exited."""
    log = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:
      log.append(line)
      if re.search(line_pattern, line):
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, rest = proc.communicate(timeout=60)
        self.log = "".join(log) + rest
        return time.monotonic() - sent
      if time.monotonic() > deadline:
        break
    proc.kill()
    self.fail(f"never logged {line_pattern!r}:\n{''.join(log)[-3000:]}")

  def test_during_the_first_compilation(self):
    workdir = tempfile.mkdtemp()
    # A fresh compilation cache: the train step really compiles.
    proc = start(workdir, {**SMALL, "train.num_steps": 10}, JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp())
    seconds = self._stop_when(proc, "Compiling the train step")
    self.assertEqual(proc.returncode, preemption.PREEMPTED_EXIT_CODE, self.log[-3000:])
    self.assertLess(seconds, EXIT_BOUND_S)
    self.assertEqual(step_dirs(workdir), ["0"])
    self.assertEqual(int(restore(workdir, SMALL).step), 0)

  def test_during_a_sample_grid(self):
    workdir = tempfile.mkdtemp()
    slow_grid = {**SMALL, "train.num_steps": 10, "train.sample_every": 4, "train.checkpoint_every": 4,
                 "sampling.sampler": "ddpm", "sampling.steps": "1000", "sampling.num_samples": 64}
    proc = start(workdir, slow_grid)
    seconds = self._stop_when(proc, "Sampling 64 images for the grid of step 4")
    self.assertEqual(proc.returncode, preemption.PREEMPTED_EXIT_CODE, self.log[-3000:])
    self.assertLess(seconds, EXIT_BOUND_S)
    self.assertIn("4", step_dirs(workdir))
    self.assertFalse(os.path.exists(os.path.join(workdir, "samples", "step_00000004.png")))


class InProcessFaultsTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.pristine = os.path.join(cls.tmp, "pristine")
    cls.overrides = {"train.num_steps": 4, "train.checkpoint_every": 2, "train.log_every": 2}
    train.train_and_evaluate(config(**cls.overrides), cls.pristine)

  def copy(self, name: str) -> str:
    workdir = os.path.join(self.tmp, name)
    shutil.copytree(self.pristine, workdir)
    return workdir

  def test_a_changed_config_is_refused_with_every_difference_then_allowed_and_recorded(self):
    workdir = self.copy("changed")
    changed = {**self.overrides, "train.num_steps": 6, "loss.target": "v", "loss.weighting": "constant",
               "diffusion.schedule": "cosine", "model.dropout": 0.1}
    before = {p: p.read_bytes() for p in pathlib.Path(workdir).rglob("*") if p.is_file()}
    with mock.patch.object(train._Loop, "__init__", side_effect=AssertionError("compiled")):
      with self.assertRaises(config_checks.ConfigError) as caught:
        train.train_and_evaluate(config(**changed), workdir)
    message = str(caught.exception)
    for line in ("config.loss.target: trained with 'eps', given 'v'",
                 "config.loss.weighting: trained with 'debias', given 'constant'",
                 "config.diffusion.schedule: trained with 'linear', given 'cosine'",
                 "config.model.dropout: trained with 0.0, given 0.1", "allow_config_change=True"):
      self.assertIn(line, message)
    after = {p: p.read_bytes() for p in pathlib.Path(workdir).rglob("*") if p.is_file()}
    self.assertEqual(after, before)   # nothing written, config.json untouched

    state = train.train_and_evaluate(config(**changed, allow_config_change=True), workdir)
    self.assertEqual(int(state.step), 6)
    (record,) = jsonl.read(os.path.join(workdir, train.CONFIG_CHANGES))
    self.assertEqual(record["step"], 4)
    self.assertLen(record["differences"], 4)
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    self.assertEqual(checkpointer.saved_config(6)["loss"]["target"], "v")
    self.assertEqual(checkpointer.saved_config(4)["loss"]["target"], "eps")

  def test_sampling_with_another_target_is_refused(self):
    with self.assertRaisesRegex(config_checks.ConfigError, "config.loss.target: trained with 'eps', given 'x0'"):
      checkpointing.restore_params(config(**{"loss.target": "x0"}), self.pristine)

  @parameterized.parameters("_CHECKPOINT_METADATA", "default/_METADATA", "default/_sharding",
                            "default/manifest.ocdbt", "default/array_metadatas/process_0",
                            "default/ocdbt.process_0/manifest.ocdbt", "config/metadata")
  def test_a_missing_file_is_reported_as_damage_with_the_hint(self, name):
    workdir = self.copy("damaged_" + name.replace("/", "_"))
    path = os.path.join(workdir, "checkpoints", "4", name)
    if not os.path.exists(path):
      self.skipTest(f"this orbax version writes no {name}")
    os.remove(path)
    with self.assertRaisesRegex(checkpointing.CheckpointError,
                                r"step 4 .* is damaged(.|\n)*mv \S+/checkpoints/4 \S+/checkpoints/4.damaged"):
      checkpointing.restore_state(config(**self.overrides), workdir)
    self.assertTrue(os.path.isdir(os.path.join(workdir, "checkpoints", "4")))

  def test_unfinished_saves_are_removed_and_metrics_not_repeated(self):
    workdir = self.copy("leftovers")
    orphan = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(orphan, "default"))
    jsonl.append(os.path.join(workdir, "metrics.jsonl"), {"step": 6, "loss": 1.0})   # logged, then killed
    train.train_and_evaluate(config(**{**self.overrides, "train.num_steps": 6}), workdir)
    self.assertFalse(os.path.exists(orphan))
    steps = [r["step"] for r in jsonl.read(os.path.join(workdir, "metrics.jsonl"))]
    self.assertEqual(steps, [2, 4, 6])

  def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(self):
    workdir = self.copy("locked")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from debias_jax import workdir_lock\n"
        f"lock = workdir_lock.WorkdirLock({workdir!r}).acquire(); print('held', flush=True); time.sleep(120)")],
        cwd=REPO, env=environment(), stdout=subprocess.PIPE, text=True)
    try:
      self.assertEqual(holder.stdout.readline().strip(), "held")
      with self.assertRaisesRegex(workdir_lock.WorkdirLockedError, rf"pid {holder.pid}"):
        train.train_and_evaluate(config(**{**self.overrides, "train.num_steps": 6}), workdir)
    finally:
      holder.kill()
      holder.wait()
    # The holder died without releasing: its lock is stale and the next trainer takes it over.
    state = train.train_and_evaluate(config(**{**self.overrides, "train.num_steps": 6}), workdir)
    self.assertEqual(int(state.step), 6)

  def test_a_full_disk_stops_at_the_failing_save_and_keeps_the_previous_checkpoint(self):
    workdir = self.copy("full")
    disk = os.path.join(self.tmp, "disk")
    os.makedirs(disk)
    size = sum(p.stat().st_size for p in pathlib.Path(workdir, "checkpoints", "4").rglob("*") if p.is_file())
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.6) + 65536}", "tmpfs", disk],
                             capture_output=True).returncode == 0
    try:
      if mounted:   # a real full disk: the workdir (one checkpoint) on a tmpfs with room for less than two
        workdir = shutil.copytree(workdir, os.path.join(disk, "run"),
                                  ignore=lambda folder, names: ["2"] if folder.endswith("checkpoints") else [])
        patch = contextlib.nullcontext()
      else:         # no tmpfs allowed: a file system whose writes of checkpoint metadata raise ENOSPC
        original = epath.Path.write_text

        def full(path, *args, **kwargs):
          if "checkpoints/6" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
          return original(path, *args, **kwargs)
        patch = mock.patch.object(type(epath.Path(workdir)), "write_text", full)
      with patch, self.assertRaisesRegex(checkpointing.CheckpointSaveError,
                                         r"step 6 .* failed \(.*(No space left|space)(.|\n)*step 4 is intact"):
        train.train_and_evaluate(config(**{**self.overrides, "train.num_steps": 8}), workdir)
      restored = restore(workdir, self.overrides, 4)
      self.assertEqual(int(restored.step), 4)
    finally:
      if mounted:
        subprocess.run(["umount", "-l", disk], check=False)


class MissingDatasetTest(absltest.TestCase):

  def test_fails_within_ten_seconds_and_leaves_the_workdir_empty(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    began = time.monotonic()
    proc = start(workdir, {"data.source": "folder", "data.data_dir": "/nonexistent/images"})
    _, err = proc.communicate(timeout=120)
    seconds = time.monotonic() - began
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("data.data_dir='/nonexistent/images' is not a directory", err)
    self.assertLess(seconds, 10.0)
    self.assertFalse(os.path.exists(workdir))


if __name__ == "__main__":
  absltest.main()
