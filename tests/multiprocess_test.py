"""Multi-host on one machine: JAX processes on localhost (2 fake CPU devices each) joined by jax.distributed.

Every run goes through the real command line (`python -m debias_jax.main ... --distributed --coordinator ...`,
wrapped only to save each process's final parameters). Checked: two processes end with identical parameters that
follow the trajectory of one process on 4 devices; process 0 alone writes metrics; both processes write one orbax
checkpoint that a single process restores; a multi-host run resumes; a SIGTERM that reaches one host stops every
host at the same step; processes that disagree (config, device count) all fail at once, naming the difference.
Each subprocess has a timeout, so a hang fails instead of blocking.
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import jax
import numpy as np

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import preemption
from debias_jax import multihost
from debias_jax import train_state
from tests import test_util

TIMEOUT_S = 240
# A one-level UNet without attention: the multi-host machinery is what is tested, and it compiles in seconds.
MODEL = {"model.channel_mult": (1,), "model.attention_resolutions": ()}
RUN = {**MODEL, "train.log_every": 1, "train.checkpoint_every": 2, "train.sample_every": 0,
       "sampling.num_samples": 4}
STOP_EVERY = 5  # the resumed run logs (and so checks for SIGTERM on any host) every 5 steps

# The command line itself, plus a wrapper around train_and_evaluate that saves this process's copy of the result.
WORKER = """
import os
import sys
import time
import numpy as np
from absl import app
from debias_jax import main


def train_and_save(config, workdir):
  import jax
  from debias_jax import train
  state = train.train_and_evaluate(config, workdir)
  local = lambda tree: [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(tree)]
  np.savez(sys.argv[1], *local(state.params), step=local(state.step)[0], process_index=jax.process_index(),
           process_count=jax.process_count(), devices=len(jax.devices()))
  return state


# Imported lazily, so that processes stopped by the agreement check never import TensorFlow.
main.MODES["train"] = ("__main__", "train_and_save")
go = sys.argv[2]  # started early, the process imports everything, then waits for this file to exist
if go:
  from debias_jax import train  # pylint: disable=unused-import
while go and not os.path.exists(go):
  time.sleep(0.05)
