"""Command-line evaluator in the manner of ADM's evaluations/evaluator.py: a reference batch and a sample batch
(.npz files with uint8 NHWC `arr_0`) in, FID / sFID / IS / precision / recall out.

  python -m debias_jax.evaluation.evaluator REF.npz SAMPLES.npz --inception_weights=/path/weights.pickle
  python -m debias_jax.evaluation.evaluator REF.npz SAMPLES.npz --feature_space=pixels
  python -m debias_jax.evaluation.evaluator REF.npz SAMPLES.npz --feature_space=standin --dataset=digits

The reference may be one of ADM's published batches (its stored Inception mu/sigma/mu_s/sigma_s are used in the
inception space; precision/recall need its arr_0 images) or a file written by `fid.save_reference_batch`.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from debias_jax import storage
from debias_jax.configs import default as default_config
from debias_jax.evaluation import features

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a program, so importing evaluate_files never clashes with another program's flags."""
  flags.DEFINE_enum("feature_space", "inception", ["inception", "standin", "pixels"], "Feature space.")
  flags.DEFINE_string("inception_weights", "", "FID Inception weights (see debias_jax.evaluation.inception).")
  flags.DEFINE_string("dataset", "", "standin space: the embedded dataset (digits | photo_patches) it is trained "
                      "on; image size and channels are read from the samples.")
  flags.DEFINE_string("cache_dir", "", "Cache for the stand-in network (default ~/.cache/debias_jax).")
  flags.DEFINE_integer("batch_size", 256, "Feature-extraction batch size.")
  flags.DEFINE_string("output_json", "", "Also write the metrics to this JSON file.")


def evaluate_files(reference_path: str, samples_path: str, *, feature_space: str = "inception",
                   inception_weights: str = "", dataset: str = "", cache_dir: str = "",
                   batch_size: int = 256) -> dict[str, float]:
  """Metrics of the samples file against the reference file in the chosen feature space."""
  from debias_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
  samples = fid.load_samples_npz(samples_path)
  if feature_space == "standin" and not dataset:
    raise ValueError("--feature_space=standin needs --dataset (digits or photo_patches).")
  config = default_config.get_config()
  config.data.update(source="embedded", name=dataset, image_size=int(samples.shape[1]),
                     channels=int(samples.shape[3]), num_classes=0)
  config.eval.update(feature_space=feature_space, inception_weights=inception_weights, cache_dir=cache_dir,
                     batch_size=batch_size)
  eval_config, data_config = config.eval, config.data
  extractor = features.get_feature_extractor(eval_config, data_config)
  reference = features.reference_from_npz(extractor, reference_path, batch_size)
  return features.evaluate_samples(extractor, samples, reference, batch_size=batch_size)


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("Usage: python -m debias_jax.evaluation.evaluator REF.npz SAMPLES.npz [flags]")
  metrics = evaluate_files(argv[1], argv[2], feature_space=FLAGS.feature_space,
                           inception_weights=FLAGS.inception_weights, dataset=FLAGS.dataset,
                           cache_dir=FLAGS.cache_dir, batch_size=FLAGS.batch_size)
  for name, value in metrics.items():
    print(f"{name}: {value:.6g}")
  if FLAGS.output_json:
    storage.write_atomic(FLAGS.output_json, json.dumps(metrics, indent=2, sort_keys=True))
  sys.stdout.flush()


if __name__ == "__main__":
  _define_flags()
  app.run(main)
