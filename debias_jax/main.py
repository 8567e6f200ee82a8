"""Command line: `python -m debias_jax.main --config configs/default.py --workdir DIR [--mode train]`.

Flags parse the config (with `--config.a.b=value` overrides) and hand it to the mode's entry point, a function
`entry(config, workdir)`. Multi-host runs (TPU pods, several GPU hosts) pass `--distributed` (or set
DEBIAS_JAX_DISTRIBUTED=1) so that jax.distributed.initialize() joins the processes before any JAX work.

Exit status: 0 done; 75 stopped for preemption (SIGTERM) with its progress saved: rerun the same command to
resume; 1 an error.
"""

import importlib
import os

from absl import app
from absl import flags
from absl import logging
import jax

from debias_jax import config_files
from debias_jax import preemption
from debias_jax import runtime
from debias_jax import xla_cpu
from debias_jax.data import tfds_source

# mode -> (module, function); each function takes (config, workdir).
MODES = {
    "train": ("debias_jax.train", "train_and_evaluate"),
    "sample": ("debias_jax.modes.sample", "sample_to_files"),
    "eval": ("debias_jax.modes.evaluate", "evaluate_checkpoints"),
    "analyze": ("debias_jax.modes.analyze", "analyze"),
}

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples; a rerun resumes from it.")
flags.DEFINE_enum("mode", "train", list(MODES), "What to do with the config and workdir.")
flags.DEFINE_bool("distributed", os.environ.get("DEBIAS_JAX_DISTRIBUTED", "") == "1",
                  "Call jax.distributed.initialize() first (multi-host; coordinator from the environment, or "
                  "from --coordinator/--num_processes/--process_id).")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for --distributed outside TPU/SLURM.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed outside TPU/SLURM.")
flags.DEFINE_integer("process_id", None, "This process's index, for --distributed outside TPU/SLURM.")
flags.DEFINE_string("compilation_cache", "", "Persistent XLA compilation cache folder (local or gs://); '' = "
                    "$JAX_COMPILATION_CACHE_DIR or ~/.cache/debias_jax/xla, 'none' = off.")
config_files.DEFINE_config_file("config", None, "Path to a config file (see configs/).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def initialize_distributed() -> None:
  kwargs = {}
  if FLAGS.coordinator:
    kwargs = {"coordinator_address": FLAGS.coordinator, "num_processes": FLAGS.num_processes,
              "process_id": FLAGS.process_id}
  jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  xla_cpu.prefer_wide_vectors()  # before JAX starts its backends
  xla_cpu.reuse_freed_memory()
  c = FLAGS.config
  xla_cpu.cores_as_devices((c.train.batch_size, c.sampling.batch_size, c.analysis.batch_size))
  if FLAGS.distributed:
    initialize_distributed()
  if jax.process_count() > 1:  # first of all: processes that disagree would hang or fail obscurely later
    from debias_jax import multihost  # pylint: disable=g-import-not-at-top
    multihost.check_processes_agree(FLAGS.config, workdir=FLAGS.workdir, mode=FLAGS.mode)
  if FLAGS.mode in ("train", "analyze"):   # a missing tfds dataset fails now, before TensorFlow starts
    tfds_source.check_prepared(FLAGS.config.data)
  runtime.setup(FLAGS.compilation_cache)
  logging.info("JAX process %d of %d, local devices: %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  module, function = MODES[FLAGS.mode]
  try:
    getattr(importlib.import_module(module), function)(FLAGS.config, FLAGS.workdir)
  except preemption.Preempted as e:
    preemption.exit_preempted(e)


if __name__ == "__main__":
  jax.config.config_with_absl()  # JAX's own flags too, e.g. --jax_debug_nans, --jax_platforms
  app.run(main)
