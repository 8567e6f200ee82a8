"""The comparison on the exactly known Gaussian mixture (part of configs/compare/full.py; about 20 minutes on 2
CPU cores): E[x0 | x_t] is known in closed form, so the bias of every arm is measured directly, with no sampling
noise, at every checkpoint, and samples are scored by exact log-likelihood and MMD as well as the pixel-space
Fréchet distance.

    python -m debias_jax.experiments.compare --config configs/compare/gmm.py --workdir runs/compare_gmm

8x8 RGB "images" from an 8-component mixture of rank-6 Gaussians (data.gmm_*), six arms, 600 iterations.
"""

from debias_jax.configs import default
from debias_jax.configs.compare import base


def get_config():
  config = base.cpu_model(default.get_config())
  config.data.name = "gmm"
  config.data.image_size = 8
  config.data.channels = 3
  config.train.batch_size = 32
  config.train.num_steps = 600
  config.eval.num_samples = 200
  config.eval.num_reference = 10_000
  config.analysis.num_examples = 512
  config.analysis.num_buckets = 10
  config.analysis.samplers = ("ddim",)
  config.analysis.sampling_steps = (2, 5, 10, 20)
  base.match_batches(config)
  return base.add_compare_section(
      config, title="Loss weightings on the Gaussian mixture", num_checkpoints=5, eval_sampler="ddim:20",
      sweep=("ddpm:10", "ddpm:20", "ddpm:50", "ddpm:100", "ddim:10", "ddim:20", "ddim:50"),
      exact_every_checkpoint=True)
