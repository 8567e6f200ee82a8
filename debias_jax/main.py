"""Command line: `python -m debias_jax.main --config configs/default.py --workdir DIR [--mode train]`.

Flags parse the config (with `--config.a.b=value` overrides) and hand it to the mode's entry point.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples; a rerun resumes from it.")
flags.DEFINE_enum("mode", "train", ["train"], "What to do with the config and workdir.")
config_flags.DEFINE_config_file("config", None, "Path to a config file (see configs/).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from debias_jax.data import hide_gpus_from_tensorflow  # pylint: disable=g-import-not-at-top
  hide_gpus_from_tensorflow()  # before clu's writers initialise TensorFlow
  logging.info("JAX process %d of %d, local devices: %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  from debias_jax import train  # pylint: disable=g-import-not-at-top
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
