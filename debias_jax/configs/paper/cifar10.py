"""CIFAR-10 at 32 px, class-conditional, batch 32, from tfds (`tfds build cifar10 --file_format=array_record`,
or --config.data.tfds_prepare=True to let the program prepare it)."""

from debias_jax.configs.paper import adm


def get_config():
  config = adm.adm_config(image_size=32, batch_size=32)
  config.data.source = "tfds"
  config.data.name = "cifar10"
  config.data.data_dir = ""          # tfds data_dir; empty = tfds's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
  config.data.num_classes = 10
  return config
