"""`--config` paths that work from any folder: a `configs/...` path that does not exist where the command runs
names the config shipped inside the package (debias_jax/configs/), so the README's commands also work from
another working directory and from an installed wheel.

`DEFINE_config_file` is ml_collections' flag of the same name (`--config.a.b=value` overrides and the
`path:argument` suffix unchanged) whose path goes through `resolve` first.
"""

from __future__ import annotations

import ast
import os

from absl import flags
from ml_collections import config_flags

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# The prefixes a packaged config may be named by: configs/x.py (the repository's link), the package's own folder.
_PREFIXES = (("configs",), ("debias_jax", "configs"))


class ConfigFileError(ValueError):
  """A --config path that names no file here and no packaged config (a ValueError, so absl reports it as a flag
  error)."""


def available() -> list[str]:
  """The packaged configs as `configs/<name>.py`: every file under debias_jax/configs/ with a get_config()."""
  names = []
  for root, dirs, files in os.walk(PACKAGE_DIR):
    dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
    for file in sorted(files):
      if file.endswith(".py") and not file.startswith("_"):
        with open(os.path.join(root, file), encoding="utf-8") as f:
          tree = ast.parse(f.read())
        if any(isinstance(node, ast.FunctionDef) and node.name == "get_config" for node in tree.body):
          names.append("/".join(["configs", *_parts(os.path.relpath(os.path.join(root, file), PACKAGE_DIR))]))
  return names


def _parts(path: str) -> list[str]:
  return [p for p in os.path.normpath(path).replace(os.sep, "/").split("/") if p not in ("", ".")]


def packaged_path(path: str) -> str | None:
  """The packaged config (a file under debias_jax/configs/ with a get_config) that a relative `configs/x.py`,
  `debias_jax/configs/x.py` or `x.py` names, else None."""
  if os.path.isabs(path):
    return None
  parts = _parts(path)
  for prefix in _PREFIXES:
    if tuple(parts[:len(prefix)]) == prefix:
      parts = parts[len(prefix):]
      break
  if not parts or ".." in parts:
    return None
  return os.path.join(PACKAGE_DIR, *parts) if "/".join(["configs", *parts]) in available() else None


def resolve(value: str) -> str:
  """`path[:argument]` as ml_collections reads it, with `path` replaced by the packaged config it names when no
  such file exists relative to the working directory. Raises ConfigFileError listing the packaged configs."""
  path, sep, argument = value.partition(":")   # ml_collections splits at the first colon too
  if os.path.isfile(path):
    return value
  packaged = packaged_path(path)
  if packaged is not None:
    return packaged + sep + argument
  where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
  raise ConfigFileError(
      f"No config file {path!r}{where}, and no config of that name ships with debias_jax. Give the path of a "
      f"config file, or one of the packaged configs, which work from any folder: {', '.join(available())}.")


class _ResolvingParser(flags.ArgumentParser):
  """ml_collections' config-file parser, given the resolved path."""

  def __init__(self, parser):
    self._parser = parser

  def parse(self, argument):
    return self._parser.parse(resolve(argument) if isinstance(argument, str) else argument)

  def flag_type(self):
    return self._parser.flag_type()


def DEFINE_config_file(name: str, default: str | None = None, help_string: str = "Path to a config file.",  # pylint: disable=invalid-name
                       flag_values: flags.FlagValues = flags.FLAGS, **kwargs) -> flags.FlagHolder:
  """ml_collections.config_flags.DEFINE_config_file (same arguments) with packaged-config resolution."""
  holder = config_flags.DEFINE_config_file(name, default, help_string, flag_values=flag_values, **kwargs)
  flag = flag_values[name]
  flag.parser = _ResolvingParser(flag.parser)
  return holder
