"""ConfigError, the error of a config field with a bad value.

A module of its own, importing nothing, so that the modules which read a config (experiments/plan.py) and
config_checks.py, which validates configs through them, can both raise it without importing each other.
"""


class ConfigError(ValueError):
  """A config field with a bad value; the message names the field and the fix."""
