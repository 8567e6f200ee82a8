"""Every mode on a gs:// workdir (an emulated Cloud Storage bucket) gives the outputs it gives on a local disk.

One subprocess (tests/object_store_driver.py) runs train, sample, eval, analyze and a one-arm compare under a local
root and under gs://bucket/root, with gs:// sent to fake-gcs-server: etils.epath through gcsfs, orbax through
tensorstore's GCS driver. Checkpoints, metrics, TensorBoard events (written through epath, see
debias_jax/summaries.py), sample files, evaluation results, the bias study and the comparison report must match.
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import ast
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from absl.testing import absltest

from tests import gcs_emulator

REPO = pathlib.Path(__file__).resolve().parents[1]
REMOTE = "gs://bucket/root"


class EveryModeOnAnObjectStoreTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tmp = tempfile.mkdtemp()
    output = os.path.join(tmp, "summary.json")
    local = os.path.join(tmp, "local")
    with gcs_emulator.FakeGcs() as gcs:
      env = {**os.environ, **gcs_emulator.environment(gcs.url), "PYTHONPATH": str(REPO)}
      result = subprocess.run([sys.executable, str(REPO / "tests" / "object_store_driver.py"), output, tmp, local,
                               REMOTE], env=env, capture_output=True, text=True, timeout=600)
    if result.returncode:
      raise AssertionError(f"The driver failed:\n{result.stderr[-6000:]}")
    with open(output) as f:
      summary = json.load(f)
    cls.local, cls.remote = summary[local], summary[REMOTE]

  def test_training_writes_the_same_run(self):
    self.assertEqual(self.remote["checkpoints"], ["2", "4"])
    self.assertEqual(self.remote["checkpoints"], self.local["checkpoints"])
    timing = {"steps_per_second"}   # wall-clock: differs between any two runs
    untimed = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    self.assertEqual(untimed(self.remote["metrics"]), untimed(self.local["metrics"]))   # bit-identical training
    self.assertEqual([r["step"] for r in self.remote["metrics"]], [2, 4])
    self.assertEqual(self.remote["config"], self.local["config"])
    self.assertEqual(self.remote["top"], self.local["top"])
    self.assertEqual(self.remote["samples"][0], "step_00000004.png")

  def test_tensorboard_events_reach_the_bucket(self):
    self.assertEqual(self.remote["scalar_tags"], self.local["scalar_tags"])
    self.assertIn("loss", self.remote["scalar_tags"])
    self.assertIn("learning_rate", self.remote["scalar_tags"])
    self.assertEqual(self.remote["image_tags"], ["samples"])
    self.assertLen(self.remote["hparams"], 1)
    for field in ("loss.weighting", "loss.target", "model.channel_mult", "optim.learning_rate"):
      self.assertIn(field, self.remote["hparams"][0])

  def test_sample_eval_and_analyze_give_the_same_results(self):
    self.assertEqual(self.remote["sample_record"], self.local["sample_record"])
    self.assertEqual(self.remote["sample_digest"], self.local["sample_digest"])
    self.assertEqual(self.remote["eval"], self.local["eval"])
    self.assertEqual(self.remote["analysis"], self.local["analysis"])
    for key in ("samples", "eval_files", "analysis_files"):
      self.assertEqual(self.remote[key], self.local[key], key)
    self.assertTrue(any(n.endswith(".npz") for n in self.remote["samples"]))
    self.assertIn("tfevents", self.remote["eval_files"])
    self.assertTrue(any(n.endswith("_x0_error.png") for n in self.remote["analysis_files"]))

  def test_the_comparison_runs_and_reports(self):
    self.assertEqual(self.remote["study_eval"], self.local["study_eval"])
    self.assertNotEmpty(self.remote["study_eval"])
    self.assertIn("REPORT.md", self.remote["study_files"])
    self.assertEqual(self.remote["report_headings"], self.local["report_headings"])


# Modules that touch only local files by design: the package's own sources and configs, /proc, XLA settings, the
# workdir lock's local-disk branch.
LOCAL_BY_DESIGN = {"multihost.py", "xla_cpu.py", "config_files.py", "workdir_lock.py", "runtime.py"}
FILE_SYSTEM_CALLS = {"exists", "isdir", "isfile", "makedirs", "listdir", "remove", "replace", "rename", "fdopen",
                     "stat", "abspath", "mkdir", "unlink"}


class NoLocalOnlyFileCallsTest(absltest.TestCase):

  def test_workdir_code_goes_through_epath(self):
    offenders = []
    for path in sorted((REPO / "debias_jax").rglob("*.py")):
      if path.name in LOCAL_BY_DESIGN or path.name.startswith("benchmark") or "configs" in path.parts:
        continue
      for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
          continue
        func = node.func
        name = ast.unparse(func)
        if (isinstance(func, ast.Name) and func.id == "open") or (
            name.startswith(("os.", "os.path.", "shutil.")) and name.split(".")[-1] in FILE_SYSTEM_CALLS):
          offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    self.assertEqual(offenders, [], "use etils.epath / debias_jax.storage for workdir and output paths")


if __name__ == "__main__":
  absltest.main()
