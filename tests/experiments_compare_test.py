"""The comparison driver: the quick preset end to end at toy size, resumption, and the report's verdict logic."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import copy
import json
import os
import re
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from debias_jax import checkpointing
from debias_jax import config_checks
from debias_jax import jsonl
from debias_jax import train
from debias_jax.modes import analyze as analyze_mode
from debias_jax.diffusion import weighting
from debias_jax.experiments import compare
from debias_jax.experiments import plan
from debias_jax.experiments import report
from tests import test_util

NUMBER = re.compile(r"^\**[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\**(/[+-]?\d+(\.\d*)?)*$")


def markdown_tables(text: str) -> list[list[list[str]]]:
  """Every markdown table of the text as rows of cells (header and separator dropped)."""
  tables, current = [], None
  for line in text.splitlines():
    if line.startswith("|"):
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      if current is None:
        current = [cells]
      else:
        current.append(cells)
    elif current is not None:
      tables.append(current)
      current = None
  if current is not None:
    tables.append(current)
  return [[row for row in table[2:]] for table in tables]


class QuickPresetEndToEndTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.workdir = os.path.join(cls.tmp, "study")
    cls.config = test_util.toy_study_config(cls.tmp)
    cls.path = compare.run(cls.config, cls.workdir, command="python -m debias_jax.experiments.compare --test")
    with open(cls.path) as f:
      cls.text = f.read()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_every_table_is_present_and_holds_numbers(self):
    for heading in ("## Arms", "## Verdicts", "## Metric vs training iterations", "## Metric vs sampling steps",
                    "## Per-t x0 error", "## Colour / mean shift vs sampling steps", "## Wall time", "## Command",
                    "## Config"):
      self.assertIn(heading, self.text)
    sections = {title: body for title, body in re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", self.text, re.M | re.S)}
    names = list(self.config.compare.arms)
    numeric_sections = ["Metric vs training iterations", "Metric vs sampling steps", "Per-t x0 error (the bias)",
                        "Colour / mean shift vs sampling steps"]
    for title in numeric_sections:
      tables = markdown_tables(sections[title])
      self.assertNotEmpty(tables, title)
      for table in tables:
        self.assertNotEmpty(table, title)
        for row in table:
          for cell in row[1:1 + len(names)]:
            self.assertRegex(cell, NUMBER, f"{title}: row {row}")
    iterations = markdown_tables(sections["Metric vs training iterations"])[0]
    self.assertEqual([r[0] for r in iterations], ["2", "4", "4, 2nd sample seed"])
    steps = markdown_tables(sections["Metric vs sampling steps"])[0]
    self.assertEqual([r[0] for r in steps], ["ddim 2", "ddpm 3"])
    cells = [c.lower() for t in markdown_tables(self.text) for r in t for c in r]
    self.assertEqual([c for c in cells if re.search(r"\bnan\b|\binf\b", c)], [])
    verdicts = markdown_tables(sections["Verdicts"])[0]
    self.assertGreaterEqual(len(verdicts), 5)
    for row in verdicts:
      self.assertIn(row[-1], ("agrees", "does not agree", "within noise", "partly", "differs beyond noise",
                              "differs (noise unknown)", "tie (within 1%)"))
    for figure in ("metric_vs_iterations", "metric_vs_steps", "x0_error", "color_shift"):
      self.assertIn(f"figures/{figure}.png", self.text)
      self.assertTrue(os.path.exists(os.path.join(self.workdir, "figures", f"{figure}.png")))
    self.assertIn("python -m debias_jax.experiments.compare --test", sections["Command"])

  def test_the_report_numbers_are_the_saved_results(self):
    for arm in plan.study_arms(self.config):
      directory = plan.arm_dir(self.workdir, arm)
      records = jsonl.read(os.path.join(directory, "eval", "results.jsonl"))
      got = sorted((r["checkpoint_step"], r["sampler"], r["steps"], r["seed"]) for r in records)
      self.assertEqual(got, sorted([(2, "ddim", "2", 0), (4, "ddim", "2", 0), (4, "ddim", "2", 1),
                                    (4, "ddpm", "3", 0)]))
      fid = next(r["fid"] for r in records if (r["checkpoint_step"], r["seed"]) == (2, 0))
      self.assertIn(report.fmt(fid), self.text)
      self.assertTrue(os.path.exists(compare.analysis_path(directory, 4)))

  def test_arms_differ_only_in_their_loss(self):
    configs = {}
    for arm in plan.study_arms(self.config):
      configs[arm.name] = checkpointing.load_config(plan.arm_dir(self.workdir, arm))
      self.assertEqual((configs[arm.name].loss.target, configs[arm.name].loss.weighting),
                       (arm.target, arm.weighting))
      self.assertEqual(configs[arm.name].train.checkpoint_every, 2)
    stripped = []
    for config in configs.values():
      config = config.to_dict()
      config.pop("loss")
      stripped.append(json.dumps(config, sort_keys=True))
    self.assertLen(set(stripped), 1)   # same data, seed, model, optimiser and step budget

  def test_a_rerun_resumes_without_redoing_anything(self):
    with mock.patch.object(train, "train_and_evaluate", side_effect=AssertionError("trained again")), \
         mock.patch.object(analyze_mode, "analyze", side_effect=AssertionError("analysed again")), \
         mock.patch("debias_jax.generation.Generator.batches", side_effect=AssertionError("sampled again")):
      path = compare.run(self.config, self.workdir, command="second invocation")
    with open(path) as f:
      again = f.read()
    strip = lambda text: re.sub(r"## Wall time.*", "", text, flags=re.S)
    self.assertEqual(strip(again), strip(self.text))
    self.assertIn("over 2 invocation(s)", again)

  def test_an_interrupted_evaluation_is_completed_and_only_it(self):
    workdir = os.path.join(self.tmp, "interrupted")
    shutil.copytree(self.workdir, workdir)
    arm = plan.ARMS["debias"]
    results = os.path.join(plan.arm_dir(workdir, arm), "eval", "results.jsonl")
    with open(results) as f:
      lines = f.readlines()
    dropped = [json.loads(line) for line in lines if json.loads(line)["sampler"] == "ddpm"]
    with open(results, "w") as f:
      f.writelines(line for line in lines if json.loads(line)["sampler"] != "ddpm")
    with mock.patch.object(train, "train_and_evaluate", side_effect=AssertionError("trained again")), \
         mock.patch.object(analyze_mode, "analyze", side_effect=AssertionError("analysed again")):
      compare.run(self.config, workdir, phases=("train", "iterations", "steps", "analysis"))
    redone = [r for r in jsonl.read(results) if r["sampler"] == "ddpm"]
    self.assertLen(redone, 1)
    self.assertEqual(redone[0]["fid"], dropped[0]["fid"])   # the same samples: the result is reproducible
    timings = jsonl.read(plan.study_path(workdir, "timings.jsonl"))
    self.assertEqual([(t["phase"], t["arm"]) for t in timings[-1:]], [("steps", "debias")])

  def test_a_changed_training_config_is_refused(self):
    config = copy.deepcopy(self.config)
    config.optim.learning_rate = 3e-4
    with self.assertRaisesRegex(config_checks.ConfigError, r"(?s)config.optim.learning_rate: trained with 0.001, given 0.0003.*new --workdir"):
      compare.run(config, self.workdir)


class ConfigTest(parameterized.TestCase):

  def test_arms(self):
    self.assertEqual(plan.parse_arm("p2").options, (("p2_k", 1.0), ("p2_gamma", 1.0)))
    self.assertEqual((plan.ARMS["x0"].target, plan.ARMS["x0"].weighting), ("x0", "snr"))
    custom = plan.parse_arm("constant@v")
    self.assertEqual((custom.target, custom.weighting, custom.directory), ("v", "constant", "constant-at-v"))
    for bad in ("debias@y", "nope", "uniform@eps"):
      with self.assertRaisesRegex(config_checks.ConfigError, "compare.arms"):
        plan.parse_arm(bad)

  def test_every_weighting_has_its_formulas(self):
    # The report's arms table names the eps- and x0-space weight of any weighting@target arm.
    self.assertEqual(set(weighting.FORMULAS), set(weighting.WEIGHTINGS))
    self.assertTrue(all(set(f) == {"eps", "x0"} for f in weighting.FORMULAS.values()))

  def test_checkpoint_steps_and_arm_config(self):
    config = test_util.toy_study_config("")
    config.train.num_steps, config.compare.num_checkpoints = 500, 5
    self.assertEqual(plan.checkpoint_steps(config), [100, 200, 300, 400, 500])
    arm = plan.arm_config(config, plan.ARMS["min_snr"])
    self.assertEqual((arm.loss.weighting, arm.loss.min_snr_gamma, arm.train.checkpoint_every), ("min_snr", 5.0, 100))
    self.assertGreaterEqual(arm.train.keep_checkpoints, 5)
    self.assertNotIn("compare", arm)
    self.assertIn("compare", config)
    config.compare.num_checkpoints = 3
    with self.assertRaisesRegex(config_checks.ConfigError, "num_checkpoints"):
      plan.checkpoint_steps(config)
    config.compare.num_checkpoints, config.train.steps_per_call = 5, 3
    with self.assertRaisesRegex(config_checks.ConfigError, "steps_per_call"):
      plan.checkpoint_steps(config)

  @parameterized.parameters(("ddim20", "sweep"), ("ddim:", "sweep"), ("ddim:ddim20", "eval_sampler"),
                            ("warp:20", "sweep"))
  def test_bad_sampler_entries_are_named(self, entry, field):
    config = test_util.toy_study_config("")
    config.compare[field] = (entry,) if field == "sweep" else entry
    with self.assertRaisesRegex(config_checks.ConfigError, f"compare.{field}|sampler_steps"):
      config_checks.validate_study(config)

  def test_presets_validate(self):
    from configs.compare import digits, full, gmm, photo_patches, quick  # pylint: disable=g-import-not-at-top
    for module in (quick, digits, photo_patches, gmm):
      config_checks.validate_study(module.get_config())
    self.assertEqual(set(full.get_config().suite.keys()), {"digits", "photo_patches", "gmm"})

  def test_paper_scale_configs(self):
    from configs.compare import paper_cifar10, paper_ffhq256  # pylint: disable=g-import-not-at-top
    ffhq = paper_ffhq256.get_config()
    self.assertEqual(plan.checkpoint_steps(ffhq)[1::2], [200_000, 400_000, 600_000, 800_000, 1_000_000])
    self.assertEqual(plan.final_step(ffhq), 500_000)
    self.assertEqual(plan.final_step(paper_cifar10.get_config()), 500_000)
    with self.assertRaisesRegex(config_checks.ConfigError, "inception_weights"):
      config_checks.validate_study(ffhq)
    ffhq.compare.final_step = 550_000
    with self.assertRaisesRegex(config_checks.ConfigError, "final_step"):
      plan.final_step(ffhq)


def _write_results(workdir, arm, fds, steps, sampler="ddim", count="2", seed=0):
  directory = os.path.join(plan.arm_dir(workdir, plan.ARMS[arm]), "eval")
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "results.jsonl"), "a") as f:
    for step, fid in zip(steps, fds):
      f.write(json.dumps({"checkpoint_step": step, "sampler": sampler, "steps": count, "num_samples": 8,
                          "seed": seed, "feature_space": "pixels", "fid": fid}) + "\n")


class VerdictTest(parameterized.TestCase):
  """The verdicts on hand-written results: known answers."""

  def _study(self, debias, constant, noise):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    config = test_util.toy_study_config("")
    config.compare.arms = ("constant", "debias")
    config.compare.sweep = ()
    for arm, fds in (("debias", debias), ("constant", constant)):
      _write_results(workdir, arm, fds, (2, 4))
      _write_results(workdir, arm, [fds[-1] + (noise if arm == "debias" else 0.0)], (4,), seed=1)
    return report.StudyResults(config, workdir)

  @parameterized.parameters(([5.0, 3.0], [9.0, 6.0], 0.5, "agrees", "2"),
                            ([9.0, 6.0], [5.0, 3.0], 0.5, "does not agree", None),
                            ([5.0, 5.9], [5.2, 6.0], 0.5, "within noise", None))
  def test_training_efficiency(self, debias, constant, noise, verdict, reach):
    study = self._study(debias, constant, noise)
    self.assertAlmostEqual(study.fd_noise(), noise)
    row = report.verdicts(study)[0]
    self.assertEqual(row[-1], verdict)
    if reach:
      self.assertIn(f"at step {reach} (50% of the budget)", row[2])

  def test_missing_results_show_as_dashes(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    config = test_util.toy_study_config("")
    _write_results(workdir, "debias", [1.5], (2,))
    text = report.render(report.StudyResults(config, workdir))
    table = markdown_tables(text.split("## Metric vs training iterations")[1])[0]
    self.assertEqual(table[0][1:3], [report.DASH, "1.5"])
    self.assertIn("No bias analysis", text)

  def test_direction(self):
    self.assertEqual(report.direction(1.0, 2.0), "agrees")
    self.assertEqual(report.direction(2.0, 1.0), "does not agree")
    self.assertEqual(report.direction(1.0, 1.005), "tie (within 1%)")

  def test_fmt(self):
    self.assertEqual(report.fmt(None), report.DASH)
    self.assertEqual(report.fmt(float("nan")), report.DASH)
    self.assertEqual(report.fmt(12.3456), "12.35")
    self.assertEqual(report.fmt([1.0, -2.5]), "+1.00/-2.50")
    self.assertEqual(report.fmt(1.5e-5), "1.500e-05")


if __name__ == "__main__":
  absltest.main()
