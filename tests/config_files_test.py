"""Every shipped config loads and validates from a folder outside the repository, by absolute path and by its
`configs/...` name (debias_jax/config_files.py), with no data read and nothing compiled; the repository's
configs/ is a link to the packaged folder.

One subprocess (cwd: a temporary folder, the repository not importable) loads and validates all of them.
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import glob
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from debias_jax import config_files
from tests import test_util

# Modules under configs/ that other configs import and that have no get_config() themselves.
HELPERS = {"configs/paper/adm.py", "configs/compare/base.py"}

# Run in a temporary folder: each config through the --config flag (a fresh FlagValues per config, as main.py's
# flag parses it) by absolute path and by name, then validated: compare presets with config_checks.validate_study
# (every study of a suite), the others with config_checks.validate in every mode; no data source may be opened
# and nothing compiled (JAX's monitoring events) meanwhile.
CHECK_ALL = r"""
import json, os, sys
from absl import flags

repo, names = sys.argv[1], json.loads(sys.argv[2])
try:
  import configs  # the repository root must not be importable here
  sys.exit("the repository's configs/ is importable from " + os.getcwd())
except ModuleNotFoundError:
  pass
import jax
from debias_jax import config_checks, config_files
from debias_jax.data import pipeline
from debias_jax.evaluation import features

compiled, data_reads = [], []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kwargs: compiled.append(event) if "compile" in event else None)
pipeline.create_source = lambda data_config: data_reads.append(data_config.name)


