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
from debias_jax.experiments import efficiency
from debias_jax.experiments import plan
from debias_jax.experiments import report
from tests import test_util

NUMBER = re.compile(r"^\**[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\**(/[+-]?\d+(\.\d*)?)*$")


def markdown_tables(text: str) -> list[list[list[str]]]:
  """Every markdown table of the text as rows of cells (header and separator dropped)."""
  tables, current = [], None
  for line in text.splitlines():
    if line.startswith("|"):
      cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
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
    for row in verdicts:   # one training seed: nothing can be supported (no seed spread)
      self.assertTrue(row[-1].startswith(efficiency.NOT_SUPPORTED), row)
    self.assertIn("no claim can be supported", sections["Verdicts"])
    self.assertLess(self.text.index("Verdict rule"), self.text.index("| training efficiency"))
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

  def test_a_second_seed_resumes_the_first_and_the_report_pairs_them(self):
    # compare.seeds = (0, 1) on a copy of this (one-seed) study: seed 0's runs are kept, only seed 1's train.
    workdir = os.path.join(self.tmp, "seeds")
    shutil.copytree(self.workdir, workdir)
    config = copy.deepcopy(self.config)
    config.compare.seeds, config.compare.arms, config.compare.sweep = (0, 1), ("constant", "debias"), ()
    trained = []
    original = train.train_and_evaluate
    def train_and_record(c, directory):
      trained.append((os.path.basename(directory), int(c.seed)))
      return original(c, directory)
    with mock.patch.object(train, "train_and_evaluate", side_effect=train_and_record):
      path = compare.run(config, workdir, phases=("train", "iterations"))
    self.assertEqual(trained, [("constant-seed1", 1), ("debias-seed1", 1)])
    for arm in plan.study_arms(config):
      first, second = (plan.run_dir(config, workdir, arm, s) for s in (0, 1))
      self.assertEqual(first, plan.arm_dir(workdir, arm))   # the single-seed layout for the first seed
      self.assertEqual(second, plan.arm_dir(workdir, arm) + "-seed1")
      self.assertEqual([checkpointing.load_config(d).seed for d in (first, second)], [0, 1])
      records = jsonl.read(os.path.join(second, "eval", "results.jsonl"))
      self.assertEqual(sorted((r["checkpoint_step"], r["seed"]) for r in records), [(2, 1), (4, 1), (4, 2)])
    with open(path) as f:
      text = f.read()
    study = report.StudyResults(config, workdir)
    fds = {(n, s): study.eval_fd(n, 4, s) for n in ("constant", "debias") for s in (0, 1)}
    self.assertNotIn(None, fds.values())
    self.assertNotEqual(fds[("constant", 0)], fds[("constant", 1)])   # another seed trains another model
    sections = {title: body for title, body in re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.M | re.S)}
    iterations = markdown_tables(sections["Metric vs training iterations"])[0]
    self.assertEqual([r[0] for r in iterations], ["2", "4", "4, 2nd sample seed"])
    stats = efficiency.mean_sd([fds[("constant", 0)], fds[("constant", 1)]])
    self.assertEqual(iterations[1][1].strip("*"), f"{report.fmt(stats['mean'])} ± {report.fmt(stats['sd'], 2)}")
    self.assertLess(text.index("Verdict rule"), text.index("## Metric vs training iterations"))
    diffs = [fds[("debias", s)] - fds[("constant", s)] for s in (0, 1)]
    tables = markdown_tables(sections["Verdicts"])
    paired = next(r for t in tables for r in t if r[0] == "Fréchet distance (pixels, ddim 2), step 4")
    self.assertEqual(paired[1], f"{report.fmt(sum(diffs) / 2)} ({diffs[0]:+.3g}, {diffs[1]:+.3g})")
    self.assertIn("Iterations to match", sections["Verdicts"])
    match = next(r for t in tables for r in t if r[0].startswith("Fréchet distance (pixels, ddim 2)"))
    self.assertRegex(match[1], r"^(\d\.\d\d \(step [\d.]+\)|≤ 0\.50 \(at the first checkpoint\)|not reached)$")
    self.assertEqual(tables[0][0][-1], efficiency.verdict(diffs, study.sampling_spread("debias"), -1)["verdict"])

  def test_a_changed_training_config_is_refused(self):
    config = copy.deepcopy(self.config)
    config.optim.learning_rate = 3e-4
    with self.assertRaisesRegex(config_checks.ConfigError, r"(?s)config.optim.learning_rate: trained with 0.001, given 0.0003.*new --workdir"):
      compare.run(config, self.workdir)


