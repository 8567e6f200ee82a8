"""The comparison on 8x8 digits (part of configs/compare/full.py).

    python -m debias_jax.experiments.compare --config configs/compare/digits.py --workdir runs/compare_digits
    python -m debias_jax.experiments.compare --config configs/compare/digits.py:low_lr \
        --workdir runs/compare_digits_low_lr

Five arms (base.SEEDED_ARMS), three training seeds each, 480 iterations with four checkpoints, each sampled as the
authors did (DDPM, learned variances, 100 steps) and scored by the Fréchet distance of 100 samples in the stand-in
feature space (a small CNN trained to classify the digits). `:low_lr` is the same study at a quarter of the
learning rate. Sized to about 30 minutes on 2 CPU cores.
"""

from debias_jax.configs import default
from debias_jax.configs.compare import base


def get_config(variant: str = ""):
  config = base.cpu_model(default.get_config())
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.channels = 1
  config.train.batch_size = 32
  config.train.num_steps = 480
  config.eval.num_samples = 100
  config.analysis.num_examples = 256
  config.analysis.num_buckets = 10
  config.analysis.samplers = ("ddim",)
  config.analysis.sampling_steps = (2, 3, 5, 10, 20)
  base.match_batches(config)
  base.add_compare_section(
      config, title="Loss weightings on digits", arms=base.SEEDED_ARMS, num_checkpoints=4,
      eval_sampler=base.AUTHORS_SAMPLER, sweep=base.CPU_SWEEP, seeds=base.SEEDS)
  return base.learning_rate_variant(config, variant)
