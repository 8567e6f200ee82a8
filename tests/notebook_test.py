"""launch/colab_tpu.ipynb: a well-formed notebook whose code cells run headless, end to end, on the tiny config.

The parameter cell (the first code cell, tagged "parameters") is replaced by one that points at this checkout,
skips the install and shrinks training and analysis; the other cells run unchanged as one script in a subprocess
(shell `!`/`%` lines, if any, are dropped).
"""

import ast
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "launch", "colab_tpu.ipynb")
PARAMETERS = ("REPO_URL", "REPO_ZIP", "REPO_DIR", "CONFIG", "NUM_STEPS", "OVERRIDES", "WORKDIR", "INSTALL",
              "RUN_ANALYSIS", "ANALYSIS_OVERRIDES")


def load_notebook() -> dict:
  with open(NOTEBOOK) as f:
    return json.load(f)


def source(cell) -> str:
  return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def code_cells(notebook) -> list[str]:
  return [source(c) for c in notebook["cells"] if c["cell_type"] == "code"]


def replacement_parameters(workdir: str) -> str:
  return "\n".join([
      'REPO_URL = "https://github.com/OWNER/debias_jax.git"',
      f'REPO_ZIP = {os.path.join(workdir, "absent.zip")!r}',
      f"REPO_DIR = {REPO!r}",
      'CONFIG = "configs/tiny.py"',
      "NUM_STEPS = 4",
      'OVERRIDES = {"model.channel_mult": (1,), "model.attention_resolutions": (), "train.log_every": 2,'
      ' "train.checkpoint_every": 4, "sampling.num_samples": 4, "sampling.batch_size": 4}',
      f"WORKDIR = {os.path.join(workdir, 'run')!r}",
      "INSTALL = False",
      "RUN_ANALYSIS = True",
      'ANALYSIS_OVERRIDES = {"analysis.num_examples": 16, "analysis.num_buckets": 2, "analysis.batch_size": 16,'
      ' "analysis.num_samples": 4, "analysis.sampling_steps": (2,), "analysis.samplers": ("ddim",)}',
  ])


class NotebookFormTest(absltest.TestCase):

  def test_is_a_clean_nbformat_4_notebook(self):
    notebook = load_notebook()
    self.assertEqual(notebook["nbformat"], 4)
    self.assertEqual(notebook["metadata"]["kernelspec"]["name"], "python3")
    for cell in notebook["cells"]:
      self.assertIn(cell["cell_type"], ("markdown", "code"))
      if cell["cell_type"] == "code":
        self.assertEqual(cell["outputs"], [], "commit the notebook without outputs")
        self.assertIsNone(cell["execution_count"])

  def test_first_code_cell_holds_exactly_the_parameters(self):
    notebook = load_notebook()
    first = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    self.assertEqual(first["metadata"].get("tags"), ["parameters"])
    tree = ast.parse(source(first))
    names = [node.targets[0].id for node in tree.body if isinstance(node, ast.Assign)]
    self.assertEqual(tuple(names), PARAMETERS)
    self.assertEqual(len(tree.body), len(PARAMETERS), "the parameter cell should only assign parameters")
    # The test's replacement sets the same names.
    replaced = ast.parse(replacement_parameters("/tmp"))
    self.assertEqual(tuple(node.targets[0].id for node in replaced.body), PARAMETERS)

  def test_every_code_cell_compiles(self):
    for i, text in enumerate(code_cells(load_notebook())):
      compile(text, f"cell {i}", "exec")


class NotebookRunTest(absltest.TestCase):

  def test_runs_headless_on_the_tiny_config(self):
    tmp = tempfile.mkdtemp()
    cells = code_cells(load_notebook())
    cells[0] = replacement_parameters(tmp)
    lines = [line for cell in cells for line in cell.splitlines() + [""]
             if not line.lstrip().startswith(("!", "%"))]
    script = os.path.join(tmp, "notebook.py")
    with open(script, "w") as f:
      f.write("\n".join(lines))
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, script], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    self.assertEqual(proc.returncode, 0, output[-5000:])
    workdir = os.path.join(tmp, "run")
    self.assertIn("Accelerator: cpu", proc.stdout)
    self.assertIn("Trained to step 4; last logged: step=4", proc.stdout)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      self.assertEqual([json.loads(line)["step"] for line in f], [2, 4])
    samples = os.path.join(workdir, "samples", "step_00000004.png")
    self.assertTrue(os.path.exists(samples))
    self.assertIn("1 sample grid(s)\n" + samples, proc.stdout)
    self.assertIn(os.path.join(workdir, "loss.png"), proc.stdout)
    # The analyze mode ran (or said it is not available) and every figure it wrote was shown.
    figures = sorted(f for f in os.listdir(os.path.join(workdir, "analysis"))
                     if f.endswith(".png")) if os.path.isdir(os.path.join(workdir, "analysis")) else []
    if "analyze mode is not available" not in proc.stdout:
      self.assertIn("Analysed step 4", proc.stdout)
      self.assertNotEmpty(figures)
    self.assertIn(f"{len(figures)} analysis figure(s)", proc.stdout)
    for name in figures:
      self.assertIn(os.path.join(workdir, "analysis", name), proc.stdout)


if __name__ == "__main__":
  absltest.main()
