"""Throughput benchmark: every figure reported at toy size, the peak table, and bfloat16 training vs float32."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import contextlib
import io
import json
import math
import os
import tempfile

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp

from debias_jax import benchmark
from debias_jax import builders
from debias_jax import parallel
from debias_jax.models import unet
from tests import test_util

# bfloat16's unit roundoff is 2**-9 ~ 2e-3; the tiny model's loss after a few steps must agree with float32's to
# half of that (relative): GroupNorm statistics, softmax, the output head and the loss are float32, so only the
# torso's rounding (~1e-4 of the loss here) may show. A loss computed or accumulated in bfloat16 would not pass.
BF16_RELATIVE_TOLERANCE = 1e-3


def fixed_loss(config, params, images):
  """The config's training loss of `params` on fixed images with fixed noise and timesteps (key 123)."""
  model = builders.create_model(config)
  schedule = builders.schedule(config)
  loss_fn = builders.loss_fn(config, schedule)
  predict = lambda p: (lambda x, t: model.apply({"params": p}, x, t, None))
  return jax.jit(lambda p: loss_fn(predict(p), images, jax.random.key(123))[0])(params)


def forward_gflops_per_image(config):
  """XLA's (unoptimised) FLOP count of one forward pass of the UNet on one image."""
  model = builders.create_model(config)
  x = jnp.zeros((1, 8, 8, 1), jnp.float32)
  params = unet.param_shapes(model)
  cost = jax.jit(lambda p: model.apply({"params": p}, x, jnp.zeros((1,)), None)).lower(params).cost_analysis()
  return cost["flops"] / 1e9


