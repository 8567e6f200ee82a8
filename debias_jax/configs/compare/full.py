"""The fuller comparison (about two hours on 2 CPU cores: gmm 69 and digits 29 minutes measured on
2026-12-02, photo_patches 24 on 2026-11-30): digits, photo patches and the Gaussian mixture, one study each, in one
command.

    python -m debias_jax.experiments.compare --config configs/compare/full.py --workdir runs/compare_full

Each study runs in WORKDIR/<name> with its own REPORT.md; WORKDIR/REPORT.md holds all three. Any field of a
study can be overridden on the command line, e.g. --config.suite.digits.train.num_steps=3000. The same studies
run alone with configs/compare/{digits,photo_patches,gmm}.py.
"""

import ml_collections

from debias_jax.configs.compare import digits
from debias_jax.configs.compare import gmm
from debias_jax.configs.compare import photo_patches


def get_config():
  config = ml_collections.ConfigDict()
  config.title = "Loss weightings on digits, photo patches and a Gaussian mixture"
  config.suite = ml_collections.ConfigDict()
  config.suite.digits = digits.get_config()
  config.suite.photo_patches = photo_patches.get_config()
  config.suite.gmm = gmm.get_config()
  return config
