"""What the modes print: progress with rate and ETA, and orbax's per-save chatter kept out of the default log.

Orbax logs about twenty INFO lines per checkpoint save; a 1000-step run printed more of them than progress lines.
`quiet_orbax()` drops orbax's INFO records unless absl's verbosity asks for debug output (`-v 1`); its warnings
and errors always show.
"""

from __future__ import annotations

import logging as std_logging
import time

from absl import logging


class _OrbaxInfoFilter(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    from_orbax = "/orbax/" in record.pathname.replace("\\", "/")
    return not (from_orbax and record.levelno <= std_logging.INFO and not logging.level_debug())


_FILTER = _OrbaxInfoFilter()


def quiet_orbax() -> None:
  """Idempotent; applies to every absl log call in the process."""
  logger = logging.get_absl_logger()
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)


def _duration(seconds: float) -> str:
  if seconds == float("inf"):
    return "unknown"
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds} s"
  if seconds < 3600:
    return f"{seconds // 60} min {seconds % 60:02d} s"
  return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
  """Logs 'label: done/total unit (x%), rate, ETA', by default at most every `every_seconds` and at the end.

  `done` is where a resumed job starts: the rate counts only what this process did.
  """

  def __init__(self, label: str, total: int, unit: str = "samples", every_seconds: float = 10.0, done: int = 0):
    self.label, self.total, self.unit, self.every_seconds = label, int(total), unit, every_seconds
    self.done = self._first = int(done)
    self._start = self._last = time.monotonic()

  @property
  def rate(self) -> float:
    return (self.done - self._first) / max(time.monotonic() - self._start, 1e-9)

  def update(self, count: int = 1, report: bool | None = None) -> None:
    """Counts `count` more; report=True logs now, False never, None when due."""
    self.done += int(count)
    now = time.monotonic()
    due = self.done >= self.total or now - self._last >= self.every_seconds
    if not (report if report is not None else due):
      return
    self._last = now
    elapsed = max(now - self._start, 1e-9)
    rate = (self.done - self._first) / elapsed
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    percent = 100.0 * self.done / max(self.total, 1)
    tail = f"done in {_duration(elapsed)}" if self.done >= self.total else f"ETA {_duration(eta)}"
    logging.info("%s: %d/%d %s (%.0f%%), %.3g %s/s, %s.", self.label, self.done, self.total, self.unit, percent,
                 rate, self.unit, tail)
