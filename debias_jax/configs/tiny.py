"""A toy config for tests and smoke runs: 8x8 digits, a two-level UNet, a few dozen steps in seconds."""

from debias_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.image_size = 8
  config.model.model_channels = 32
  config.model.channel_mult = (1, 2)
  config.model.attention_resolutions = (4,)
  config.model.num_head_channels = 32
  config.optim.learning_rate = 1e-3
  config.train.batch_size = 16
  config.train.num_steps = 20
  config.train.log_every = 10
  config.train.checkpoint_every = 10
  config.train.sample_every = 0
  config.sampling.sampler = "ddim"   # the tests' sample and eval files are named after it
  config.sampling.steps = "10"
  config.sampling.num_samples = 16
  config.sampling.batch_size = 16
  return config
