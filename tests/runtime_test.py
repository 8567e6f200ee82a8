"""runtime: the persistent compilation cache folder each entry point gets, and 'none'."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import os
import tempfile
from unittest import mock

from absl.testing import absltest
import jax

from debias_jax import runtime


class CompilationCacheTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    before = jax.config.jax_compilation_cache_dir
    self.addCleanup(lambda: jax.config.update("jax_compilation_cache_dir", before))

  def test_given_folder_environment_and_default(self):
    with tempfile.TemporaryDirectory() as tmp:
      self.assertEqual(runtime.enable_compilation_cache(tmp), tmp)
      self.assertEqual(jax.config.jax_compilation_cache_dir, tmp)
      with mock.patch.dict(os.environ, {"JAX_COMPILATION_CACHE_DIR": os.path.join(tmp, "env")}):
        self.assertEqual(runtime.enable_compilation_cache(""), os.path.join(tmp, "env"))
    with mock.patch.dict(os.environ, {"JAX_COMPILATION_CACHE_DIR": ""}):
      self.assertEqual(runtime.enable_compilation_cache(""),
                       os.path.expanduser(runtime.DEFAULT_COMPILATION_CACHE))

  def test_none_leaves_the_cache_as_it_is(self):
    jax.config.update("jax_compilation_cache_dir", "/kept")
    self.assertIsNone(runtime.enable_compilation_cache(runtime.NO_CACHE))
    self.assertEqual(jax.config.jax_compilation_cache_dir, "/kept")


if __name__ == "__main__":
  absltest.main()
