"""The authors' setup (the paper's experiments and their released code): the lightweight ADM of guided-diffusion with learned variances and the
hybrid loss, AdamW at 2e-5, no decay, no warm-up or clipping, float32, EMA 0.9999 every step, debias weighting.

The dataset configs next to this file import `adm_config` and fill in the data section.
"""

from debias_jax.configs import default


def adm_config(image_size: int, batch_size: int):
  config = default.get_config()
  config.data.image_size = image_size
  config.data.channels = 3
  config.data.random_flip = True

  m = config.model
  m.model_channels = 128
  m.channel_mult = ()               # ADM's choice: 256 -> (1,1,2,2,4,4), 32 -> (1,2,2,2)
  m.num_res_blocks = 1
  m.attention_resolutions = (16,)
  m.num_heads = 1
  m.num_head_channels = 64
  m.use_scale_shift_norm = True
  m.resblock_updown = True
  m.dropout = 0.0
  m.learn_sigma = True

  config.loss.weighting = "debias"
  config.loss.target = "eps"

  config.optim.learning_rate = 2e-5
  config.optim.weight_decay = 0.0
  config.ema_rates = (0.9999,)

  t = config.train
  t.batch_size = batch_size
  t.num_steps = 500_000              # the sampling study's checkpoints; the training study goes to 1M
  t.log_every = 100
  t.sample_every = 10_000
  t.checkpoint_every = 50_000
  t.keep_checkpoints = 20

  s = config.sampling
  s.sampler = "ddpm"
  s.steps = "100"
  s.num_samples = 16
  s.batch_size = 16
  return config


def folder_config(image_size: int = 256, batch_size: int = 8):
  """An unconditional face/animal dataset given as a folder of images (set --config.data.data_dir)."""
  config = adm_config(image_size, batch_size)
  config.data.source = "folder"
  config.data.name = ""
  config.data.data_dir = ""         # required: the folder of images
  config.data.num_classes = 0
  return config
