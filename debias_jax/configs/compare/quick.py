"""Quick comparison (about 10 minutes on 2 CPU cores): all six arms on 8x8 digits, 300 steps each.

    python -m debias_jax.experiments.compare --config configs/compare/quick.py --workdir runs/compare_quick

A smoke test of the whole study (train, metric vs iterations and vs steps, bias analysis, report) rather than a
measurement: the models are barely trained. configs/compare/full.py is the measurement.
"""

from debias_jax.configs import default
from debias_jax.configs.compare import base


def get_config():
  config = base.cpu_model(default.get_config())
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.channels = 1
  config.train.batch_size = 32
  config.train.num_steps = 300
  config.eval.num_samples = 128
  config.analysis.num_examples = 256
  config.analysis.num_buckets = 8
  config.analysis.samplers = ("ddim",)
  config.analysis.sampling_steps = (2, 10, 50)
  base.match_batches(config)
  return base.add_compare_section(config, title="Quick comparison", num_checkpoints=3, eval_sampler="ddim:10",
                                  sweep=("ddim:10", "ddim:50", "ddpm:10", "ddpm:50"))
