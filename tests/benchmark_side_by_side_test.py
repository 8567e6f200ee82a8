"""Side-by-side benchmark: the guided-diffusion spec of a config, the worker protocol, the per-category profile,
and the driver end to end on our side (the PyTorch side needs torch and a guided-diffusion checkout)."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import io
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from configs import tiny
from configs.paper import cifar10
from debias_jax import benchmark_profile
from debias_jax import benchmark_side_by_side
from debias_jax import benchmark_torch
from debias_jax import builders
from debias_jax.models import conv
from debias_jax.models import unet
from tests import test_util



class TorchSpecTest(absltest.TestCase):

  def test_cifar10_spec_is_the_authors_command_line(self):
    # train.sh of the authors' repository, CIFAR-10: --attention_resolutions 16 --class_cond True --num_classes 10
    # --image_size 32 --learn_sigma True --num_channels 128 --num_head_channels 64 --num_res_blocks 1
    # --resblock_updown True --use_scale_shift_norm True --lr 2e-5 --batch_size 32 --rescale_learned_sigmas True
    spec = benchmark_side_by_side.torch_spec(cifar10.get_config())
    expected = {"image_size": 32, "num_channels": 128, "num_res_blocks": 1, "channel_mult": "1,2,2,2",
                "class_cond": True, "num_classes": 10, "learn_sigma": True, "attention_resolutions": "16",
                "num_head_channels": 64, "use_scale_shift_norm": True, "resblock_updown": True, "dropout": 0.0,
                "diffusion_steps": 1000, "noise_schedule": "linear", "rescale_learned_sigmas": True,
                "predict_xstart": False, "predict_v": False, "use_fp16": False}
    self.assertEqual({k: spec["model_and_diffusion"][k] for k in expected}, expected)
    self.assertEqual((spec["batch_size"], spec["lr"], spec["weight_decay"], spec["ema_rate"]), (32, 2e-5, 0.0, 0.9999))
    self.assertEqual(spec["autocast"], "")           # float32 against float32
    bf16 = cifar10.get_config()
    bf16.model.dtype = "bfloat16"
    self.assertEqual(benchmark_side_by_side.torch_spec(bf16)["autocast"], "bfloat16")   # theirs under autocast

  def test_spec_kwargs_keeps_what_the_factory_accepts(self):
    def factory(image_size, num_channels, p2_gamma=0):
      return image_size, num_channels, p2_gamma
    kwargs, ignored = benchmark_torch.spec_kwargs(factory, {"image_size": 32, "num_channels": 8, "predict_v": True})
    self.assertEqual(kwargs, {"image_size": 32, "num_channels": 8})
    self.assertEqual(ignored, ["predict_v"])

  def test_torch_operator_categories(self):
    self.assertEqual(benchmark_torch.categorise("aten::convolution_backward"), "convolution backward (input + weight)")
    self.assertEqual(benchmark_torch.categorise("aten::mkldnn_convolution"), "convolution forward")
    self.assertEqual(benchmark_torch.categorise("aten::native_group_norm_backward"), "GroupNorm + SiLU")
    self.assertEqual(benchmark_torch.categorise("aten::bmm"), "attention (matmuls + softmax)")
    self.assertEqual(benchmark_torch.categorise("aten::mul"), "other (elementwise, copies, loss)")


class _FakeReference:

  def time_train(self, steps, warmup):
    return {"images_per_s": 10.0 * steps, "warmup": warmup}

  def time_ddim(self, steps, batch, batches, warmup):
    return {"images_per_s": float(steps * batch * batches), "warmup": warmup}


class ProtocolTest(absltest.TestCase):

  def test_serve_answers_one_result_line_per_command(self):
    stdin = io.StringIO("\n".join([json.dumps({"op": "train", "steps": 2, "warmup": 0}),
                                   json.dumps({"op": "ddim", "steps": 3, "batch": 4}), "",
                                   json.dumps({"op": "nonsense"}), json.dumps({"op": "quit"}),
                                   json.dumps({"op": "train"})]) + "\n")
    stdout = io.StringIO()
    benchmark_torch.serve(_FakeReference(), stdin, stdout, system={"torch_version": "fake"}, params=7,
                          ignored_spec_keys=["predict_v"])
    lines = stdout.getvalue().splitlines()
    self.assertTrue(all(l.startswith(benchmark_torch.RESULT_PREFIX) for l in lines))
    replies = [json.loads(l[len(benchmark_torch.RESULT_PREFIX):]) for l in lines]
    self.assertLen(replies, 4)   # hello, train, ddim, error; nothing after quit
    self.assertTrue(replies[0]["ready"])
    self.assertEqual((replies[0]["params"], replies[0]["ignored_spec_keys"]), (7, ["predict_v"]))
    self.assertEqual(replies[1], {"images_per_s": 20.0, "warmup": 0})
    self.assertEqual(replies[2], {"images_per_s": 12.0, "warmup": 1})
    self.assertIn("nonsense", replies[3]["error"])


class ProfileTest(absltest.TestCase):

  def test_categories_of_a_unet_training_gradient(self):
    config = tiny.get_config()
    config.data.image_size, config.model.channel_mult, config.model.attention_resolutions = 16, (1, 2), (8,)
    config.model.model_channels = 64
    model = builders.create_model(config)
    params = unet.init_params(model, jax.random.key(0))
    x = jnp.ones((2, 16, 16, 1))
    t = jnp.array([1.0, 500.0])
    grad = jax.jit(jax.grad(lambda p, x: jnp.mean(model.apply({"params": p}, x, t) ** 2)))
    compiled = grad.lower(params, x).compile()
    result = benchmark_profile.profile(compiled, (params, x), untraced_seconds=0.5,
                                       attention_layers=benchmark_profile.attention_layer_names(model))
    categories = set(result["categories_ms"])
    # Every kind of UNet work is found, and nothing is counted twice: the shares add up to one.
    for category in (benchmark_profile.CONV_FWD, benchmark_profile.CONV_DX, benchmark_profile.CONV_DW,
                     benchmark_profile.NORM, benchmark_profile.ATTENTION):
      self.assertIn(category, categories)
    self.assertAlmostEqual(sum(result["shares"].values()), 1.0, places=6)
    self.assertAlmostEqual(sum(result["scaled_ms"].values()), 500.0, places=3)
    self.assertLessEqual(result["gaps_ms"], result["op_time_ms"])

  def test_weight_gradient_convolutions_are_told_from_input_gradients(self):
    text = """HloModule m
