"""Runs every mode (train, sample, eval, analyze, a one-arm compare) in a workdir under each root given, and writes
a JSON summary of what each left there, read back through etils.epath. tests/object_store_test.py runs it once
with a local root and a gs:// root on an emulated object store, in one process, so the second root's programs
come from the compilation cache.

    python tests/object_store_driver.py OUTPUT.json CACHE_DIR ROOT [ROOT ...]
"""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import hashlib
import json
import sys

from etils import epath

from debias_jax import jsonl
from debias_jax import summaries
from debias_jax import train
from debias_jax.modes import analyze
from debias_jax.evaluation import fid
from debias_jax.experiments import compare
from debias_jax.modes import evaluate
from debias_jax.modes import sample
from tests import test_util
from debias_jax.experiments import plan

VOLATILE = ("seconds", "workdir", "figures", "npz", "grid", "end", "start")


def config(cache_dir: str):
  return test_util.config(test_util.SAMPLING, {
      "train.num_steps": 4, "train.checkpoint_every": 2, "train.log_every": 2, "train.sample_every": 4,
      "sampling.num_samples": 8, "sampling.batch_size": 8,
      "eval.feature_space": "pixels", "eval.num_samples": 8, "eval.num_reference": 32, "eval.cache_dir": cache_dir,
      "analysis.num_examples": 16, "analysis.num_buckets": 2, "analysis.batch_size": 8, "analysis.num_samples": 8,
      "analysis.sampling_steps": (2,)})


def study_config(cache_dir: str):
  return test_util.toy_study_config(cache_dir, **{"compare.arms": ("debias",), "compare.num_checkpoints": 1,
                                                 "compare.sweep": ()})


def _strip(record):
  if isinstance(record, dict):
    return {k: _strip(v) for k, v in record.items() if k not in VOLATILE}
  if isinstance(record, list):
    return [_strip(v) for v in record]
  return record


def _names(folder: epath.Path) -> list[str]:
  """File names in folder; TensorBoard event files (named by time, host and pid) as 'tfevents'."""
  names = [("tfevents" if "tfevents" in p.name else p.name) for p in folder.iterdir()] if folder.exists() else []
  return sorted(names)


def run_all(root: str, cache_dir: str) -> dict:
  c = config(cache_dir)
  run = str(epath.Path(root) / "run")
  train.train_and_evaluate(c, run)
  record = sample.sample_to_files(c, run)
  results = evaluate.evaluate_checkpoints(c, run)
  analysis = analyze.analyze(c, run)
  report = compare.run(study_config(cache_dir), str(epath.Path(root) / "study"), command="test")
  run_path = epath.Path(run)
  events = summaries.read_events(run)
  hparams = [v.metadata.plugin_data.content for e in events for v in e.summary.value
             if v.tag == "_hparams_/session_start_info"]
  arm = epath.Path(root) / "study" / plan.ARMS_DIR / "debias"
  return {
      "top": _names(run_path),
      "metrics": jsonl.read(run_path / "metrics.jsonl"),
      "checkpoints": _names(run_path / "checkpoints"),
      "config": (run_path / "config.json").read_text(),
      "hparams": [h.decode("latin-1") for h in hparams],
      "scalar_tags": sorted({v.tag for e in events for v in e.summary.value if v.HasField("simple_value")}),
      "image_tags": sorted({v.tag for e in events for v in e.summary.value if v.HasField("image")}),
      "samples": _names(run_path / "samples"),
      "sample_record": _strip(record),
      "sample_digest": hashlib.sha256(fid.load_samples_npz(record["npz"]).tobytes()).hexdigest(),
      "eval": [_strip(r) for r in results],
      "eval_files": _names(run_path / "eval"),
      "analysis": _strip(analysis),
      "analysis_files": _names(run_path / "analysis"),
      "study_files": _names(epath.Path(root) / "study"),
      "study_eval": [_strip(r) for r in jsonl.read(arm / "eval" / "results.jsonl")],
      "report_headings": [line for line in epath.Path(report).read_text().splitlines() if line.startswith("#")],
  }


def main(argv):
  output, cache_dir, *roots = argv[1:]
  summary = {root: run_all(root, cache_dir) for root in roots}
  epath.Path(output).write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
  main(sys.argv)
