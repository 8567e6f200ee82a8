"""The comparison on 16x16 colour photo patches (part of configs/compare/full.py; about 25 minutes on 2 CPU
cores): the only embedded RGB data with natural colour statistics, so the colour shift of the paper shows here.

    python -m debias_jax.experiments.compare --config configs/compare/photo_patches.py --workdir runs/compare_photo

The four eps weightings (constant, debias, P2, Min-SNR; x0- and v-prediction run on digits and the mixture, where
they are four times cheaper), 400 iterations each with checkpoints every 100, scored by the Fréchet distance in the
stand-in feature space (a small CNN trained to tell the source photographs apart).
"""

from debias_jax.configs import default
from debias_jax.configs.compare import base


def get_config():
  config = base.cpu_model(default.get_config())
  config.data.name = "photo_patches"
  config.data.image_size = 16
  config.data.channels = 3
  config.data.random_flip = True
  config.model.channel_mult = (1, 1, 2)
  config.train.batch_size = 32
  config.train.num_steps = 400
  config.eval.num_samples = 128
  config.analysis.num_examples = 256
  config.analysis.num_buckets = 10
  config.analysis.samplers = ("ddim",)
  config.analysis.sampling_steps = (2, 5, 10, 20)
  base.match_batches(config)
  return base.add_compare_section(
      config, title="Loss weightings on photo patches", arms=("constant", "debias", "p2", "min_snr"),
      num_checkpoints=4, eval_sampler="ddim:10",
      sweep=("ddpm:10", "ddpm:20", "ddpm:50", "ddim:10", "ddim:20", "ddim:50"))
