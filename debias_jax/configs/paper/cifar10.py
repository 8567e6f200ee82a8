"""CIFAR-10 at 32 px, class-conditional, batch 32, from a local tfds data_dir (`tfds build cifar10`)."""

from debias_jax.configs.paper import adm


def get_config():
  config = adm.adm_config(image_size=32, batch_size=32)
  config.data.source = "tfds"
  config.data.name = "cifar10"
  config.data.data_dir = ""          # tfds data_dir; empty = tfds's default (~/tensorflow_datasets)
  config.data.num_classes = 10
  return config
