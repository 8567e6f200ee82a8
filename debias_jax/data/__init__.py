"""Input pipelines: embedded offline datasets, local TFDS datasets and image folders, behind one batch interface."""

from debias_jax.data.gmm import GaussianMixture
from debias_jax.data.gmm import make_gmm
from debias_jax.data.pipeline import create_eval_iterator
from debias_jax.data.pipeline import create_source
from debias_jax.data.pipeline import create_train_iterator
from debias_jax.data.pipeline import dataset_info
from debias_jax.data.pipeline import get_gmm
from debias_jax.data.tfds_source import hide_gpus_from_tensorflow
