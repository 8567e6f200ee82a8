"""Process set-up shared by the command-line entry points (main, compare): done once, before any JAX work."""

from __future__ import annotations

import os

from absl import logging
import jax

from debias_jax import logs

DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "debias_jax", "xla")
NO_CACHE = "none"


def enable_compilation_cache(directory: str) -> str | None:
  """JAX's persistent compilation cache in `directory` (local or gs://): reruns, resumed runs and modes sharing
  programs load them instead of compiling. '' = JAX_COMPILATION_CACHE_DIR if set, else the default folder;
  'none' = off. Returns the folder used."""
  if directory == NO_CACHE:
    return None
  directory = directory or os.environ.get("JAX_COMPILATION_CACHE_DIR", "") or DEFAULT_COMPILATION_CACHE
  directory = os.path.expanduser(directory)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  logging.info("Persistent compilation cache: %s (--compilation_cache=none turns it off).", directory)
  return directory


def setup(compilation_cache: str = "") -> None:
  """Orbax's INFO lines hidden and the compilation cache on. (TensorFlow is imported only by the tfds source,
  which first hides every GPU from it.)"""
  logs.quiet_orbax()
  enable_compilation_cache(compilation_cache)
