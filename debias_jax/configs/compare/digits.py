"""The comparison on 8x8 digits (part of configs/compare/full.py; about 20 minutes on 2 CPU cores).

    python -m debias_jax.experiments.compare --config configs/compare/digits.py --workdir runs/compare_digits

Six arms (constant, debias, P2, Min-SNR, x0- and v-prediction), 600 iterations each with checkpoints every 120,
scored by the Fréchet distance in the stand-in feature space (a small CNN trained to classify the digits).
"""

from debias_jax.configs import default
from debias_jax.configs.compare import base


def get_config():
  config = base.cpu_model(default.get_config())
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.channels = 1
  config.train.batch_size = 32
  config.train.num_steps = 600
  config.eval.num_samples = 200
  config.analysis.num_examples = 512
  config.analysis.num_buckets = 10
  config.analysis.samplers = ("ddim",)
  config.analysis.sampling_steps = (2, 5, 10, 20, 50)
  base.match_batches(config)
  return base.add_compare_section(
      config, title="Loss weightings on digits", num_checkpoints=5, eval_sampler="ddim:20",
      sweep=("ddpm:10", "ddpm:20", "ddpm:50", "ddpm:100", "ddim:10", "ddim:20", "ddim:50"))
