"""The test environment, set before JAX starts. Every test file imports this module first (as `import test_env`),
and so does conftest.py, so that `pytest` and `python tests/x_test.py` (absltest's own way) run alike; the
subprocesses that tests start inherit it.

The suite compiles many small programs on 2 CPU cores, so compile time dominates: a persistent compilation cache
lets repeated programs (the same tiny train step in several runs) compile once, and lighter LLVM optimisation
halves each compile at a small cost in run time.

A test file run as a script has tests/ on sys.path rather than the repository: the repository is added, so that
`tests.*`, `configs.*` and this checkout's `debias_jax` import as they do under pytest.
"""

import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if REPO not in {os.path.abspath(p or os.curdir) for p in sys.path}:
  sys.path.insert(0, REPO)

XLA_TEST_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
DEFAULTS = {
    "JAX_PLATFORMS": "cpu",
    "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(), "debias_jax_test_xla_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}

for _name, _value in DEFAULTS.items():
  os.environ.setdefault(_name, _value)
# Appended once, also when a subprocess that inherited them imports this module again.
_flags = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(_flags + [f for f in XLA_TEST_FLAGS if f not in _flags])
