"""XLA:CPU settings for this project's programs, applied by the entry points before JAX starts.

Cores as devices: XLA:CPU runs a small model's operations on one thread (the default config kept 0.9 of 2 cores
busy), so the entry points expose the cores as separate CPU devices and split each batch over them, as over the
chips of a TPU: the default config trained 2.0-2.1x faster on 2 cores (alternating runs, 2026-12-01). As with
any change of the device count, results differ in the last bits (the gradient is summed in another order); a run
is reproducible with the same count. An explicit --xla_force_host_platform_device_count in XLA_FLAGS wins.

LLVM vectorises XLA:CPU's loops (elementwise fusions, reductions) 256 bits wide by default even on AVX-512
processors. 512 bits made the training step 6-19% faster on an AVX-512 Xeon (default config and CIFAR-10,
alternating runs; see the README's throughput section). Values may differ in the last bits, as with any change of
vector width; a run is reproducible under the same settings.

Freed memory kept for reuse (reuse_freed_memory): see there; it changes no value, only where buffers live.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os

VECTOR_WIDTH_FLAG = "--xla_cpu_prefer_vector_width"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def usable_cores() -> int:
  """The cores this process may run on (its CPU affinity, e.g. under taskset or a container's CPU set)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:   # not on Linux
    return os.cpu_count() or 1


def cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str:
  """The CPU's model name, for reports of where a figure was measured ("" where /proc/cpuinfo is missing)."""
  try:
    with open(cpuinfo_path) as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  except OSError:
    return ""


def device_count_for(batch_sizes, cores: int) -> int:
  """The most CPU devices, at most `cores`, that divide every one of the global batch sizes."""
  return max(n for n in range(1, max(1, cores) + 1) if all(int(b) % n == 0 for b in batch_sizes))


def cores_as_devices(batch_sizes, environ=os.environ, cores: int | None = None) -> int | None:
  """Adds --xla_force_host_platform_device_count=N to XLA_FLAGS (N from device_count_for) unless the user set it.

  Only the CPU backend reads it (a GPU or TPU host keeps its accelerators as the devices). Effective only before
  JAX creates its CPU backend; returns N, or None when left alone.
  """
  flags = environ.get("XLA_FLAGS", "")
  if DEVICE_COUNT_FLAG in flags:
    return None
  count = device_count_for(batch_sizes, usable_cores() if cores is None else cores)
  if count > 1:
    environ["XLA_FLAGS"] = f"{flags} {DEVICE_COUNT_FLAG}={count}".strip()
  return count


def has_avx512(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
  try:
    with open(cpuinfo_path) as f:
      return any(line.startswith("flags") and " avx512f" in line for line in f)
  except OSError:
    return False


def prefer_wide_vectors(environ=os.environ, cpuinfo_path: str = "/proc/cpuinfo") -> bool:
  """Adds --xla_cpu_prefer_vector_width=512 to XLA_FLAGS on AVX-512 CPUs unless the user chose a width.

  Effective only before JAX creates its CPU backend (XLA reads XLA_FLAGS once); returns whether it was added.
  """
  flags = environ.get("XLA_FLAGS", "")
  if VECTOR_WIDTH_FLAG in flags or not has_avx512(cpuinfo_path):
    return False
  environ["XLA_FLAGS"] = f"{flags} {VECTOR_WIDTH_FLAG}=512".strip()
  return True


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_reusing_freed_memory = False


def runs_on_cpu_only(environ=os.environ) -> bool:
  """Whether JAX will run on the CPU: JAX_PLATFORMS names only "cpu", or is unset and no accelerator plugin (a
  `jax_plugins` entry point such as jax-cuda12-plugin, or libtpu) is installed."""
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms:
    return {p.strip() for p in platforms.split(",")} == {"cpu"}
  return not importlib.metadata.entry_points(group="jax_plugins") and importlib.util.find_spec("libtpu") is None


def _glibc():
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version   # pylint: disable=pointless-statement  # AttributeError where not glibc
    return libc
  except (OSError, AttributeError):
    return None


def reuse_freed_memory(environ=os.environ, libc=None) -> bool:
  """On CPU-only runs with glibc, makes malloc keep freed memory mapped for reuse; returns whether it did.

  XLA:CPU allocates each execution's temporary buffer with malloc (1.1 GB per device for the CIFAR-10 train step
  at batch 32 over two devices). glibc serves a size that large from a fresh mmap and unmaps it on free, so each
  step faults its temporaries in anew, a page at a time, and the kernel zero-fills every page: half a million
  faults and 1.1-1.3 s of kernel time per step; without them the step ran 1.57x as fast (AMD EPYC, 2 vCPUs,
  2026-12-02; the README's throughput section). With one malloc arena (XLA's threads would otherwise get arenas of
  their own, which fall back to mmap for large sizes), no mmap and no trimming, freed buffers return to the heap
  and stay mapped: no faults after the first step. The cost is that the process keeps its peak memory. Must run
  before JAX starts its backend: a thread picks its malloc arena at its first allocation. Accelerator hosts are
  left alone (their host threads, e.g. input pipelines, would share one arena for nothing), and so is a user's own
  malloc setting (any MALLOC_* variable or glibc.malloc tunable in the environment; e.g. MALLOC_ARENA_MAX=8 keeps
  glibc's defaults).
  """
  global _reusing_freed_memory
  users_choice = any(k.startswith("MALLOC_") for k in environ) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")
  libc = (libc or _glibc()) if runs_on_cpu_only(environ) and not users_choice else None
  if libc is not None:
    # each mallopt returns 1 on success; -1 for the trim threshold means never trim
    _reusing_freed_memory = all([libc.mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))])
  return _reusing_freed_memory


def reusing_freed_memory() -> bool:
  """Whether reuse_freed_memory took effect in this process (for benchmark reports)."""
  return _reusing_freed_memory
