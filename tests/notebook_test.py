"""launch/colab_tpu.ipynb: a clean notebook, its install cell's helpers, and the whole notebook run headless on the
tiny config, install cell included.

The run replaces the parameter cell (the first code cell, tagged "parameters") with one that points at this
checkout and shrinks training and analysis, and runs every code cell as one script; lines for IPython only (the
TensorBoard magics) are left out. It runs in a fresh virtual environment layered over this one, as on a Colab
runtime: every dependency is already installed and debias_jax is not, so the install cell must install exactly
debias_jax and leave everything else as it found it.
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import ast
import io
import json
import os
import stat
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import zipfile
from unittest import mock

from absl.testing import absltest
import numpy as np  # pylint: disable=unused-import  (imported, so that stale_modules can find it loaded)
from tests import test_util

NOTEBOOK = os.path.join(test_util.REPO, "launch", "colab_tpu.ipynb")
PARAMETERS = ("REPO_URL", "REPO_ZIP", "REPO_DIR", "CONFIG", "NUM_STEPS", "OVERRIDES", "WORKDIR", "INSTALL",
              "RUN_ANALYSIS", "ANALYSIS_OVERRIDES")


def load_notebook() -> dict:
  with open(NOTEBOOK) as f:
    return json.load(f)


def source(cell) -> str:
  return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def code_cells(notebook) -> list[str]:
  return [source(c) for c in notebook["cells"] if c["cell_type"] == "code"]


def pyproject() -> dict:
  with open(os.path.join(test_util.REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def replacement_parameters(tmp: str) -> str:
  return "\n".join([
      'REPO_URL = ""',
      f'REPO_ZIP = {os.path.join(tmp, "absent*.zip")!r}',
      f"REPO_DIR = {test_util.REPO!r}",
      'CONFIG = "configs/tiny.py"',
      "NUM_STEPS = 4",
      'OVERRIDES = {"model.channel_mult": (1,), "model.attention_resolutions": (), "train.log_every": 2,'
      ' "train.checkpoint_every": 4, "sampling.num_samples": 4, "sampling.batch_size": 4}',
      f"WORKDIR = {os.path.join(tmp, 'run')!r}",
      "INSTALL = True",
      "RUN_ANALYSIS = True",
      'ANALYSIS_OVERRIDES = {"analysis.num_examples": 16, "analysis.num_buckets": 2, "analysis.batch_size": 16,'
      ' "analysis.num_samples": 4, "analysis.sampling_steps": (2,), "analysis.samplers": ("ddim",)}',
  ])


def is_ipython_only(line: str) -> bool:
  return line.lstrip().startswith(("!", "%"))


def install_cell() -> str:
  for text in code_cells(load_notebook()):
    if any(isinstance(node, ast.FunctionDef) and node.name == "install" for node in ast.parse(text).body):
      return text
  raise AssertionError("no code cell defines install()")


def install_helpers(**parameters) -> dict:
  """The install cell's imports, functions and constant tables (not what it runs), with `parameters` as globals."""
  tree = ast.parse(install_cell())
  tree.body = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef))
               or (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict))]
  namespace = dict(parameters)
  exec(compile(tree, "install cell", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


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
    replaced = ast.parse(replacement_parameters("/tmp"))
    self.assertEqual(tuple(node.targets[0].id for node in replaced.body), PARAMETERS)

  def test_every_code_cell_compiles_and_only_tensorboard_needs_ipython(self):
    ipython_only = []
    for i, text in enumerate(code_cells(load_notebook())):
      compile("\n".join(line for line in text.splitlines() if not is_ipython_only(line)), f"cell {i}", "exec")
      ipython_only += [line.strip() for line in text.splitlines() if is_ipython_only(line)]
    self.assertEqual(ipython_only, ["%load_ext tensorboard", "%tensorboard --logdir {WORKDIR}"])

  def test_leaves_the_runtime_packages_alone(self):
    code = "\n".join(code_cells(load_notebook()))
    self.assertNotIn("uninstall", code)
    self.assertNotIn("OWNER", code)  # no placeholder to edit before Run all
    self.assertNotIn('"-c"', code)   # no constraints file: only JAX is pinned (see InstallHelpersTest)


class InstallHelpersTest(absltest.TestCase):

  def test_requirements_are_the_package_s_with_jax_pinned_and_no_second_tensorflow(self):
    helpers = install_helpers()
    project = pyproject()["project"]
    with open(os.path.join(test_util.REPO, "constraints.txt")) as f:
      pins = [line.strip() for line in f if line.startswith(("jax==", "jaxlib=="))]
    self.assertLen(pins, 2)
    self.assertEqual(helpers["requirements"](test_util.REPO, None, {"numpy": "2.1.3"}), project["dependencies"] + pins)
    tpu = helpers["requirements"](test_util.REPO, "tpu", {})
    self.assertEqual(tpu, project["dependencies"] + project["optional-dependencies"]["tpu"] + pins)
    # Colab's GPU runtime: tensorflow is installed, and tensorflow-cpu would overwrite its files.
    gpu = helpers["requirements"](test_util.REPO, "cuda12", {"tensorflow": "2.20.0"})
    tensorflow_cpu = [r for r in project["dependencies"] if r.startswith("tensorflow-cpu")]
    self.assertLen(tensorflow_cpu, 1)
    self.assertEqual(gpu, [r for r in project["dependencies"] if r not in tensorflow_cpu]
                     + project["optional-dependencies"]["cuda12"] + pins)
    for extra in set(helpers["EXTRAS"].values()) - {None}:
      self.assertIn(extra, project["optional-dependencies"])

  def test_github_repository_from_a_colab_notebook_path(self):
    github_repository = install_helpers()["github_repository"]
    self.assertEqual(github_repository("fileId=https%3A%2F%2Fgithub.com%2Fsome-owner%2Fdebias_jax%2Fblob%2Fmain"
                                       "%2Flaunch%2Fcolab_tpu.ipynb"), "https://github.com/some-owner/debias_jax.git")
    self.assertEqual(github_repository("/github/a.b/c-d/blob/v1/launch/colab_tpu.ipynb"),
                     "https://github.com/a.b/c-d.git")
    self.assertIsNone(github_repository("fileId=1a2B3c4D5e"))  # from Drive
    self.assertIsNone(github_repository(""))

  def test_stale_modules_are_the_loaded_ones_whose_distribution_changed(self):
    helpers = install_helpers()
    now = helpers["installed_versions"]()
    self.assertEqual(helpers["stale_modules"](now, now), [])
    self.assertEqual(helpers["stale_modules"]({**now, "numpy": "1.0"}, now), ["numpy"])
    self.assertEqual(helpers["stale_modules"]({**now, "not-a-distribution": "1.0"}, now), [])

  def test_extract_keeps_symlinks_and_finds_the_repository_folder(self):
    tmp = tempfile.mkdtemp()
    archive_path = os.path.join(tmp, "debias_jax-main.zip")
    with zipfile.ZipFile(archive_path, "w") as archive:
      archive.writestr("debias_jax-main/pyproject.toml", "[project]\n")
      archive.writestr("debias_jax-main/debias_jax/configs/tiny.py", "x = 1\n")
      link = zipfile.ZipInfo("debias_jax-main/configs")
      link.external_attr = (stat.S_IFLNK | 0o777) << 16
      archive.writestr(link, "debias_jax/configs")
      archive.writestr("../outside.txt", "not extracted")
    destination = os.path.join(tmp, "code")
    install_helpers()["extract"](archive_path, destination)
    self.assertTrue(os.path.islink(os.path.join(destination, "configs")))
    with open(os.path.join(destination, "configs", "tiny.py")) as f:
      self.assertEqual(f.read(), "x = 1\n")
    self.assertFalse(os.path.exists(os.path.join(tmp, "outside.txt")))
    empty = os.path.join(tmp, "empty.zip")
    with zipfile.ZipFile(empty, "w") as archive:
      archive.writestr("README.md", "")
    with self.assertRaisesRegex(FileNotFoundError, "holds no pyproject.toml"):
      install_helpers()["extract"](empty, os.path.join(tmp, "code2"))

  def test_without_any_code_it_stops_saying_what_to_do(self):
    tmp = tempfile.mkdtemp()
    helpers = install_helpers(REPO_DIR=os.path.join(tmp, "none"), REPO_ZIP=os.path.join(tmp, "*.zip"), REPO_URL="")
    stdout = io.StringIO()
    with self.assertRaisesRegex(FileNotFoundError, "Set REPO_URL in the first cell"), \
        mock.patch("sys.stdout", stdout):
      helpers["get_code"]()
    self.assertIn("upload a zip of the repository", stdout.getvalue())


def layered_environment(path: str) -> str:
  """A virtual environment that sees this one's packages but not as its own, like a Colab runtime's preinstalled
  packages: pip there satisfies requirements from them and installs only what is missing, into `path`."""
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
  python = os.path.join(path, "bin", "python")
  purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(purelib, "outer_environment.pth"), "w") as f:
    f.write(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
  return python


class NotebookRunTest(absltest.TestCase):

  def test_runs_headless_on_the_tiny_config_installing_only_the_package(self):
    tmp = tempfile.mkdtemp()
    python = layered_environment(os.path.join(tmp, "venv"))
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    cells = code_cells(load_notebook())
    cells[0] = replacement_parameters(tmp)
    script = os.path.join(tmp, "notebook.py")
    with open(script, "w") as f:
      f.write("\n".join(line for cell in cells for line in cell.splitlines() + [""] if not is_ipython_only(line)))
    # PIP_NO_INDEX: nothing may need downloading (the test extra brings the setuptools the package builds with).
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               JAX_COMPILATION_CACHE_DIR=os.path.join(tmp, "xla_cache"))
    proc = subprocess.run([python, script], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    self.assertEqual(proc.returncode, 0, output[-5000:])
    self.assertIn("Accelerator: cpu", proc.stdout)
    self.assertIn("Code: the copy in " + test_util.REPO, proc.stdout)

    # The install cell installed debias_jax (editable, from this checkout) into the fresh environment, offline,
    # and changed the version of nothing else ("nothing new" where this environment has a debias_jax of its own).
    self.assertIn("$ pip install --no-deps --no-build-isolation -e " + test_util.REPO, proc.stdout)
    version = pyproject()["project"]["version"]
    installed = proc.stdout.split("\nInstalled: ", 1)[1].split("\n", 1)[0]
    self.assertIn(installed, ("nothing new", f"debias-jax (new) -> {version}"))
    added = sorted(os.listdir(purelib))
    self.assertIn(f"debias_jax-{version}.dist-info", added)
    self.assertEqual([n for n in added if not n.startswith(("debias_jax", "__editable__", "__pycache__"))],
                     ["outer_environment.pth"])
    with open(os.path.join(purelib, f"debias_jax-{version}.dist-info", "direct_url.json")) as f:
      self.assertEqual(json.load(f)["url"], "file://" + test_util.REPO)

    # Training showed its progress and wrote its checkpoint, metrics, TensorBoard events and a sample grid.
    workdir = os.path.join(tmp, "run")
    self.assertIn("Training from step 0 to 4", proc.stderr)
    self.assertIn("Trained to step 4; last logged: step=4", proc.stdout)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      self.assertEqual([json.loads(line)["step"] for line in f], [2, 4])
    self.assertTrue(os.path.isdir(os.path.join(workdir, "checkpoints", "4")))
    self.assertNotEmpty([f for f in os.listdir(workdir) if "tfevents" in f])
    samples = os.path.join(workdir, "samples", "step_00000004.png")
    self.assertTrue(os.path.isfile(samples))
    self.assertIn("1 sample grid(s)\n" + samples, proc.stdout)
    self.assertTrue(os.path.isfile(os.path.join(workdir, "loss.png")))
    self.assertIn(os.path.join(workdir, "loss.png"), proc.stdout)

    # The bias study ran on the final checkpoint and every figure it wrote was shown.
    self.assertIn(f"Analysed step 4 of {workdir}", proc.stdout)
    figures = sorted(f for f in os.listdir(os.path.join(workdir, "analysis")) if f.endswith(".png"))
    self.assertNotEmpty(figures)
    self.assertIn(f"{len(figures)} analysis figure(s)", proc.stdout)
    for name in figures:
      self.assertIn(os.path.join(workdir, "analysis", name), proc.stdout)


if __name__ == "__main__":
  absltest.main()