class GaussianMixtureStudyTest(absltest.TestCase):
  """The gmm path: exact analyses of the EMA and of the raw params at every checkpoint, reported as curves; and an
  importance-sampling arm."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.workdir = os.path.join(cls.tmp, "study")
    cls.config = test_util.toy_study_config(cls.tmp, **{
        "data.name": "gmm", "data.channels": 3, "compare.exact_every_checkpoint": True,
        "compare.arms": ("constant", "debias_is"), "compare.eval_sampler": "ddpm:3", "compare.sweep": ("ddim:2",)})
    with open(compare.run(cls.config, cls.workdir)) as f:
      cls.text = f.read()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def analysis(self, arm: str, step: int, use_ema: bool) -> dict:
    with open(compare.analysis_path(plan.arm_dir(self.workdir, plan.ARMS[arm]), step, use_ema)) as f:
      return json.load(f)

  @staticmethod
  def row(analysis: dict) -> dict:
    """The eval sampler's (ddpm:3) colour-shift / sample-quality row of an analysis."""
    return next(r for r in analysis["color_shift"]["samplers"]["ddpm"] if r["steps"] == 3)

  def test_every_checkpoint_is_analysed_for_both_params(self):
    for arm in ("constant", "debias_is"):
      for step in (2, 4):
        ema, raw = self.analysis(arm, step, True), self.analysis(arm, step, False)
        self.assertEqual((ema["params"], raw["params"], raw["checkpoint_step"]), ("ema0.99", "params", step))
        ema_row, raw_row = (self.row(r) for r in (ema, raw))
        self.assertNotEqual(ema_row["mmd"], raw_row["mmd"])   # two different sets of weights
        self.assertEqual(raw["figures"], {})   # the per-checkpoint analyses skip matplotlib
      self.assertEqual(self.analysis(arm, 2, True)["figures"], {})
      final = self.analysis(arm, 4, True)["figures"]   # the full analysis of the last checkpoint draws them
      self.assertIn("color_shift", final)
      self.assertTrue(all(os.path.exists(path) for path in final.values()))

  def test_the_raw_params_curves_are_the_saved_values(self):
    def table(title):
      return next(markdown_tables(part)[0] for part in self.text.split("Gaussian mixture, ")[1:]
                  if part.startswith(title))
    for params, use_ema in (("raw params", False), ("EMA params", True)):
      rows = {r[0]: r[1:] for r in table(f"exact MMD² to true samples ({params})")}
      for step in (2, 4):
        for k, arm in enumerate(("constant", "debias_is")):
          mmd = self.row(self.analysis(arm, step, use_ema))["mmd"]
          self.assertEqual(rows[str(step)][k].strip("*"), report.fmt(mmd))
    match = [r[0] for r in markdown_tables(self.text.split("Iterations to match")[1])[0]]
    self.assertIn(f"excess x0 error E|x̂0 − E[x0|x_t]|² (the exact bias), SNR < 0.1 (raw params)", match)

  def test_the_importance_arm_trains_with_importance_sampled_t(self):
    trained = checkpointing.load_config(plan.arm_dir(self.workdir, plan.ARMS["debias_is"]))
    self.assertEqual((trained.loss.weighting, trained.loss.t_sampling), ("debias", "importance"))
    arms = markdown_tables(self.text.split("## Arms")[1])[0]
    row = next(r for r in arms if r[0] == "`debias_is`")
    self.assertIn("t_sampling=importance", row[3])
    debias_shares = report.arm_band_shares(self.config, plan.ARMS["debias"])
    self.assertEqual(row[-3:], [f"{100 * x:.3g}%" for x in debias_shares])   # the same objective as debias


