"""ffhq at 256 px, unconditional, batch 8, as the paper trains it. Needs --config.data.data_dir=/path/to/images."""

from debias_jax.configs.paper import adm


def get_config():
  return adm.folder_config(image_size=256, batch_size=8)
