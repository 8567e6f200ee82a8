"""The paper's FFHQ-256 study at full scale, for accelerators (not run here): the authors' lightweight ADM
(configs/paper/ffhq256.py: batch 8, AdamW 2e-5, EMA 0.9999, learned variances) trained to 1M iterations per arm,
FID-10k with the FID Inception-v3 from a local weight file.

    python -m debias_jax.experiments.compare --config configs/compare/paper_ffhq256.py --workdir gs://.../ffhq \
        --config.data.data_dir=/path/to/ffhq256 --config.eval.inception_weights=/path/to/inception.pkl

The paper's experiments: FID-10k at 200k-1M iterations with DDPM-100 (the training-efficiency table), and against
20-1000 sampling steps at the 500k checkpoints (the sampling-efficiency table). The four eps weightings of the
paper's figures; add "x0" and "v" to compare.arms for the prediction targets.
"""

from debias_jax.configs.compare import base
from debias_jax.configs.paper import ffhq256


def get_config():
  config = ffhq256.get_config()
  config.train.num_steps = 1_000_000
  config.eval.feature_space = "inception"
  config.eval.inception_weights = ""        # required: the FID Inception-v3 weights (never downloaded)
  config.eval.num_samples = 10_000
  config.eval.batch_size = 256
  config.sampling.batch_size = 256
  config.analysis.samplers = ("ddpm", "ddim")
  config.analysis.sampling_steps = (2, 3, 5, 10, 20, 50, 100)
  config.analysis.num_samples = 1024
  config.analysis.batch_size = 256
  config = base.add_compare_section(
      config, title="Loss weightings on FFHQ 256 (paper scale)", arms=("constant", "debias", "p2", "min_snr"),
      num_checkpoints=10, eval_sampler="ddpm:100",
      sweep=tuple(f"{s}:{n}" for s in ("ddpm", "ddim") for n in (20, 50, 100, 250, 1000)),
      final_step=500_000)                   # the sampling study and the bias analysis use the 500k checkpoints
  return config