class PlantedEfficiencyTest(absltest.TestCase):
  """An arm that is constant's run with its checkpoints relabelled to half the iterations matches at 0.5."""

  def test_half_the_iterations(self):
    workdir = test_util.tmpdir(self)
    config = test_util.toy_study_config("", **{"compare.seeds": (0, 1), "compare.arms": ("constant", "p2"),
                                               "compare.sweep": (), "train.num_steps": 8,
                                               "compare.num_checkpoints": 4})
    for seed, curve in ((0, [9.0, 6.0, 4.5, 4.0]), (1, [8.0, 7.0, 5.0, 3.0])):
      suffix = plan.seed_suffix(config, seed)
      _write_results(workdir, "constant", curve, (2, 4, 6, 8), seed=seed, suffix=suffix)
      _write_results(workdir, "p2", curve, (1, 2, 3, 4), seed=seed, suffix=suffix)   # relabelled: step / 2
    study = report.StudyResults(config, workdir)
    result = report.iterations_to_match(study, "p2", report.curve_metrics(study)[0][1])
    self.assertEqual((result["fraction"], result["iteration"], result["budget"]), (0.5, 4.0, 8.0))
    text = report.render(study, figures=False)
    match = next(r for t in markdown_tables(text.split("Iterations to match")[1]) for r in t
                 if r[0].startswith("Fréchet"))
    self.assertEqual(match[1], "0.50 (step 4)")


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

  def test_seeds(self):
    config = test_util.toy_study_config("")
    self.assertEqual(plan.study_seeds(config), [int(config.seed)])   # default: the config's own seed
    config.compare.seeds = (3, 5)
    arm = plan.ARMS["debias"]
    self.assertEqual([plan.arm_config(config, arm, s).seed for s in (3, 5)], [3, 5])
    self.assertEqual([plan.run_dir(config, "w", arm, s) for s in (3, 5)], ["w/arms/debias", "w/arms/debias-seed5"])
    config.compare.seeds = (3, 3)
    with self.assertRaisesRegex(config_checks.ConfigError, "compare.seeds.*twice"):
      plan.study_seeds(config)

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


def _write_results(workdir, arm, fds, steps, sampler="ddim", count="2", seed=0, suffix=""):
  directory = os.path.join(plan.arm_dir(workdir, plan.ARMS[arm], suffix), "eval")
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "results.jsonl"), "a") as f:
    for step, fid in zip(steps, fds):
      f.write(json.dumps({"checkpoint_step": step, "sampler": sampler, "steps": count, "num_samples": 8,
                          "seed": seed, "feature_space": "pixels", "fid": fid}) + "\n")


