"""ImageNet at 256 px, class-conditional (1000 classes), batch 8, from a local tfds data_dir (imagenet2012)."""

from debias_jax.configs.paper import adm


def get_config():
  config = adm.adm_config(image_size=256, batch_size=8)
  config.data.source = "tfds"
  config.data.name = "imagenet2012"
  config.data.data_dir = ""          # tfds data_dir holding the prepared imagenet2012 (empty = tfds's default;
                                     # imagenet2012 needs a manual download: tfds build --manual_dir)
  config.data.num_classes = 1000
  return config
