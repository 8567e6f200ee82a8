"""Tests. tests/ itself goes on sys.path, so that `import test_env` (every test file's first import) resolves when
a test module is imported as `tests.x` (pytest, subprocesses) as it does when the file runs as a script."""

import os
import sys

if os.path.dirname(os.path.abspath(__file__)) not in {os.path.abspath(p or os.curdir) for p in sys.path}:
  sys.path.append(os.path.dirname(os.path.abspath(__file__)))