def load(path, *overrides):
  fv = flags.FlagValues()
  argv = ["prog", "--config=" + path, *overrides]
  config_files.DEFINE_config_file("config", None, flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


def validate(config):
  if "suite" in config or "compare" in config:
    studies = [config.suite[k] for k in config.suite] if "suite" in config else [config]
    for study in studies:
      if features.resolve_feature_space(study.eval, study.data) == "inception":
        study.eval.inception_weights = "/weights/inception.pkl"   # required, never read by the check
      config_checks.validate_study(study)
    return len(studies)
  for mode in config_checks.MODES:
    config_checks.validate(config, mode, num_devices=1)
  return len(config_checks.MODES)


report = {}
for name in names:
  by_path = load(os.path.join(repo, name))          # through the repository's configs/ link
  by_name = load(name)                              # no such file here: the packaged config
  assert not os.path.exists(name), name
  assert by_path.to_json() == by_name.to_json(), name
  report[name] = validate(by_name)
overridden = load("configs/tiny.py", "--config.train.num_steps=3", "--config.loss.weighting=p2")
report["override"] = [overridden.train.num_steps, overridden.loss.weighting]
with open("argument_config.py", "w") as f:   # ml_collections' path:argument suffix, on a local file
  f.write("from debias_jax.configs import tiny\n"
          "def get_config(steps):\n  c = tiny.get_config()\n  c.train.num_steps = int(steps)\n  return c\n")
report["argument"] = load("argument_config.py:7").train.num_steps
try:
  load("configs/nope.py")
  report["missing"] = "loaded"
except flags.IllegalFlagValueError as e:
  report["missing"] = str(e)
def flat(tree, prefix=""):
  return {k: v for key, value in tree.items()
          for k, v in (flat(value, prefix + key + ".") if isinstance(value, dict) else {prefix + key: value}).items()}


report["learning_rate_axis"] = {}   # the presets' :low_lr variants: a quarter of the rate, nothing else
for name in ("configs/compare/gmm.py", "configs/compare/digits.py"):
  base, low = load(name), load(name + ":low_lr")
  changed = sorted(k for k, v in flat(base.to_dict()).items() if flat(low.to_dict())[k] != v)
  report["learning_rate_axis"][name] = [base.optim.learning_rate, low.optim.learning_rate, validate(low), changed]
try:
  load("configs/compare/gmm.py:fast")
  report["bad_variant"] = "loaded"
except Exception as e:  # the flag parser wraps the config's ValueError
  report["bad_variant"] = str(e)
report["untouched"] = {"compiled": list(compiled), "data_reads": list(data_reads)}
jax.jit(lambda x: x + 1)(1)   # the listener sees a compilation: the check above can fail
report["listener_works"] = bool(compiled)
print("REPORT " + json.dumps(report))
"""


class ConfigFilesTest(absltest.TestCase):

  def test_available_lists_every_config_file(self):
    paths = glob.glob(os.path.join(test_util.REPO, "configs", "**", "*.py"), recursive=True)
    files = {os.path.relpath(p, test_util.REPO) for p in paths if not os.path.basename(p).startswith("_")}
    self.assertEqual(set(config_files.available()), files - HELPERS)
    self.assertLen(config_files.available(), 15)
    self.assertEqual(config_files.available()[:2], ["configs/default.py", "configs/tiny.py"])

  def test_repository_configs_is_a_link_to_the_package(self):
    self.assertTrue(os.path.islink(os.path.join(test_util.REPO, "configs")))
    self.assertEqual(os.path.realpath(os.path.join(test_util.REPO, "configs")), config_files.PACKAGE_DIR)
    mode = subprocess.run(["git", "ls-files", "-s", "configs"], cwd=test_util.REPO, capture_output=True,
                          text=True).stdout
    if mode:   # a git checkout (not an unpacked sdist): stored as a link, not as copies
      self.assertTrue(mode.startswith("120000 "), mode)

  def test_resolve(self):
    tiny = os.path.join(config_files.PACKAGE_DIR, "tiny.py")
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
      os.chdir(tmp)
      try:
        for name in ("configs/tiny.py", "./configs/tiny.py", "debias_jax/configs/tiny.py", "tiny.py"):
          self.assertEqual(config_files.resolve(name), tiny)
        self.assertEqual(config_files.resolve("configs/tiny.py:a:b"), tiny + ":a:b")
        for bad in ("configs/paper/adm.py", "../configs/tiny.py", "/nowhere/configs/tiny.py", "configs/nope.py"):
          with self.assertRaisesRegex(config_files.ConfigFileError, "configs/paper/cifar10.py") as caught:
            config_files.resolve(bad)
          self.assertIn(repr(bad), str(caught.exception))
        with open("configs_tiny.py", "w") as f:
          f.write("")
        self.assertEqual(config_files.resolve("configs_tiny.py:x"), "configs_tiny.py:x")   # exists here: as given
      finally:
        os.chdir(cwd)

  def test_every_config_loads_and_validates_outside_the_repository(self):
    names = config_files.available()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as tmp:
      result = subprocess.run([sys.executable, "-c", CHECK_ALL, test_util.REPO, json.dumps(names)], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=300)
    lines = [l for l in result.stdout.splitlines() if l.startswith("REPORT ")]
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertLen(lines, 1, result.stdout[-3000:])
    report = json.loads(lines[0][len("REPORT "):])
    studies = {"configs/compare/full.py": 3}
    self.assertEqual({k: report[k] for k in names},
                     {k: studies.get(k, 1) if k.startswith("configs/compare/") else 4 for k in names})
    self.assertEqual(report["untouched"], {"compiled": [], "data_reads": []})
    self.assertTrue(report["listener_works"])
    self.assertEqual(report["override"], [3, "p2"])
    self.assertEqual(report["argument"], 7)
    self.assertIn("No config file 'configs/nope.py'", report["missing"])
    self.assertIn("configs/compare/quick.py", report["missing"])
    for name in ("configs/compare/gmm.py", "configs/compare/digits.py"):
      self.assertEqual(report["learning_rate_axis"][name], [1e-3, 2.5e-4, 1, ["compare.title", "optim.learning_rate"]])
    self.assertIn("Unknown preset variant 'fast'", report["bad_variant"])
    self.assertIn(":low_lr", report["bad_variant"])


if __name__ == "__main__":
  absltest.main()
