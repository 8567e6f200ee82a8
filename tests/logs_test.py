"""What a run prints: progress with rate and ETA, orbax's per-save INFO lines hidden (shown with -v 1), and the
command line taking JAX's own flags."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import logging as std_logging
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from unittest import mock

from absl import logging
from absl.testing import absltest

from debias_jax import logs
from tests import test_util

REPO = pathlib.Path(test_util.REPO)


def _record(pathname: str, level: int = std_logging.INFO) -> std_logging.LogRecord:
  return std_logging.LogRecord("absl", level, pathname, 1, "message", None, None)


class OrbaxFilterTest(absltest.TestCase):

  def test_orbax_info_is_dropped_unless_verbose(self):
    logs.quiet_orbax()
    logs.quiet_orbax()   # idempotent
    logger = logging.get_absl_logger()
    self.assertEqual(sum(isinstance(f, logs._OrbaxInfoFilter) for f in logger.filters), 1)
    orbax_info = _record("/x/site-packages/orbax/checkpoint/checkpoint_manager.py")
    self.assertFalse(logger.filter(orbax_info))
    self.assertTrue(logger.filter(_record("/x/site-packages/orbax/checkpoint/a.py", std_logging.WARNING)))
    self.assertTrue(logger.filter(_record("/x/debias_jax/train.py")))
    with mock.patch.object(logging, "level_debug", return_value=True):
      self.assertTrue(logger.filter(orbax_info))


class ProgressTest(absltest.TestCase):

  def test_rate_and_eta(self):
    clock = iter([0.0, 10.0, 11.0, 20.0])   # start, then one reading per update
    with mock.patch.object(logs.time, "monotonic", lambda: next(clock)), \
        mock.patch.object(logs.logging, "info") as info:
      progress = logs.Progress("Sampling", 100, "samples", every_seconds=5.0)
      progress.update(40)   # t=10: logged, 4 samples/s, 60 left -> 15 s
      progress.update(10)   # t=11: within 5 s of the last line, silent
      progress.update(50)   # t=20: done, always logged
    lines = [call.args[0] % call.args[1:] for call in info.call_args_list]
    self.assertEqual(lines, ["Sampling: 40/100 samples (40%), 4 samples/s, ETA 15 s.",
                             "Sampling: 100/100 samples (100%), 5 samples/s, done in 20 s."])


class CommandLineLogTest(absltest.TestCase):

  def test_a_run_prints_more_progress_than_orbax_lines_and_takes_jax_flags(self):
    import orbax.checkpoint  # pylint: disable=g-import-not-at-top
    # absl names the source file only: count orbax's files whose names none of ours share.
    orbax_files = ({p.name for p in pathlib.Path(orbax.checkpoint.__file__).parent.rglob("*.py")} -
                   {p.name for p in (REPO / "debias_jax").rglob("*.py")})
    workdir = tempfile.mkdtemp()
    result = subprocess.run(
        [sys.executable, "-m", "debias_jax.main", "--config", "configs/tiny.py", "--workdir", workdir,
         "--config.model.channel_mult=(1,)", "--config.model.attention_resolutions=(8,)",
         "--config.train.num_steps=8", "--config.train.log_every=2",
         "--config.train.checkpoint_every=2", "--jax_debug_nans=false"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    sources = re.findall(r"^[IWE]\d{4} [\d:.]+ +\d+ ([\w.]+\.py):\d+\]", result.stderr, flags=re.M)
    orbax_lines = sum(source in orbax_files for source in sources)
    progress_lines = len(re.findall(r"Training: \d/8 steps \(\d+%\), [\d.e+-]+ steps/s", result.stderr))
    self.assertEqual(progress_lines, 4)
    self.assertLess(orbax_lines, progress_lines)
    self.assertTrue(os.path.isdir(os.path.join(workdir, "checkpoints", "8")))


if __name__ == "__main__":
  absltest.main()
