"""Preemption: SIGTERM turns into a prompt, orderly stop with a checkpoint and a distinct exit status.

Cloud schedulers send SIGTERM and kill the process after a grace period (30 s on Spot VMs). Python runs a signal
handler only between bytecodes, so a handler that merely sets a flag waits for whatever XLA call is running: the
first compile of a large model, or a sample grid, takes minutes. `run_until_stopped` runs such a call on a helper
thread while the main thread watches the stop request, so the loop can save and leave as soon as SIGTERM arrives.

Exit status of `python -m debias_jax.main` (and of the comparison driver): 0 finished, PREEMPTED_EXIT_CODE (75,
EX_TEMPFAIL: "try again") stopped early with its progress saved -- rerun the same command to resume --, 1 error.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from absl import logging

PREEMPTED_EXIT_CODE = 75
_POLL_SECONDS = 0.05


class Preempted(Exception):
  """The run stopped for preemption after saving what it had; rerunning the same command resumes it."""


class StopRequest:
  """Set by SIGTERM while active (a context manager, main thread only); the previous handler comes back on exit."""

  def __init__(self):
    self.requested = False
    self.at = None
    self._previous = None
    self._installed = False

  def _handle(self, signum, frame):
    del signum, frame
    if not self.requested:
      logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested, self.at = True, self.at or time.monotonic()

  def __enter__(self) -> StopRequest:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def __exit__(self, *exc) -> bool:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False
    return False


def run_until_stopped(fn: Callable[[], Any], stop: StopRequest | None, what: str) -> Any:
  """fn() on a helper thread; raises Preempted as soon as `stop` is requested, leaving the thread to finish alone.

  Without a stop request (None, e.g. on multi-host runs, where every host must take part in every program) it is
  a plain call.
  """
  if stop is None:
    return fn()
  outcome = {}

  def target():
    try:
      outcome["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except  (re-raised on the main thread)
      outcome["error"] = e

  thread = threading.Thread(target=target, name=f"debias_jax:{what}", daemon=True)
  thread.start()
  while thread.is_alive():
    if stop.requested:
      raise Preempted(f"Stopped during {what} for preemption.")
    thread.join(_POLL_SECONDS)
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


def exit_preempted(error: Preempted) -> None:
  """Exits with PREEMPTED_EXIT_CODE at once: a compile or sampler thread left running must not delay the exit."""
  logging.warning("Exiting with status %d (%s); rerun the same command to resume.", PREEMPTED_EXIT_CODE,
                  "preempted" if str(error).startswith("Stopped at step") else error)
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(PREEMPTED_EXIT_CODE)  # pylint: disable=protected-access