app.run(main.main, argv=["debias_jax.main"] + sys.argv[3:])
"""


class Run:
  """One JAX process of a test run: its command line, environment and log file."""

  def __init__(self, tmp: str, name: str, workdir: str, overrides: dict, devices: int = 2,
               process_id: int | None = None, port: int | None = None, num_processes: int = 2, go: str = ""):
    self.name, self.out = name, os.path.join(tmp, name + ".npz")
    self.log_path = os.path.join(tmp, name + ".log")
    argv = ["--mode", "train", "--config", os.path.join(test_util.REPO, "configs", "tiny.py"), "--workdir", workdir]
    if process_id is not None:
      argv += ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num_processes", str(num_processes),
               "--process_id", str(process_id)]
    env = test_util.devices_env(devices)
    with open(self.log_path, "w") as log:
      self.proc = subprocess.Popen([sys.executable, "-c", WORKER, self.out, go] + argv + test_util.flags(overrides),
                                   cwd=test_util.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    self.deadline = time.monotonic() + TIMEOUT_S

  def wait(self) -> int:
    try:
      return self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      return -9

  @property
  def log(self) -> str:
    with open(self.log_path) as f:
      return f.read()

  def result(self):
    return np.load(self.out)


def pair(tmp: str, name: str, workdir: str, overrides: dict, devices=(2, 2), overrides_1: dict | None = None,
         go: str = ""):
  port = test_util.free_port()
  return [Run(tmp, f"{name}{p}", workdir, {**overrides, **((overrides_1 or {}) if p else {})}, devices[p],
              process_id=p, port=port, go=go) for p in range(2)]


def params_of(npz) -> list[np.ndarray]:
  return [npz[f"arr_{i}"] for i in range(len([f for f in npz.files if f.startswith("arr_")]))]


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


class MultiProcessTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tmp = tempfile.mkdtemp()
    cls.workdir = os.path.join(tmp, "pair")
    cls.single_workdir = os.path.join(tmp, "single")
    # Started together: two processes train steps 1-4 (a sample grid at 4); one process on 4 devices trains
    # steps 1-4; two processes that disagree.
    cls.pair = pair(tmp, "pair", cls.workdir, {**RUN, "train.num_steps": 4, "train.sample_every": 4})
    cls.single = Run(tmp, "single", cls.single_workdir, {**RUN, "train.num_steps": 4}, devices=4)
    cls.mismatch = pair(tmp, "mismatch", os.path.join(tmp, "mismatch"), {**RUN, "train.num_steps": 2},
                        devices=(2, 1), overrides_1={"train.batch_size": 32})
    # Then two processes (started now, to import while the others compile) resume that run and train on until
    # SIGTERM reaches one of them; their programs are in the compilation cache by then.
    go = os.path.join(tmp, "go")
    cls.resumed = pair(tmp, "resumed", cls.workdir,
                       {**MODEL, "train.num_steps": 10**6, "train.log_every": STOP_EVERY, "train.checkpoint_every": 0,
                        "train.sample_every": 0}, go=go)
    cls.pair_codes = [run.wait() for run in cls.pair]
    open(go, "w").close()
    cls.sigterm_after_step = cls._send_sigterm_to_one_process()
    cls.resumed_codes = [run.wait() for run in cls.resumed]
    cls.single_code = cls.single.wait()
    cls.mismatch_codes = [run.wait() for run in cls.mismatch]

  @classmethod
  def _send_sigterm_to_one_process(cls) -> int | None:
    """Once process 0 has logged a step past 4, SIGTERM goes to process 1 only (as when one VM of a pod is
    preempted first); returns that step."""
    metrics = os.path.join(cls.workdir, "metrics.jsonl")
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and all(run.proc.poll() is None for run in cls.resumed):
      steps = [record["step"] for record in read_metrics(cls.workdir)] if os.path.exists(metrics) else []
      if steps and steps[-1] > 4:
        cls.resumed[1].proc.send_signal(signal.SIGTERM)
        return steps[-1]
      time.sleep(0.1)
    return None

  def check_success(self, runs, codes):
    for run, code in zip(runs, codes):
      self.assertEqual(code, 0, f"{run.name} exited with {code} (-9: killed after {TIMEOUT_S} s):\n"
                                f"{run.log[-4000:]}")

  def test_processes_end_with_identical_parameters(self):
    self.check_success(self.pair, self.pair_codes)
    zero, one = (run.result() for run in self.pair)
    self.assertEqual((int(zero["process_count"]), int(zero["devices"]), int(zero["step"])), (2, 4, 4))
    self.assertEqual((int(zero["process_index"]), int(one["process_index"])), (0, 1))
    self.assertGreater(len(params_of(zero)), 10)
    for a, b in zip(params_of(zero), params_of(one), strict=True):
      np.testing.assert_array_equal(a, b)

  def test_two_processes_follow_one_process_on_four_devices(self):
    self.check_success(self.pair + [self.single], self.pair_codes + [self.single_code])
    single = self.single.result()
    self.assertEqual((int(single["process_count"]), int(single["devices"]), int(single["step"])), (1, 4, 4))
    config = test_util.config(**MODEL)
    initial = train_state.create_train_state(config, builders.create_model(config), jax.random.key(0))
    test_util.assert_same_trajectory(self, params_of(self.pair[0].result()), params_of(single), initial.params)
    # Same params, per-example noise and timesteps, the same global batch split differently: the first step's
    # loss and gradient norm agree to float precision.
    pair_first, single_first = read_metrics(self.workdir)[0], read_metrics(self.single_workdir)[0]
    self.assertEqual((pair_first["step"], single_first["step"]), (1, 1))
    np.testing.assert_allclose(pair_first["loss"], single_first["loss"], rtol=1e-5)
    np.testing.assert_allclose(pair_first["grad_norm"], single_first["grad_norm"], rtol=1e-4)

  def test_checkpoint_written_by_both_processes_restores_in_one_process(self):
    self.check_success(self.pair, self.pair_codes)
    checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(self.workdir))
    self.assertContainsSubset([2, 4], checkpointer.all_steps())
    writers = sorted(d for d in os.listdir(os.path.join(checkpointer.directory, "4", "default"))
                     if d.startswith("ocdbt.process_"))
    self.assertEqual(writers, ["ocdbt.process_0", "ocdbt.process_1"])
    config = test_util.config(**MODEL)
    template = train_state.create_train_state(config, builders.create_model(config), jax.random.key(1))
    restored = checkpointer.restore(template, step=4)
    self.assertEqual(int(restored.step), 4)
    for a, b in zip(jax.tree.leaves(jax.device_get(restored.params)), params_of(self.pair[0].result()),
                    strict=True):
      np.testing.assert_array_equal(a, b)

  def test_sample_grid_is_drawn_over_both_processes(self):
    self.check_success(self.pair, self.pair_codes)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.workdir, "samples", "step_00000004.png")
    self.assertTrue(os.path.exists(path), self.pair[0].log[-3000:])
    # 4 samples of 8x8 in a 2x2 grid with 1-pixel borders, upscaled 16x.
    self.assertEqual(Image.open(path).size, (16 * 19, 16 * 19))

  def test_a_resumed_run_stops_every_process_at_the_same_step_on_one_sigterm(self):
    self.assertIsNotNone(self.sigterm_after_step, "the resumed run never logged a step:\n"
                         + self.resumed[0].log[-3000:])
    for run, code in zip(self.resumed, self.resumed_codes):   # the documented exit status of a preempted run
      self.assertEqual(code, preemption.PREEMPTED_EXIT_CODE, f"{run.name} exited with {code}:\n{run.log[-4000:]}")
    stops = []
    for run in self.resumed:
      self.assertIn("Resumed from the checkpoint at step 4", run.log)
      lines = [l for l in run.log.splitlines() if "for preemption" in l]
      self.assertLen(lines, 1, run.log[-3000:])
      stops.append(int(lines[0].split("Stopped at step ")[1].split()[0]))
    self.assertEqual(stops[0], stops[1])
    self.assertEqual(stops[0] % STOP_EVERY, 0)
    self.assertGreater(stops[0], self.sigterm_after_step)
    self.assertEqual(checkpointing.Checkpointer(checkpointing.checkpoint_dir(self.workdir)).all_steps(),
                     [2, 4, stops[0]])
    # Process 0 alone wrote the metrics, each step once, across both runs.
    self.assertEqual([r["step"] for r in read_metrics(self.workdir)],
                     [1, 2, 3, 4] + list(range(STOP_EVERY, stops[0] + 1, STOP_EVERY)))

  def test_processes_that_disagree_fail_together_naming_the_differences(self):
    for run, code in zip(self.mismatch, self.mismatch_codes):
      self.assertNotIn(code, (0, -9), run.log[-3000:])
      log = run.log
      self.assertIn("ProcessMismatchError", log)
      self.assertIn("train.batch_size: 16 on process 0; 32 on process 1", log)
      self.assertIn("local_device_count: 2 on process 0; 1 on process 1", log)


class FingerprintTest(absltest.TestCase):
  """The parts of multihost.check_processes_agree that need no second process."""

  def test_one_process_always_agrees(self):
    multihost.check_processes_agree(test_util.config(), workdir="/tmp/anything")

  def test_fingerprint_names_config_fields_runtime_and_code(self):
    groups = multihost.fingerprint(test_util.config(), workdir="/w")
    self.assertEqual(groups["config"]["train.batch_size"], "16")
    self.assertEqual(groups["config"]["model.channel_mult"], "(1, 2)")
    self.assertEqual(groups["flags"], {"workdir": "'/w'"})
    self.assertEqual(groups["runtime"]["local_device_count"], str(jax.local_device_count()))
    self.assertIn(os.path.join("debias_jax", "train.py"), groups["code"])

  def test_tables_differ_exactly_where_a_field_differs(self):
    a = multihost.fingerprint(test_util.config(), workdir="/w")
    b = multihost.fingerprint(test_util.config(**{"train.batch_size": 32}), workdir="/w")
    table_a, contents = multihost._tables(a)
    table_b, _ = multihost._tables(b)
    differing = np.argwhere(table_a != table_b)
    self.assertLen(differing, 1)
    group, slot = differing[0]
    self.assertEqual(sorted(a)[group], "config")
    self.assertIn("train.batch_size", contents[group][slot])

  def test_differences_are_described_per_value(self):
    self.assertEqual(multihost._describe("x", ["1", "2", "1", "1", None]),
                     "x: 1 on processes 0, 2-3; 2 on process 1; (missing) on process 4")


if __name__ == "__main__":
  absltest.main()
