"""Shared pieces of the comparison presets (`python -m debias_jax.experiments.compare`).

A study config is a whole training config (every arm trains it, with only the loss changed) plus a `compare`
section that says which arms to train and how to measure them; debias_jax/experiments/compare.py documents the
phases. `cpu_model` is the small UNet the CPU presets share.
"""

import ml_collections

# The paper's arms (the ones the paper compares): the four eps weightings, then x0- and v-prediction. See
# debias_jax/experiments/plan.py (ARMS) for the weight each target trains with.
ALL_ARMS = ("constant", "debias", "p2", "min_snr", "x0", "v")
# The CPU presets' three-seed studies: the paper's four eps weightings and debias in v form (target invariance);
# "x0" and "debias_is" (importance-sampled t) are left out to fit the time budget, and can be added as arms.
SEEDED_ARMS = ("constant", "debias", "p2", "min_snr", "v")
SEEDS = (0, 1, 2)
# Respaced DDPM and DDIM at the paper's step counts; presets trim what their budget cannot afford.
FULL_SWEEP = tuple(f"{sampler}:{steps}" for sampler in ("ddim", "ddpm") for steps in (10, 20, 50, 100, 250, 1000))
# The CPU presets' sweep: the authors' sampler (DDPM with the learned variances) at 10 to 100 steps beside DDIM at
# the few steps where the paper sees the colour shift.
CPU_SWEEP = ("ddpm:10", "ddpm:20", "ddpm:50", "ddpm:100", "ddim:2", "ddim:3", "ddim:5", "ddim:10", "ddim:20")
# The authors sampled with DDPM, learned variances, 100 respaced steps: every checkpoint is scored that way.
AUTHORS_SAMPLER = "ddpm:100"
# The learning-rate axis, fixed before any run: each CPU preset at its own rate ("") and at a quarter of it.
LEARNING_RATE_VARIANTS = {"": 1.0, "low_lr": 0.25}


def add_compare_section(config, *, title: str, arms=ALL_ARMS, num_checkpoints: int = 5,
                        eval_sampler: str = "ddim:20", sweep=FULL_SWEEP, second_seed_offset: int = 1,
                        exact_every_checkpoint: bool = False, final_step: int = 0, seeds=None):
  """Adds config.compare (see the field comments) and returns the config."""
  config.compare = c = ml_collections.ConfigDict()
  c.title = title
  c.arms = tuple(arms)                        # names of experiments.plan.ARMS, or "weighting@target"
  c.num_checkpoints = num_checkpoints         # evenly spaced, the last at train.num_steps
  c.eval_sampler = eval_sampler               # "sampler:steps" scoring every checkpoint (steps a plain number)
  c.sweep = tuple(sweep)                      # "sampler:steps" entries scored at the last checkpoint
  c.second_seed_offset = second_seed_offset   # > 0: last checkpoint rescored with seed + offset (metric noise)
  c.exact_every_checkpoint = exact_every_checkpoint  # gmm: exact bias and sample quality at every checkpoint
  c.final_step = final_step                   # checkpoint of the sweep, 2nd seed and bias analysis (0 = the last)
  # Training seeds: every arm trains once per seed (init, data order, t, noise); the first in DIR/arms/<arm>, the
  # others in DIR/arms/<arm>-seed<N>. One seed cannot support a claim (no seed spread): see REPORT.md's rule.
  c.seeds = tuple(int(s) for s in (seeds if seeds is not None else (config.seed,)))
  return config


def cpu_model(config):
  """A two-level 32-channel ADM UNet (attention only in the middle block): the cheapest net that still learns
  8x8 digits in a few hundred steps on a CPU. EMA 0.99, because 0.999 would still weigh the initial weights
  heavily at the early checkpoints of runs this short (0.999^300 = 0.74)."""
  m = config.model
  m.model_channels = 32
  m.channel_mult = (1, 1)
  m.num_res_blocks = 1
  m.attention_resolutions = ()
  m.num_heads = 1
  m.num_head_channels = 32
  config.ema_rates = (0.99,)
  config.optim.learning_rate = 1e-3
  config.train.sample_every = 0
  config.train.log_every = 100
  return config


def learning_rate_variant(config, variant: str):
  """The preset at its learning rate (variant "") or 4x lower ("low_lr"; `--config configs/compare/X.py:low_lr`),
  with the title saying which."""
  if variant not in LEARNING_RATE_VARIANTS:
    raise ValueError(f"Unknown preset variant {variant!r}; valid: '' (the preset's learning rate) or "
                     f"{', '.join(repr(v) for v in LEARNING_RATE_VARIANTS if v)} (a quarter of it), e.g. "
                     f"--config configs/compare/gmm.py:low_lr.")
  config.optim.learning_rate = float(config.optim.learning_rate) * LEARNING_RATE_VARIANTS[variant]
  config.compare.title += f", learning rate {config.optim.learning_rate:g}"
  return config


def match_batches(config):
  """One sampling batch for every evaluation and the colour-shift study, so they run the very same compiled
  sampler programs (shared through the persistent compilation cache)."""
  n = int(config.eval.num_samples)
  config.sampling.batch_size = n
  config.sampling.num_samples = n
  config.analysis.num_samples = n
  config.analysis.batch_size = n
  return config