%fused (p0: f32[2,8,8,4], p1: f32[3,3,4,4]) -> f32[2,8,8,4] {
  %p0 = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,4,4]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = f32[2,8,8,4]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(f)/transpose(jvp(UNet))/input_blocks_1_0/in_conv/conv_general_dilated"}
}
ENTRY %main (a: f32[2,8,8,4], b: f32[3,3,4,4], c: f32[4,8,8,2], d: f32[8,8,2,4]) -> f32[2,8,8,4] {
  %a = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %b = f32[3,3,4,4]{3,2,1,0} parameter(1)
  %dx = f32[2,8,8,4]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused
  %dw = f32[4,3,3,4]{3,2,1,0} convolution(%c, %d), window={size=8x8 pad=1_1x1_1}, dim_labels=f01b_i01o->01bf
  %fwd = f32[2,8,8,4]{3,2,1,0} convolution(%a, %b), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(f)/jvp(UNet)/input_blocks_1_0/in_conv/conv_general_dilated"}
  %gn = f32[2,8,8,4]{3,2,1,0} multiply(%a, %a), metadata={op_name="jit(f)/jvp(UNet)/input_blocks_1_0/in_norm/mul"}
  %bias = f32[2,8,8,4]{3,2,1,0} add(%a, %a), metadata={op_name="jit(f)/while/body/closed_call/UNet/input_blocks_1_0/in_conv/add"}
  %skip = f32[2,8,8,4]{3,2,1,0} dot(%a, %b), lhs_contracting_dims={3}, rhs_contracting_dims={0}, metadata={op_name="jit(f)/jvp(UNet)/output_blocks_1_0/skip/dot_general"}
  %dbias = f32[4]{0} add(%a, %a), metadata={op_name="jit(f)/transpose(jvp(UNet))/input_blocks_1_0/in_conv/reduce_sum"}
  ROOT %upd = f32[2,8,8,4]{3,2,1,0} add(%a, %a), metadata={op_name="jit(f)/add"}
}
"""
    instructions, computations = benchmark_profile.parse_hlo(text)
    category = lambda name: benchmark_profile.categorise(instructions[name], computations)
    self.assertEqual(category("dx"), benchmark_profile.CONV_DX)
    self.assertEqual(category("dw"), benchmark_profile.CONV_DW)
    self.assertEqual(category("fwd"), benchmark_profile.CONV_FWD)
    self.assertEqual(category("gn"), benchmark_profile.NORM)
    # a conv layer's other ops: forward ones (a sampler loop's bias add, a 1×1 skip's dot) are its forward
    self.assertEqual(category("bias"), benchmark_profile.CONV_FWD)
    self.assertEqual(category("skip"), benchmark_profile.CONV_FWD)
    self.assertEqual(category("dbias"), benchmark_profile.CONV_DW)
    self.assertEqual(category("upd"), benchmark_profile.OUTSIDE)

  def test_gemm_forms_of_the_convolutions_are_told_apart(self):
    # bfloat16 on CPU: forward, input and weight gradient are all loops of dots; their named scopes say which
    x, w, dy = (jnp.ones(s, jnp.bfloat16) for s in ((2, 16, 16, 64), (3, 3, 64, 64), (2, 16, 16, 64)))
    loss = lambda x, w: jnp.vdot(conv.conv3x3(x, w), dy).astype(jnp.float32)
    text = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(x, w).compile().as_text()
    instructions, computations = benchmark_profile.parse_hlo(text)
    dots = {benchmark_profile.categorise(i, computations) for i in instructions.values() if i.opcode == "dot"}
    self.assertEqual(dots, {benchmark_profile.CONV_FWD, benchmark_profile.CONV_DX, benchmark_profile.CONV_DW})

  def test_self_times_subtract_nested_events(self):
    outer = benchmark_profile.Event("while", 0, 100)
    inner = [benchmark_profile.Event("dot", 10, 40), benchmark_profile.Event("copy", 50, 60)]
    after = benchmark_profile.Event("add", 100, 130)
    events = benchmark_profile._self_times([after, inner[1], outer, inner[0]])
    self.assertEqual({e.name: e.self_ns for e in events}, {"while": 60, "dot": 30, "copy": 10, "add": 30})


class WorkerEnvTest(absltest.TestCase):
  """Our worker runs as main does: the pinned cores as CPU devices when they divide both batches."""

  def test_cores_as_devices_for_the_worker(self):
    def device_flag(threads, batch_sizes, flags=""):
      with mock.patch.dict(os.environ, {"XLA_FLAGS": flags}):
        env = benchmark_side_by_side.worker_env(threads, batch_sizes)
      return [f for f in env["XLA_FLAGS"].split() if f.startswith("--xla_force_host_platform_device_count")]

    self.assertEqual(device_flag(2, (32, 16)), ["--xla_force_host_platform_device_count=2"])
    self.assertEqual(device_flag(4, (32, 6)), ["--xla_force_host_platform_device_count=2"])
    self.assertEqual(device_flag(2, (32, 15)), [])        # an odd batch: one device
    self.assertEqual(device_flag(2, ()), [])              # --nocores_as_devices
    self.assertEqual(device_flag(2, (32, 16), "--xla_force_host_platform_device_count=1"),
                     ["--xla_force_host_platform_device_count=1"])   # the user's count wins


class FastestInTurnTest(absltest.TestCase):

  def test_fastest_of_each_taken_in_turn(self):
    calls = []

    class Fake:
      def __init__(self, name, speeds):
        self.name, self.speeds = name, iter(speeds)

      def ask(self, **cmd):
        calls.append((self.name, cmd["warmup"]))
        return {"images_per_s": next(self.speeds), "op": cmd["op"]}

    workers = {"jax": Fake("jax", [3.0, 5.0, 4.0]), "torch": Fake("torch", [6.0, 2.0, 1.0])}
    best = benchmark_side_by_side.fastest_in_turn(workers, ["torch", "jax"], {"op": "train"}, 3, warmup=1)
    self.assertEqual(best, {"torch": {"images_per_s": 6.0, "op": "train", "measurements": 3},
                            "jax": {"images_per_s": 5.0, "op": "train", "measurements": 3}})
    self.assertEqual(list(best), ["torch", "jax"])
    # in turn, the warm-up only before each program's first measurement
    self.assertEqual(calls, [("torch", 1), ("jax", 1), ("torch", 0), ("jax", 0), ("torch", 0), ("jax", 0)])


class DriverTest(absltest.TestCase):

  def test_our_side_alone_end_to_end(self):
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, "out", "side.json")
      proc = subprocess.run(
          [sys.executable, "-m", "debias_jax.benchmark_side_by_side", "--config", "configs/tiny.py",
           "--rounds", "2", "--repeats", "2", "--train_steps", "1", "--ddim_steps", "2", "--sample_batch_size", "4",
           "--threads", "1", "--output", out],
          cwd=test_util.REPO, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
      self.assertEqual(proc.returncode, 0, proc.stderr[-3000:] + proc.stdout[-2000:])
      with open(out) as f:
        results = json.load(f)
    self.assertEqual(results["threads"], 1)
    system = results["workers"]["jax"]["system"]
    self.assertLen(system["cpus"], 1)   # the worker was pinned before JAX started
    self.assertTrue(system["malloc_reuses_freed_memory"])   # a CPU-only run on glibc (xla_cpu.reuse_freed_memory)
    self.assertLen(results["rounds"], 2)
    self.assertEqual(results["rounds"][0]["train"]["jax"]["measurements"], 2)
    summary = results["summary"]
    self.assertEqual(set(summary), {"train", "DDIM-2"})
    self.assertTrue(all(v > 0 and np.isfinite(v) for e in summary.values() for v in e["ours_images_per_s"]))
    self.assertNotIn("ratios", summary["train"])   # no reference given
    self.assertIn("Host CPU:", proc.stdout)
    self.assertIn("XLA_FLAGS=", proc.stdout)
    self.assertIn("malloc keeps freed memory: yes", proc.stdout)


if __name__ == "__main__":
  absltest.main()
