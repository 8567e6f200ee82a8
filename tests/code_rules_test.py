"""Rules of the package's shape that a reader relies on, measured on the source with `ast`:

- no function or method longer than MAX_LINES lines (configs excepted: they are lists of settings), so that each
  one can be read at once; the few exemptions are listed with the reason;
- no config field read with a restated default (`section.get("field", default)`): configs/default.py names every
  field, so a default written anywhere else could only disagree with it;
- test files map to modules: debias_jax/<folder>/<module>.py is tested in tests/<folder>_<module>_test.py
  (debias_jax/<module>.py in tests/<module>_test.py), or, for the few modules whose behaviour only shows through
  another's, the test file named in TESTED_THROUGH; the other test files cover several modules and say why.
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import ast
import os
import re

from absl.testing import absltest

from tests import imports_test

MAX_LINES = 60
# "module:qualified.name" -> why it stays longer than MAX_LINES.
EXEMPT: dict[str, str] = {}

# Modules without a test file of their own -> the test file that exercises them, and how.
TESTED_THROUGH = {
    "analysis_plots": ("modes_analyze", "the study writes its figures"),
    "analysis_study": ("modes_analyze", "the study run by --mode analyze on a known (zero) estimate"),
    "benchmark_profile": ("benchmark_side_by_side", "profile categories of a UNet gradient"),
    "benchmark_torch": ("benchmark_side_by_side", "the reference worker's protocol, spec and op categories"),
    "builders": ("models_unet", "every model test builds its UNet from a config"),
    "data_base": ("data_pipeline", "every embedded source is an ArraySource"),
    "data_embedded": ("data_pipeline", "digits, photo_patches and gmm through the pipeline"),
    "data_images": ("data_folder", "ADM resizing of folder images"),
    "diffusion_reverse": ("diffusion_losses", "the Gaussian VLB terms of the hybrid loss"),
    "errors": ("config_checks", "ConfigError is what every check raises"),
    "experiments_plan": ("experiments_compare", "a study's arms, checkpoints and paths"),
    "experiments_report": ("experiments_compare", "REPORT.md of a toy study"),
    "jsonl": ("faults", "metrics and records survive kills"),
    "main": ("multiprocess", "every mode through main, on two processes"),
    "multihost": ("multiprocess", "the processes' agreement check"),
    "parallel": ("train", "single- and multi-device steps agree"),
    "preemption": ("faults", "SIGTERM at every phase"),
    "storage": ("object_store", "every mode on gs:// equals a local run"),
    "summaries": ("object_store", "event files and hparams on gs://"),
    "train_state": ("train", "fresh state, EMA and resume"),
}
# Test files that are about several modules at once.
ACROSS_MODULES = {
    "code_rules": "the package's shape (this file)",
    "imports": "no import cycles in the package",
    "faults": "kills and SIGTERMs around saves: checkpointing, preemption, workdir_lock, train",
    "launch": "the launch/ scripts",
    "multiprocess": "two processes: multihost, main, checkpointing",
    "notebook": "the Colab notebook, run headless",
    "object_store": "every mode on a Cloud Storage emulator",
    "test_util": "the tests' own helpers",
}

# Receivers of `.get(...)` that are config sections (names the package uses for them), as opposed to plain dicts
# of results, JSON records or command messages.
CONFIG_RECEIVER = re.compile(r"(^|\.)(config|cfg|data_config|eval_config|model_config|study_config)$|"
                             r"(^|\.)(config|c)\.(data|model|diffusion|loss|optim|train|sampling|eval|analysis|"
                             r"compare)$|^(d|m|s|ev|t|o|loss|optim|sampling|analysis)$")


def _parsed(path: str) -> ast.Module:
  with open(path) as f:
    return ast.parse(f.read(), path)


def long_functions() -> dict[str, int]:
  """'module:qualified.name' -> length in lines, for every function longer than MAX_LINES outside configs."""
  found = {}
  for module, path in imports_test.module_files().items():
    if ".configs" in module:
      continue

    def visit(node, prefix):
      for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
          name = f"{prefix}{child.name}"
          length = child.end_lineno - child.lineno + 1
          if not isinstance(child, ast.ClassDef) and length > MAX_LINES:
            found[f"{module}:{name}"] = length
          visit(child, name + ".")

    visit(_parsed(path), "")
  return found


def config_gets_with_default() -> list[str]:
  """'file:line: source' for every `<config section>.get("field", default)` in the package outside configs."""
  found = []
  for module, path in imports_test.module_files().items():
    if ".configs" in module:
      continue
    for node in ast.walk(_parsed(path)):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
          and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
          and CONFIG_RECEIVER.search(ast.unparse(node.func.value))):
        found.append(f"{os.path.relpath(path)}:{node.lineno}: {ast.unparse(node)}")
  return found


def module_test_names() -> dict[str, str]:
  """'<folder>_<module>' -> dotted module, for every module of the package outside configs and __init__ files."""
  return {module[len("debias_jax."):].replace(".", "_"): module
          for module, path in imports_test.module_files().items()
          if not path.endswith("__init__.py") and ".configs" not in module}


def existing_test_files() -> set[str]:
  folder = os.path.dirname(os.path.abspath(__file__))
  return {name[:-len("_test.py")] for name in os.listdir(folder) if name.endswith("_test.py")}


class CodeRulesTest(absltest.TestCase):

  def test_every_module_has_its_test_file(self):
    modules, tests = module_test_names(), existing_test_files()
    missing = sorted(name for name in modules if name not in tests and name not in TESTED_THROUGH)
    self.assertEmpty(missing, "modules without tests/<folder>_<module>_test.py or an entry in TESTED_THROUGH")
    self.assertEmpty(sorted(n for n in TESTED_THROUGH if n in tests or n not in modules),
                     "TESTED_THROUGH entries that have their own test file now, or name no module")
    self.assertEmpty(sorted(t for t, _ in TESTED_THROUGH.values() if t not in tests), "TESTED_THROUGH names a "
                                                                                    "missing test file")

  def test_every_test_file_names_its_module(self):
    strays = sorted(t for t in existing_test_files() if t not in module_test_names() and t not in ACROSS_MODULES)
    self.assertEmpty(strays, "test files that name no module: rename them, or list them in ACROSS_MODULES")

  def test_no_long_functions(self):
    too_long = {name: n for name, n in long_functions().items() if name not in EXEMPT}
    self.assertEmpty(too_long, f"functions longer than {MAX_LINES} lines: split them, or exempt them in EXEMPT "
                               "with the reason")

  def test_exemptions_are_still_needed(self):
    self.assertEmpty(set(EXEMPT) - set(long_functions()), "exempt functions that are now short enough")

  def test_the_rule_finds_a_long_function(self):
    body = "\n".join(f"  x{i} = {i}" for i in range(MAX_LINES))
    tree = ast.parse(f"def f():\n{body}\n")
    self.assertEqual(tree.body[0].end_lineno - tree.body[0].lineno + 1, MAX_LINES + 1)

  def test_config_fields_are_read_without_restated_defaults(self):
    self.assertEmpty(config_gets_with_default(), "read the field directly; its default lives in "
                                                 "debias_jax/configs/default.py")

  def test_the_rule_recognises_config_sections(self):
    for receiver in ("config", "config.data", "c.sampling", "self.config.eval", "data_config", "d", "ev"):
      self.assertTrue(CONFIG_RECEIVER.search(receiver), receiver)
    for receiver in ("record", "result", "row[name]", "cmd", "self._ALLOWED", "batch", "spec"):
      self.assertFalse(CONFIG_RECEIVER.search(receiver), receiver)


if __name__ == "__main__":
  absltest.main()
