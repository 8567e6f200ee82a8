"""The launch scripts: syntax (bash -n, shellcheck), the exact commands they print under DRY_RUN=1, input
validation, and an end-to-end run of the TPU scripts against a stand-in `gcloud` whose one "worker" is a local
directory: setup copies this checkout there, run trains the tiny config there in the background, stop sends
SIGTERM and the run saves a checkpoint and stops.
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import glob
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib

from absl.testing import absltest
from absl.testing import parameterized
from tests import test_util

LAUNCH = os.path.join(test_util.REPO, "launch")
SCRIPTS = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")) + glob.glob(os.path.join(LAUNCH, "*.sbatch")))
POD = {"TPU_NAME": "debias-pod", "ZONE": "us-central2-b"}
# What the scripts read from the environment: the test's own environment must not leak into them.
SCRIPT_VARIABLES = ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "SPOT", "RESERVED",
                    "REPO_URL", "REPO_REF", "REMOTE_DIR", "VENV", "PYTHON", "PYTHON_VERSION", "BACKEND", "WORKDIR",
                    "CONFIG", "MODE", "ACTION", "DETACH", "DISTRIBUTED", "INSTALL", "CUDA", "COORDINATOR",
                    "NUM_PROCESSES", "PROCESS_ID", "JAX_PLATFORMS", "DRY_RUN", "LINES", "OUT", "ROWS",
                    "BATCH_256")

# Stand-in for gcloud: records each call, and plays one TPU worker whose home is $FAKE_WORKER_HOME: `tpu-vm ssh
# --command=C` runs C there (with DRY_RUN=$FAKE_REMOTE_DRY_RUN), `tpu-vm scp SRC NAME:DEST` copies SRC there.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
set -euo pipefail
printf '%s\n' "$*" >> "${FAKE_GCLOUD_LOG}"
[[ "$1 $2 $3" == "compute tpus tpu-vm" ]] || exit 0
case "$4" in
  ssh)
    for arg in "$@"; do
      if [[ "${arg}" == --command=* ]]; then command="${arg#--command=}"; fi
    done
    cd "${FAKE_WORKER_HOME}"
    HOME="${FAKE_WORKER_HOME}" DRY_RUN="${FAKE_REMOTE_DRY_RUN:-0}" bash -c "${command}" ;;
  scp) cp "$5" "${FAKE_WORKER_HOME}/${6#*:}" ;;
  describe) echo "${FAKE_ACCELERATOR_TYPE:-v4-8}" ;;
esac
"""


def launch(script: str, env: dict, *args: str, dry_run: bool = True) -> subprocess.CompletedProcess:
  full_env = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARIABLES and not k.startswith("SLURM_")}
  full_env.update(env)
  if dry_run:
    full_env["DRY_RUN"] = "1"
  return subprocess.run([os.path.join(LAUNCH, script), *args], env=full_env, capture_output=True, text=True,
                        timeout=60, cwd=tempfile.gettempdir())


def printed(result: subprocess.CompletedProcess) -> list[str]:
  return [line for line in result.stdout.splitlines() if line.startswith("+ ")]