class VerdictTest(parameterized.TestCase):
  """The verdicts on hand-written results: known answers."""

  def _study(self, debias, constant, second_debias, second_constant):
    """FDs at the last checkpoint (step 4) per training seed, and with the 2nd sample seed (seed + 1)."""
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    seeds = tuple(range(len(debias)))
    config = test_util.toy_study_config("", **{"compare.seeds": seeds})
    config.compare.arms = ("constant", "debias")
    config.compare.sweep = ()
    for arm, fds, second in (("debias", debias, second_debias), ("constant", constant, second_constant)):
      for seed, fd, fd2 in zip(seeds, fds, second):
        suffix = plan.seed_suffix(config, seed)
        _write_results(workdir, arm, [fd + 1.0, fd], (2, 4), seed=seed, suffix=suffix)
        _write_results(workdir, arm, [fd2], (4,), seed=seed + 1, suffix=suffix)
    return report.StudyResults(config, workdir)

  # Differences debias - constant per seed: (-2, -3, -4), with the 2nd sample seed (-2.5, -3.5, -4.5): mean -3,
  # seed s.e. 1/sqrt(3), sampling spread s.d.(-3, -3.5) = 0.3536, noise 0.677: |mean| > 2 noise.
  @parameterized.parameters(
      ([3.0, 3.0, 3.0], [5.0, 6.0, 7.0], [3.0, 3.0, 3.0], [5.5, 6.5, 7.5], efficiency.SUPPORTED),
      ([5.0, 6.0, 7.0], [3.0, 3.0, 3.0], [5.5, 6.5, 7.5], [3.0, 3.0, 3.0], efficiency.CONTRADICTED),
      ([3.0, 7.0, 3.0], [5.0, 6.0, 7.0], [3.0, 7.0, 3.0], [5.5, 6.5, 7.5], efficiency.NOT_SUPPORTED),  # mixed signs
      ([3.0], [5.0], [3.0], [5.5], efficiency.NOT_SUPPORTED))                                          # one seed
  def test_training_efficiency(self, debias, constant, second_debias, second_constant, expected):
    study = self._study(debias, constant, second_debias, second_constant)
    row = report.verdicts(study)[0]
    self.assertEqual(row[-1], expected)
    diffs = [d - c for d, c in zip(debias, constant)]
    self.assertEqual(report.paired(study, "debias", lambda a, t: study.eval_fd(a, 4, t)),
                     dict(enumerate(diffs)))
    if len(diffs) == 3 and expected == efficiency.SUPPORTED:
      self.assertAlmostEqual(study.sampling_spread("debias"), 0.5 / 2 ** 0.5)
      noise = (1.0 / 3 + 0.125) ** 0.5
      self.assertIn(f"2×noise {report.fmt(2 * noise)}", row[2])

  def test_missing_results_show_as_dashes(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    config = test_util.toy_study_config("")
    _write_results(workdir, "debias", [1.5], (2,))
    text = report.render(report.StudyResults(config, workdir))
    table = markdown_tables(text.split("## Metric vs training iterations")[1])[0]
    self.assertEqual(table[0][1:3], [report.DASH, "1.5"])
    self.assertIn("No bias analysis", text)

  def test_colour_shift_net_of_the_exact_denoiser(self):
    """On gmm, a third table subtracts the exact denoiser's shift (same sampler and steps) from each arm's."""
    shifts = {("constant", False): [3.0, -1.0, 0.5], ("debias", False): [1.0, 0.0, 0.25],
              ("constant", True): [0.5, 0.5, 0.5]}

    class Study:   # the attributes and rows color_tables reads, with known shifts at 5 steps
      names, channels, exact, last = ["constant", "debias"], 3, True, 10

      def color_rows(self, arm, sampler, exact=False):
        return [self.color_row(arm, sampler, 5, exact)]

      def color_row(self, arm, sampler, steps, exact=False):
        return {"steps": steps, "channel_shift": shifts[("constant" if exact else arm, exact)], "channel_fd": 1.0}

    tables = report.color_tables(Study(), ["ddim"])
    self.assertLen(tables, 3)
    self.assertIn("net of the exact denoiser", tables[1])
    self.assertEqual(markdown_tables(tables[1])[0], [["5", "+2.50/-1.50/+0.00", "+0.50/-0.50/-0.25"]])
    Study.exact = False
    self.assertLen(report.color_tables(Study(), ["ddim"]), 2)   # no exact denoiser, no net table

  def test_fmt(self):
    self.assertEqual(report.fmt(None), report.DASH)
    self.assertEqual(report.fmt(float("nan")), report.DASH)
    self.assertEqual(report.fmt(12.3456), "12.35")
    self.assertEqual(report.fmt([1.0, -2.5]), "+1.00/-2.50")
    self.assertEqual(report.fmt(1.5e-5), "1.500e-05")


if __name__ == "__main__":
  absltest.main()