class BenchmarkTest(parameterized.TestCase):

  def _assert_positive_finite(self, figures, keys, where):
    for key in keys:
      self.assertIn(key, figures, f"{where} lacks {key}")
      value = figures[key]
      self.assertTrue(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                      f"{where}[{key}] = {value!r} is not a positive finite number")

  def test_bfloat16_training_stays_close_to_float32(self):
    """Same init, batch and keys; only the compute dtype differs. Losses compared on a fixed batch and key."""
    mesh = parallel.create_mesh()
    states = {}
    for dtype in ("float32", "bfloat16"):
      config = test_util.config(**{"model.dtype": dtype})
      model, schedule = builders.create_model(config), builders.schedule(config)
      figures, states[dtype] = benchmark.benchmark_train(config, mesh, model, schedule, steps=3, warmup_calls=1,
                                                         log=lambda _: None)
      self.assertEqual(figures["loss_dtype"], "float32")
      for leaf in jax.tree.leaves((states[dtype].params, states[dtype].ema_params, states[dtype].opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
          self.assertEqual(leaf.dtype, jnp.float32)
    self.assertEqual(int(states["bfloat16"].step), 4)
    images = benchmark.synthetic_batch(test_util.config(), mesh, 16, 1)["image"]
    init = unet.init_params(builders.create_model(test_util.config()), jax.random.key(test_util.config().seed))
    before = float(fixed_loss(test_util.config(), init, images))
    loss32 = fixed_loss(test_util.config(**{"model.dtype": "float32"}), states["float32"].params, images)
    loss16 = fixed_loss(test_util.config(**{"model.dtype": "bfloat16"}), states["bfloat16"].params, images)
    self.assertEqual(loss16.dtype, jnp.float32)
    loss32, loss16 = float(loss32), float(loss16)
    self.assertNotEqual(loss16, loss32)   # bfloat16 really ran
    self.assertLess(abs(loss16 - loss32), BF16_RELATIVE_TOLERANCE * loss32)
    # The comparison means something: training moved the loss by far more than the tolerance.
    self.assertGreater(abs(before - loss32), 20 * BF16_RELATIVE_TOLERANCE * loss32)

  @parameterized.parameters(
      ("NVIDIA H100 80GB HBM3", "bfloat16", None, 989.0),
      ("NVIDIA H100 PCIe", "bfloat16", None, 756.0),
      ("NVIDIA H200", "float32", None, 495.0),
      ("NVIDIA H200", "float32", "highest", 67.0),
      ("NVIDIA H200 NVL", "bfloat16", None, 835.0),
      ("NVIDIA A100-SXM4-80GB", "float32", "tensorfloat32", 156.0),
      ("NVIDIA A100-SXM4-40GB", "float16", None, 312.0),
      ("TPU v4", "bfloat16", None, 275.0),
      ("TPU v5 lite", "bfloat16", None, 197.0),
      ("TPU v5e", "float32", None, 197.0),
      ("TPU v5", "bfloat16", None, 459.0),
      ("TPU v5p", "bfloat16", None, 459.0),
      ("TPU v6 lite", "bfloat16", None, 918.0),
      ("TPU v6 lite", "float32", "highest", None),
      ("TPU v4 lite", "bfloat16", None, None),
      ("cpu", "float32", None, None),
  )
  def test_peak_table(self, device_kind, dtype, precision, expected):
    peak, source = benchmark.peak_tflops(device_kind, dtype, precision)
    self.assertEqual(peak, expected)
    self.assertIsInstance(source, str)
    self.assertNotEmpty(source)

  def test_peak_memory_is_labelled(self):
    memory = benchmark.peak_memory()
    self.assertGreater(memory["bytes"], 0)
    self.assertIn(memory["kind"], ("device peak_bytes_in_use (max over local devices)",
                                   "process peak RSS (host memory, includes compilation)"))

  @parameterized.parameters(("train_steps", 0), ("sample_batches", -1), ("ddpm_steps", 1.5))
  def test_bad_arguments_are_named(self, name, value):
    with self.assertRaisesRegex(ValueError, name):
      benchmark.run(test_util.config(), **{name: value})

  def test_command_line_reports_every_figure(self):
    """The command line (in process) on the tiny config: 3 timed steps, DDIM-50 and DDPM cut to 2 steps."""
    config = test_util.config()
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, "bench.json")
      argv = ["benchmark", "--config", os.path.join(test_util.REPO, "configs", "tiny.py"), "--train_steps", "3",
              "--sample_batch_size", "4", "--sample_warmup_batches", "0", "--ddpm_steps", "2",
              "--config.model.dtype=float32", "--output", out]
      flag_values = benchmark.define_flags(flags.FlagValues(), argv)
      flag_values(argv)
      stdout = io.StringIO()
      with contextlib.redirect_stdout(stdout):
        returned = benchmark.run_from_flags(flag_values)
      with open(out) as f:
        results = json.load(f)
    self.assertEqual(results, json.loads(json.dumps(returned)))
    stdout = stdout.getvalue()
    self.assertTrue(results["synthetic_data"])
    self.assertIn("synthetic", results["data_note"])
    self.assertIn("configs/tiny.py --config.model.dtype=float32 --train_steps=3", results["command"])
    self.assertEqual(results["system"]["platform"], "cpu")
    self.assertEqual(results["model"]["params"], unet.param_count(builders.create_model(config)))

    t = results["train"]
    self._assert_positive_finite(t, ["images_per_s", "images_per_s_per_device", "seconds", "ms_per_step",
                                     "compile_s", "lower_s", "gflops_per_image", "flops_per_step_per_device",
                                     "achieved_tflops_per_s", "achieved_tflops_per_s_per_device",
                                     "peak_memory_bytes"], "train")
    self.assertEqual((t["batch_size"], t["timed_steps"], t["timed_calls"], t["warmup_calls"]), (16, 3, 3, 1))
    self.assertAlmostEqual(t["images_per_s"], 3 * 16 / t["seconds"], places=6)
    self.assertEqual(t["loss_dtype"], "float32")
    self.assertIsNone(t["peak_tflops_per_device"])   # CPU: no peak, and said so
    self.assertIn("CPU", t["peak_source"])
    self.assertNotIn("fraction_of_peak", t)
    self._assert_positive_finite(t["xla_memory_per_device"], ["total_bytes", "temp_size_in_bytes"], "xla memory")
    # A train step costs forward + backward ~ 3 forward passes per image (the optimiser and EMA are negligible).
    self.assertBetween(t["gflops_per_image"] / forward_gflops_per_image(config), 2.5, 4.0)

    ddim, ddpm = results["sampling"]["ddim"], results["sampling"]["ddpm"]
    for name, figures, steps in (("ddim", ddim, 50), ("ddpm", ddpm, 2)):
      self._assert_positive_finite(figures, ["images_per_s", "images_per_s_per_device", "network_evals_per_s",
                                             "seconds", "compile_s", "peak_memory_bytes"], name)
      self.assertEqual((figures["sampler"], figures["steps"], figures["batch_size"], figures["batches"]),
                       (name, steps, 4, 1))
    self.assertNotIn("estimated_images_per_s_at_1000_steps", ddim)
    self.assertAlmostEqual(ddpm["estimated_images_per_s_at_1000_steps"], ddpm["images_per_s"] * 2 / 1000)
    self._assert_positive_finite(results["peak_memory"], ["bytes"], "peak_memory")
    self.assertIn("RSS", results["peak_memory"]["kind"])

    for text in ("Training (CPU)", "Sampling DDIM (CPU)", "Sampling DDPM (CPU)", "synthetic", "loss dtype",
                 "GFLOPs per image", "peak memory", "images/s at 1000 steps", benchmark._num(t["images_per_s"]),
                 benchmark.readme_row(results, os.path.join(test_util.REPO, "configs", "tiny.py")
                                      + " --config.model.dtype=float32")):
      self.assertIn(text, stdout)
    self.assertIn("(from DDPM-2)", benchmark.readme_row(results, "configs/tiny.py"))
    # Where it was measured: the CPU model, the threads this process may use, the XLA flags in force.
    system = results["system"]
    self.assertEqual(system["cpu_threads"], len(os.sched_getaffinity(0)))
    self.assertEqual(system["xla_flags"], os.environ.get("XLA_FLAGS", ""))
    self.assertIn(f"Host: {system['cpu_model'] or 'unknown CPU'}, {system['cpu_threads']} thread(s) of "
                  f"{system['cpu_count']} CPUs; XLA_FLAGS={system['xla_flags'] or '(none)'}", stdout)

if __name__ == "__main__":
  absltest.main()
