"""The entry points' XLA:CPU settings: 512-bit vectors on AVX-512 CPUs and the cores as devices, never overriding
the user's choice; malloc keeping freed memory mapped on CPU-only runs."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest

from debias_jax import xla_cpu


def cpuinfo(flags: str) -> str:
  path = os.path.join(tempfile.mkdtemp(), "cpuinfo")
  with open(path, "w") as f:
    f.write(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
  return path


class PreferWideVectorsTest(absltest.TestCase):

  def test_added_on_avx512_after_the_users_flags(self):
    environ = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    self.assertTrue(xla_cpu.prefer_wide_vectors(environ, cpuinfo("avx512f avx512bw")))
    self.assertEqual(environ["XLA_FLAGS"], "--xla_cpu_multi_thread_eigen=false --xla_cpu_prefer_vector_width=512")
    self.assertFalse(xla_cpu.prefer_wide_vectors(environ, cpuinfo("avx512f")))  # added once
    self.assertEqual(environ["XLA_FLAGS"].count("prefer_vector_width"), 1)

  def test_set_when_there_were_no_flags(self):
    environ = {}
    self.assertTrue(xla_cpu.prefer_wide_vectors(environ, cpuinfo("avx512f")))
    self.assertEqual(environ, {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=512"})

  def test_left_alone_without_avx512_or_cpuinfo_or_when_the_user_chose(self):
    for environ, path in (({}, cpuinfo("avx512_vnni")), ({}, "/nonexistent/cpuinfo"),
                          ({"XLA_FLAGS": "--xla_cpu_prefer_vector_width=256"}, cpuinfo("avx512f"))):
      before = dict(environ)
      self.assertFalse(xla_cpu.prefer_wide_vectors(environ, path))
      self.assertEqual(environ, before)


class CoresAsDevicesTest(absltest.TestCase):

  def test_the_most_devices_that_divide_every_batch(self):
    self.assertEqual(xla_cpu.device_count_for((64, 64, 128), cores=2), 2)
    self.assertEqual(xla_cpu.device_count_for((64, 64, 128), cores=16), 16)
    self.assertEqual(xla_cpu.device_count_for((48, 36), cores=16), 12)
    self.assertEqual(xla_cpu.device_count_for((7, 64), cores=8), 1)
    self.assertEqual(xla_cpu.device_count_for((64,), cores=0), 1)

  def test_added_after_the_users_flags(self):
    environ = {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=512"}
    self.assertEqual(xla_cpu.cores_as_devices((32, 16), environ, cores=4), 4)
    self.assertEqual(environ["XLA_FLAGS"],
                     "--xla_cpu_prefer_vector_width=512 --xla_force_host_platform_device_count=4")

  def test_left_alone_on_one_core_for_odd_batches_or_when_the_user_chose(self):
    for environ, batches, cores, expected in (({}, (64,), 1, 1), ({}, (63,), 2, 1),
                                              ({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
                                               (64,), 2, None)):
      before = dict(environ)
      self.assertEqual(xla_cpu.cores_as_devices(batches, environ, cores=cores), expected)
      self.assertEqual(environ, before)

  def test_the_cpu_model_named_in_reports(self):
    self.assertEqual(xla_cpu.cpu_model(cpuinfo("avx512f")), "Test CPU")
    self.assertEqual(xla_cpu.cpu_model("/nonexistent/cpuinfo"), "")

  def test_the_cores_this_process_may_use(self):
    self.assertEqual(xla_cpu.usable_cores(), len(os.sched_getaffinity(0)))


class FakeLibc:

  def __init__(self, result=1):
    self.calls, self.result = [], result

  def mallopt(self, param, value):
    self.calls.append((param, value))
    return self.result


# Allocates, fills and frees 256 MiB twice on a new thread (as XLA:CPU's execution threads do) and prints the page
# faults of the second round: a freed buffer that stayed mapped costs none.
_FAULTS_SCRIPT = """
import ctypes, resource, sys, threading
from debias_jax import xla_cpu
applied = xla_cpu.reuse_freed_memory({"JAX_PLATFORMS": "cpu"}) if sys.argv[1] == "reuse" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
faults = []
def allocate_twice(size=256 << 20):
  for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=allocate_twice)
thread.start()
thread.join()
print(applied, faults[1])
"""


class ReuseFreedMemoryTest(absltest.TestCase):

  def test_which_runs_are_cpu_only(self):
    self.assertTrue(xla_cpu.runs_on_cpu_only({"JAX_PLATFORMS": "cpu"}))
    self.assertFalse(xla_cpu.runs_on_cpu_only({"JAX_PLATFORMS": "tpu"}))
    self.assertFalse(xla_cpu.runs_on_cpu_only({"JAX_PLATFORMS": "cuda,cpu"}))
    with mock.patch.object(xla_cpu.importlib.metadata, "entry_points", return_value=["jax_cuda12_plugin"]):
      self.assertFalse(xla_cpu.runs_on_cpu_only({}))
    with mock.patch.object(xla_cpu.importlib.metadata, "entry_points", return_value=[]), \
         mock.patch.object(xla_cpu.importlib.util, "find_spec", return_value=None):
      self.assertTrue(xla_cpu.runs_on_cpu_only({}))

  def test_mallopt_settings_on_cpu_only_runs(self):
    libc = FakeLibc()
    with mock.patch.object(xla_cpu, "_reusing_freed_memory", False):
      self.assertFalse(xla_cpu.reuse_freed_memory({"JAX_PLATFORMS": "tpu"}, libc))
      self.assertEqual(libc.calls, [])
      self.assertFalse(xla_cpu.reusing_freed_memory())
      self.assertTrue(xla_cpu.reuse_freed_memory({"JAX_PLATFORMS": "cpu"}, libc))
      self.assertEqual(libc.calls, [(xla_cpu.M_ARENA_MAX, 1), (xla_cpu.M_MMAP_MAX, 0), (xla_cpu.M_TRIM_THRESHOLD, -1)])
      self.assertTrue(xla_cpu.reusing_freed_memory())
    with mock.patch.object(xla_cpu, "_reusing_freed_memory", False):
      self.assertFalse(xla_cpu.reuse_freed_memory({"JAX_PLATFORMS": "cpu"}, FakeLibc(result=0)))   # refused
      for users_choice in ({"MALLOC_ARENA_MAX": "8"}, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}):
        libc = FakeLibc()
        self.assertFalse(xla_cpu.reuse_freed_memory({"JAX_PLATFORMS": "cpu", **users_choice}, libc))
        self.assertEqual(libc.calls, [])

  def test_a_freed_buffer_is_reused_without_page_faults(self):
    def second_round_faults(mode):
      out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True)
      applied, faults = out.stdout.split()
      return applied == "True", int(faults)
    applied, faults = second_round_faults("reuse")
    self.assertTrue(applied)
    self.assertLess(faults, 16)       # 0 measured; a page or two of the interpreter's own may land in the window
    applied, faults = second_round_faults("default")
    self.assertFalse(applied)
    self.assertGreater(faults, 100)   # glibc's default: unmapped on free, faulted in again (4 KiB or 2 MiB pages)


if __name__ == "__main__":
  absltest.main()
