"""The comparison on 16x16 colour photo patches (part of configs/compare/full.py; about 20 minutes on 2 CPU
cores): the only embedded RGB data with natural colour statistics, so the colour shift of the paper shows here.

    python -m debias_jax.experiments.compare --config configs/compare/photo_patches.py --workdir runs/compare_photo

Six arms, 1000 iterations each with checkpoints every 200, scored by the Fréchet distance in the stand-in feature
space (a small CNN trained to tell the source photographs apart).
"""

from configs import default
from configs.compare import base


def get_config():
  config = base.cpu_model(default.get_config())
  config.data.name = "photo_patches"
  config.data.image_size = 16
  config.data.channels = 3
  config.data.random_flip = True
  config.model.channel_mult = (1, 1, 2)
  config.train.batch_size = 32
  config.train.num_steps = 1000
  config.eval.num_samples = 200
  config.analysis.num_examples = 400
  config.analysis.num_buckets = 10
  config.analysis.samplers = ("ddim",)
  config.analysis.sampling_steps = (2, 5, 10, 20, 50)
  base.match_batches(config)
  return base.add_compare_section(
      config, title="Loss weightings on photo patches", num_checkpoints=5, eval_sampler="ddim:20",
      sweep=("ddim:10", "ddim:20", "ddim:50", "ddim:100", "ddpm:10", "ddpm:20", "ddpm:50"))
