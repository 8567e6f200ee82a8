"""pytest's entry: the test environment (test_env), set before any test module imports JAX."""

import test_env  # noqa: F401  pylint: disable=unused-import