class SyntaxTest(parameterized.TestCase):

  def test_every_script_parses_and_is_executable(self):
    self.assertGreaterEqual(len(SCRIPTS), 7)
    for script in SCRIPTS:
      result = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
      self.assertEqual(result.returncode, 0, f"{script}: {result.stderr}")
      if not script.endswith("common.sh"):
        self.assertTrue(os.stat(script).st_mode & stat.S_IXUSR, f"{script} is not executable")
      with open(script) as f:
        text = f.read()
      self.assertIn("set -euo pipefail" if not script.endswith("common.sh") else "DRY_RUN", text)
      self.assertIn("Usage" if not script.endswith("common.sh") else "run()", text)

  def test_shellcheck_finds_nothing(self):
    if shutil.which("shellcheck") is None:
      self.skipTest("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "-x", *SCRIPTS], capture_output=True, text=True, cwd=test_util.REPO)
    self.assertEqual(result.returncode, 0, result.stdout)


class DryRunTest(parameterized.TestCase):

  def test_create_a_pod_slice(self):
    result = launch("tpu_create.sh", {**POD, "ACCELERATOR_TYPE": "v4-32", "SPOT": "1"})
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(printed(result), ["+ gcloud compute tpus tpu-vm create debias-pod --zone=us-central2-b "
                                       "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"])
    self.assertIn("multi-host pod slice", result.stderr)

  @parameterized.parameters(("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"),
                            ("v6e-8", "v2-alpha-tpuv6e"), ("v4-8", "tpu-ubuntu2204-base"))
  def test_create_picks_the_software_version(self, accelerator, version):
    result = launch("tpu_create.sh", {"TPU_NAME": "one", "ZONE": "us-west4-a", "ACCELERATOR_TYPE": accelerator,
                                      "PROJECT": "my-project-1"})
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(printed(result), [f"+ gcloud compute tpus tpu-vm create one --zone=us-west4-a "
                                       f"--project=my-project-1 --accelerator-type={accelerator} "
                                       f"--version={version}"])
    self.assertIn("single-host", result.stderr)

  def test_setup_clones_on_every_worker(self):
    result = launch("tpu_setup.sh", {**POD, "REPO_URL": "https://github.com/owner/debias_jax.git",
                                     "REPO_REF": "v1.0"})
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(printed(result), [
        "+ gcloud compute tpus tpu-vm ssh debias-pod --zone=us-central2-b --worker=all "
        r"--command=set\ -e\;\ rm\ -rf\ debias_jax\;\ git\ clone\ --quiet\ --depth\ 1\ --branch\ v1.0\ "
        r"https://github.com/owner/debias_jax.git\ debias_jax\;\ bash\ debias_jax/launch/install.sh\ tpu"])

  def test_run_passes_the_config_workdir_and_arguments_to_every_worker(self):
    result = launch("tpu_run.sh", {**POD, "WORKDIR": "gs://bucket/run1", "CONFIG": "configs/tiny.py"},
                    "--config.train.num_steps=10", "--config.loss.weighting=constant")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(printed(result), [
        "+ gcloud compute tpus tpu-vm ssh debias-pod --zone=us-central2-b --worker=all "
        r"--command=cd\ debias_jax\ \&\&\ ~/venvs/debias_jax/bin/python\ -m\ debias_jax.main\ --mode=train\ "
        r"--config=configs/tiny.py\ --workdir=gs://bucket/run1\ --distributed\ --config.train.num_steps=10\ "
        r"--config.loss.weighting=constant"])

  def test_delete(self):
    result = launch("tpu_delete.sh", POD)
    self.assertEqual(printed(result), ["+ gcloud compute tpus tpu-vm delete debias-pod --zone=us-central2-b --quiet"])

  def test_gpu_single_host(self):
    result = launch("gpu_run.sh", {"WORKDIR": "/runs/a", "PYTHON": "/opt/py/bin/python"},
                    "--config.train.num_steps=5")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(printed(result), ["+ env JAX_PLATFORMS=cuda /opt/py/bin/python -m debias_jax.main --mode=train "
                                       "--config=configs/default.py --workdir=/runs/a --config.train.num_steps=5"])

  def test_benchmark_rows(self):
    result = launch("benchmark_rows.sh", {"PYTHON": "py", "OUT": "/o", "BATCH_256": "16"})
    self.assertEqual(result.returncode, 0, result.stderr)
    commands = printed(result)
    self.assertEqual(commands[0], "+ mkdir -p /o")
    self.assertEqual([c.split("--config ")[1].split()[0] for c in commands[1:]],
                     ["configs/default.py", "configs/paper/cifar10.py", "configs/paper/ffhq256.py"])
    self.assertTrue(all(c.startswith("+ py -m debias_jax.benchmark") for c in commands[1:]))
    self.assertIn("--config.model.dtype=bfloat16 --config.train.batch_size=16", commands[3])
    self.assertTrue(commands[3].endswith("--output /o/ffhq256.json"))
    only = launch("benchmark_rows.sh", {"PYTHON": "py", "ROWS": "cifar10"})
    self.assertEqual(len(printed(only)), 2)

  def test_gpu_hosts_joined_by_a_coordinator_after_installing(self):
    result = launch("gpu_run.sh", {"WORKDIR": "/shared/a", "INSTALL": "1", "CUDA": "cuda13", "VENV": "/opt/v",
                                   "COORDINATOR": "10.0.0.1:1234", "NUM_PROCESSES": "4", "PROCESS_ID": "3"})
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(printed(result), [
        f"+ env VENV=/opt/v {LAUNCH}/install.sh cuda13",
        "+ env JAX_PLATFORMS=cuda /opt/v/bin/python -m debias_jax.main --mode=train --config=configs/default.py "
        "--workdir=/shared/a --distributed --coordinator=10.0.0.1:1234 --num_processes=4 --process_id=3"])

  def test_gpu_under_slurm_lets_jax_read_slurm(self):
    result = launch("gpu_run.sh", {"WORKDIR": "/shared/a", "PYTHON": "python3", "SLURM_JOB_ID": "7",
                                   "SLURM_NTASKS": "16", "SLURM_PROCID": "5"})
    self.assertEqual(printed(result), ["+ env JAX_PLATFORMS=cuda python3 -m debias_jax.main --mode=train "
                                       "--config=configs/default.py --workdir=/shared/a --distributed"])
    self.assertIn("SLURM task 5 of 16", result.stderr)

  @parameterized.parameters(("tpu", r".\[tpu\]"), ("cuda12", r".\[cuda12\]"), ("cuda13", r".\[cuda13\]"),
                            ("cpu", "."))
  def test_install_pins_the_packages_and_adds_the_backend_extra(self, backend, package):
    venv = tempfile.mkdtemp()
    os.makedirs(os.path.join(venv, "bin"))
    os.symlink(sys.executable, os.path.join(venv, "bin", "python"))
    result = launch("install.sh", {"VENV": venv}, backend)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn(f"reusing {venv}", result.stderr)
    self.assertEqual(printed(result)[:2], [f"+ {venv}/bin/python -m pip install --quiet --upgrade pip",
                                           f"+ {venv}/bin/python -m pip install --quiet -c constraints.txt -e "
                                           f"{package}"])

  def test_every_accelerator_backend_is_an_extra_of_the_package_with_its_jax(self):
    with open(os.path.join(test_util.REPO, "pyproject.toml"), "rb") as f:
      project = tomllib.load(f)["project"]
    jax = [r for r in project["dependencies"] if r.startswith("jax")]
    self.assertLen(jax, 1)
    for backend in ("tpu", "cuda12", "cuda13"):
      # The extra is JAX's own extra at the package's JAX version (so `pip install -e .[tpu]` cannot pick another).
      self.assertEqual(project["optional-dependencies"][backend], [jax[0].replace("jax", f"jax[{backend}]", 1)])

  def test_install_builds_a_venv_with_a_new_enough_python(self):
    venv = os.path.join(tempfile.mkdtemp(), "v")
    result = launch("install.sh", {"VENV": venv, "PYTHON": sys.executable}, "cpu")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(printed(result)[0], f"+ {sys.executable} -m venv {venv}")


  def test_install_gets_python_through_uv_where_the_system_python_is_too_old(self):
    # A machine whose only python3 is 3.10 (as on TPU VM images): a PATH with a stand-in python3 and the tools
    # the script needs.
    bin_dir = tempfile.mkdtemp()
    for tool in ("bash", "dirname", "basename"):
      os.symlink(shutil.which(tool), os.path.join(bin_dir, tool))
    with open(os.path.join(bin_dir, "python3"), "w") as f:
      f.write('#!/bin/sh\ncase "$*" in\n  "-c "*) exit 1 ;;\n  "-m pip --version") echo pip 22.0 ;;\n'
              '  "-m site --user-base") echo /home/me/.local ;;\n  *) exit 3 ;;\nesac\n')
    os.chmod(os.path.join(bin_dir, "python3"), 0o755)
    venv = os.path.join(tempfile.mkdtemp(), "v")
    result = launch("install.sh", {"VENV": venv, "PATH": bin_dir}, "tpu")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(printed(result)[:2], ["+ python3 -m pip install --user --quiet uv",
                                           f"+ /home/me/.local/bin/uv venv --seed --python 3.11 {venv}"])


class ValidationTest(parameterized.TestCase):

  @parameterized.parameters(
      ("tpu_create.sh", {"ZONE": "us-central2-b"}, (), "TPU_NAME is not set"),
      ("tpu_create.sh", {"TPU_NAME": "Bad_Name", "ZONE": "us-central2-b"}, (), "TPU_NAME='Bad_Name' is not valid"),
      ("tpu_create.sh", {**POD, "ACCELERATOR_TYPE": "v9-8"}, (), "ACCELERATOR_TYPE='v9-8' is not valid"),
      ("tpu_create.sh", {**POD, "ZONE": "central"}, (), "ZONE='central' is not valid"),
      ("tpu_create.sh", {**POD, "SPOT": "yes"}, (), "SPOT='yes' must be 0 or 1"),
      ("tpu_create.sh", {**POD, "SPOT": "1", "RESERVED": "1"}, (), "exclude each other"),
      ("tpu_setup.sh", {**POD, "REMOTE_DIR": "../x"}, (), "REMOTE_DIR='../x'"),
      ("tpu_setup.sh", {**POD, "REPO_URL": "file:///etc"}, (), "REPO_URL='file:///etc' is not valid"),
      ("tpu_run.sh", POD, (), "WORKDIR is not set"),
      ("tpu_run.sh", {**POD, "WORKDIR": "/home/me/run", "ACCELERATOR_TYPE": "v4-32"}, (),
       "v4-32 pod slice: its workers need one shared workdir; use WORKDIR=gs://"),
      ("tpu_run.sh", {**POD, "WORKDIR": "gs://b/r", "CONFIG": "configs/nope.py"}, (), "CONFIG=configs/nope.py: no such"),
      ("tpu_run.sh", {**POD, "WORKDIR": "gs://b/r", "MODE": "fit"}, (), "MODE='fit' is not valid"),
      ("tpu_run.sh", {**POD, "ACTION": "restart"}, (), "ACTION='restart' is not valid"),
      ("gpu_run.sh", {}, (), "WORKDIR is not set"),
      ("gpu_run.sh", {"WORKDIR": "/w", "COORDINATOR": "h:1"}, (), "NUM_PROCESSES is not set"),
      ("gpu_run.sh", {"WORKDIR": "/w", "COORDINATOR": "h:1", "NUM_PROCESSES": "2", "PROCESS_ID": "2"}, (),
       "PROCESS_ID=2 must be below NUM_PROCESSES=2"),
      ("gpu_run.sh", {"WORKDIR": "/w", "CUDA": "cuda11"}, (), "CUDA='cuda11' is not valid"),
      ("benchmark_rows.sh", {"ROWS": "cifar100"}, (), "ROWS='cifar100' is not valid"),
      ("benchmark_rows.sh", {"BATCH_256": "0"}, (), "BATCH_256='0' is not valid"),
      ("install.sh", {}, ("rocm",), "unknown backend 'rocm'"),
      ("install.sh", {}, (), "name the backend"),
  )
  def test_bad_input_is_named(self, script, env, args, message):
    result = launch(script, env, *args)
    self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
    self.assertIn(message, result.stderr)
    self.assertEqual(printed(result), [])

  def test_gpu_run_without_an_environment_says_how_to_install(self):
    result = launch("gpu_run.sh", {"WORKDIR": "/w", "VENV": "/nonexistent/v"}, dry_run=False)
    self.assertEqual(result.returncode, 2)
    self.assertIn("no Python at /nonexistent/v/bin/python: install first (INSTALL=1)", result.stderr)


class FakeTpuTest(absltest.TestCase):
  """tpu_setup.sh, tpu_run.sh (DETACH=1, ACTION=logs, ACTION=stop) for real, against the stand-in gcloud."""

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
    bin_dir = os.path.join(self.tmp, "bin")
    os.makedirs(bin_dir)
    gcloud = os.path.join(bin_dir, "gcloud")
    with open(gcloud, "w") as f:
      f.write(FAKE_GCLOUD)
    os.chmod(gcloud, 0o755)
    self.worker = os.path.join(self.tmp, "worker")
    os.makedirs(os.path.join(self.worker, "venvs"))
    # The worker's environment is this one (a real setup would have installed it).
    os.symlink(os.path.dirname(os.path.dirname(sys.executable)), os.path.join(self.worker, "venvs", "debias_jax"))
    self.calls = os.path.join(self.tmp, "gcloud_calls.txt")
    self.env = {**POD, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_WORKER_HOME": self.worker,
                "FAKE_GCLOUD_LOG": self.calls, "JAX_PLATFORMS": "cpu"}

  def test_setup_copies_this_checkout_and_installs_it(self):
    result = launch("tpu_setup.sh", {**self.env, "FAKE_REMOTE_DRY_RUN": "1"}, dry_run=False)
    self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
    copy = os.path.join(self.worker, "debias_jax")
    tracked = subprocess.run(["git", "ls-files"], cwd=test_util.REPO, capture_output=True, text=True).stdout.split()
    for path in tracked:
      if os.path.isfile(os.path.join(test_util.REPO, path)):
        self.assertTrue(os.path.isfile(os.path.join(copy, path)), path)
    self.assertEqual(glob.glob(os.path.join(copy, "**", "__pycache__"), recursive=True), [])
    self.assertFalse(os.path.exists(os.path.join(self.worker, "debias_jax.tar.gz")))
    with open(self.calls) as f:
      calls = f.read().splitlines()
    self.assertEqual([c.split()[3] for c in calls], ["scp", "ssh"])
    self.assertIn("--worker=all", calls[0])
    # install.sh ran on the worker (printing, under the stand-in's DRY_RUN) in the copied tree.
    self.assertIn(f"reusing {self.worker}/venvs/debias_jax", result.stderr)
    self.assertIn(r"-m pip install --quiet -c constraints.txt -e .\[tpu\]", result.stdout)

  def test_a_detached_run_trains_and_stops_on_request_with_a_checkpoint(self):
    shutil.copytree(test_util.REPO, os.path.join(self.worker, "debias_jax"),
                    ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.egg-info"))
    workdir = os.path.join(self.tmp, "run")
    args = ["--config.model.channel_mult=(1,)", "--config.model.attention_resolutions=()",
            "--config.train.num_steps=1000000", "--config.train.log_every=1", "--config.train.checkpoint_every=0",
            "--config.train.sample_every=0"]
    env = {**self.env, "WORKDIR": workdir, "CONFIG": "configs/tiny.py", "DETACH": "1", "DISTRIBUTED": "0"}
    result = launch("tpu_run.sh", env, *args, dry_run=False)
    self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
    self.assertIn("started, log in ~/debias_jax_logs/run.log", result.stdout)
    with open(os.path.join(self.worker, "debias_jax_logs", "run.pid")) as f:
      pid = int(f.read())
    try:
      metrics = os.path.join(workdir, "metrics.jsonl")
      deadline = time.monotonic() + 120
      while not os.path.exists(metrics) and time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
      self.assertTrue(os.path.exists(metrics), self._log())
      stop = launch("tpu_run.sh", {**self.env, "ACTION": "stop"}, dry_run=False)
      self.assertEqual(stop.returncode, 0, stop.stderr)
      self.assertIn("stopping (a checkpoint is saved first)", stop.stdout)
      deadline = time.monotonic() + 60
      while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
      self.assertFalse(_alive(pid), "the run did not stop within 60 s of SIGTERM")
    finally:
      if _alive(pid):
        os.kill(pid, 9)
    log = self._log(full=True)
    self.assertIn("Stopped at step", log)
    stopped_at = int(log.split("Stopped at step ")[1].split()[0])
    with open(metrics) as f:
      self.assertEqual(json.loads(f.read().splitlines()[-1])["step"], stopped_at)
    self.assertTrue(os.path.isdir(os.path.join(workdir, "checkpoints", str(stopped_at))), log[-3000:])
    logs = launch("tpu_run.sh", {**self.env, "ACTION": "logs", "LINES": "5"}, dry_run=False)
    self.assertEqual(logs.stdout.splitlines(), log.splitlines()[-5:])

  def _log(self, full: bool = False) -> str:
    path = os.path.join(self.worker, "debias_jax_logs", "run.log")
    if not os.path.exists(path):
      return "(no log)"
    with open(path) as f:
      text = f.read()
    return text if full else text[-3000:]


def _alive(pid: int) -> bool:
  """Running and not a zombie (an orphaned child may stay unreaped in a container)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


if __name__ == "__main__":
  absltest.main()
