"""Rules of the package's shape that a reader relies on, measured on the source with `ast`:

- no function or method longer than MAX_LINES lines (configs excepted: they are lists of settings), so that each
  one can be read at once; the few exemptions are listed with the reason;
- no config field read with a restated default (`section.get("field", default)`): configs/default.py names every
  field, so a default written anywhere else could only disagree with it.
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


class CodeRulesTest(absltest.TestCase):

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
