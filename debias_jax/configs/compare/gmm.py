"""The comparison on the exactly known Gaussian mixture (part of configs/compare/full.py): E[x0 | x_t] is known in
closed form, so the bias of every arm is measured directly, with no sampling noise, at every checkpoint (of the EMA
and of the raw params), and samples are scored by exact log-likelihood, MMD and component frequencies as well as the
pixel-space Fréchet distance.

    python -m debias_jax.experiments.compare --config configs/compare/gmm.py --workdir runs/compare_gmm
    python -m debias_jax.experiments.compare --config configs/compare/gmm.py:low_lr --workdir runs/compare_gmm_low_lr

8x8 RGB "images" from an 8-component mixture of rank-6 Gaussians (data.gmm_*); five arms (base.SEEDED_ARMS), three
training seeds each, 600 iterations with four checkpoints, every checkpoint sampled as the authors did (DDPM,
learned variances, 100 steps), 100 samples per score (the exact metrics need few). `:low_lr` is the same study at a
quarter of the learning rate. About 45 minutes on 2 CPU cores (`:low_lr` from scratch: 45.5 min, 2026-12-02).
"""

from debias_jax.configs import default
from debias_jax.configs.compare import base


def get_config(variant: str = ""):
  config = base.cpu_model(default.get_config())
  config.data.name = "gmm"
  config.data.image_size = 8
  config.data.channels = 3
  config.train.batch_size = 32
  config.train.num_steps = 600
  config.eval.num_samples = 100
  config.eval.num_reference = 10_000
  config.analysis.num_examples = 256
  config.analysis.num_buckets = 10
  config.analysis.samplers = ("ddim",)
  config.analysis.sampling_steps = (2, 3, 5, 10, 20)
  base.match_batches(config)
  base.add_compare_section(
      config, title="Loss weightings on the Gaussian mixture", arms=base.SEEDED_ARMS, num_checkpoints=4,
      eval_sampler=base.AUTHORS_SAMPLER, sweep=base.CPU_SWEEP, exact_every_checkpoint=True, seeds=base.SEEDS)
  return base.learning_rate_variant(config, variant)
