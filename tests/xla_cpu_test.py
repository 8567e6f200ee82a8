"""The entry points' XLA:CPU settings: 512-bit vectors on AVX-512 CPUs and the cores as devices, never overriding
the user's choice."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import os
import tempfile

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


if __name__ == "__main__":
  absltest.main()
