"""The comparison at the authors' CIFAR-10 scale, for accelerators (not run here): configs/paper/cifar10.py
(lightweight ADM at 32 px, class-conditional, batch 32, AdamW 2e-5, EMA 0.9999) trained 500k iterations per arm,
FID-10k with the FID Inception-v3 from a local weight file.

    python -m debias_jax.experiments.compare --config configs/compare/paper_cifar10.py --workdir gs://.../cifar \
        --config.data.data_dir=/path/to/tensorflow_datasets --config.eval.inception_weights=/path/to/inception.pkl

All six arms; checkpoints every 100k, the sampling-steps sweep and the bias analysis at 500k.
"""

from debias_jax.configs.compare import base
from debias_jax.configs.paper import cifar10


def get_config():
  config = cifar10.get_config()
  config.train.num_steps = 500_000
  config.eval.feature_space = "inception"
  config.eval.inception_weights = ""        # required: the FID Inception-v3 weights (never downloaded)
  config.eval.num_samples = 10_000
  config.eval.batch_size = 500
  config.sampling.batch_size = 500
  config.analysis.samplers = ("ddpm", "ddim")
  config.analysis.sampling_steps = (2, 3, 5, 10, 20, 50, 100)
  config.analysis.num_samples = 1000
  config.analysis.batch_size = 500
  return base.add_compare_section(
      config, title="Loss weightings on CIFAR-10 (paper scale)", num_checkpoints=5, eval_sampler="ddpm:100",
      sweep=tuple(f"{s}:{n}" for s in ("ddpm", "ddim") for n in (20, 50, 100, 250, 1000)))
