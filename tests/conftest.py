"""Test-session settings, applied before JAX starts (also inherited by the subprocesses tests launch).

The suite compiles many small programs on 2 CPU cores, so compile time dominates: a persistent compilation
cache lets repeated programs (the same tiny train step in several runs) compile once, and lighter LLVM
optimisation halves each compile at a small cost in run time.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "debias_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
     "--xla_llvm_disable_expensive_passes=true"]).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
