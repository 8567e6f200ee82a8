"""The package's modules import each other without cycles: every `import`/`from ... import` of a debias_jax
module, at module level or inside a function, and every importlib.import_module/find_spec of a constant name, is
an edge, and the graph must be acyclic, so that each module can be read (and imported) after the ones it uses.
"""

import ast
import os

from absl.testing import absltest

PACKAGE = "debias_jax"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)


def module_files() -> dict[str, str]:
  """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
  modules = {}
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if not name.endswith(".py"):
        continue
      parts = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3].split(os.sep)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      modules[".".join(parts)] = os.path.join(folder, name)
  return modules


def imported(module: str, path: str, modules: dict[str, str]) -> set[str]:
  """The package's modules that `module` imports anywhere in its file (`from pkg import name` counts as the
  submodule pkg.name when there is one, else as pkg)."""
  is_package = path.endswith("__init__.py")
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
      else:
        source = node.module or ""
      names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr in ("import_module", "find_spec") and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      names = [node.args[0].value]   # importlib.import_module("debias_jax.x"): an import made at run time
    else:
      continue
    for name in names:
      # `import a.b.c` names a.b.c (and executes its parents, which are __init__ files, not edges of interest).
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name.startswith(PACKAGE) and name != module:
        found.add(name)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = module_files()
  return {module: imported(module, path, modules) for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each sorted, as the cycles."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for child in sorted(graph.get(node, ())):
      if child not in index:
        visit(child)
        low[node] = min(low[node], low[child])
      elif child in on_stack:
        low[node] = min(low[node], index[child])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        components.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return sorted(components)


class ImportsTest(absltest.TestCase):

  def test_finds_a_cycle(self):
    # The detector itself: a three-module loop is found, a diamond is not a cycle.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e", "f"}, "e": {"g"}, "f": {"g"}, "g": set()}
    self.assertEqual(cycles(graph), [["a", "b", "c"]])

  def test_reads_imports(self):
    graph = import_graph()
    self.assertIn("debias_jax.train", graph)
    self.assertIn("debias_jax.diffusion.schedules", graph["debias_jax.diffusion.losses"])

  def test_no_import_cycles(self):
    graph = import_graph()
    found = cycles(graph)
    lines = [" <-> ".join(c) + ": " + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c)
             for c in found]
    self.assertEmpty(found, "import cycles in debias_jax:\n" + "\n".join(lines))


if __name__ == "__main__":
  absltest.main()
