"""The authors' PyTorch training step and DDIM sampler, timed on the CPU for `benchmark_side_by_side`.

Standalone on purpose: it imports only torch, numpy and the user's guided-diffusion checkout (openai's or the
authors' yuhuUSTC/Debias fork), never debias_jax or JAX, so that any Python with torch runs it as a file:

    /path/to/torch-python debias_jax/benchmark_torch.py --checkout /path/to/Debias --spec spec.json --serve

The training step is the checkout's `TrainLoop.run_step` without logging or data loading (`TrainLoop` itself
needs MPI and blobfile): `MixedPrecisionTrainer` zero_grad, `UniformSampler` timesteps, the diffusion's
`training_losses` (the hybrid loss with learned variances), backward, `MixedPrecisionTrainer.optimize` (its grad
and param norms, then AdamW) and `nn.update_ema`. Sampling is `ddim_sample_loop` on the respaced `ddimN`
diffusion. With --serve the process prepares the model once, then answers one JSON command per stdin line
({"op": "train", "steps": 3}, {"op": "ddim", "steps": 10, "batch": 16, "batches": 1}, {"op": "profile_train"},
{"op": "profile_ddim", ...}, {"op": "quit"}) with one line `@@result {json}` on stdout; anything else printed
(the checkout's own messages) is not part of the protocol.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import sys
import time

RESULT_PREFIX = "@@result "

# Profiler operator names -> the categories of the side-by-side profile (first match wins; the rest is "other").
TORCH_CATEGORIES = (
    ("convolution backward (input + weight)", ("convolution_backward",)),
    ("convolution forward", ("aten::convolution", "aten::_convolution", "aten::mkldnn_convolution",
                             "aten::conv2d", "aten::conv1d")),
    ("GroupNorm + SiLU", ("group_norm", "silu", "native_group_norm")),
    ("attention (matmuls + softmax)", ("aten::bmm", "aten::baddbmm", "softmax", "aten::einsum")),
    ("linear layers", ("aten::addmm", "aten::mm", "aten::linear")),
    ("optimizer + EMA + norms", ("Optimizer.step", "aten::_foreach", "adamw", "aten::norm", "aten::linalg_vector_norm",
                                 "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt")),
)


def spec_kwargs(function, spec: dict) -> tuple[dict, list]:
  """The keyword arguments of `function` (a checkout's factory) found in spec, and the spec keys it lacks."""
  accepted = inspect.signature(function).parameters
  return ({k: v for k, v in spec.items() if k in accepted}, sorted(k for k in spec if k not in accepted))


class Reference:
  """The checkout's model, diffusion, AdamW and EMA for one spec (see benchmark_side_by_side.torch_spec)."""

  def __init__(self, checkout: str, spec: dict, threads: int):
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    if not os.path.isdir(os.path.join(checkout, "guided_diffusion")):
      raise SystemExit(f"--checkout {checkout!r} has no guided_diffusion/ folder: give the root of a "
                       f"guided-diffusion checkout (openai/guided-diffusion or yuhuUSTC/Debias).")
    sys.path.insert(0, os.path.abspath(checkout))
    from guided_diffusion import fp16_util, logger, resample, script_util  # pylint: disable=g-import-not-at-top
    from guided_diffusion import nn as gd_nn  # pylint: disable=g-import-not-at-top
    logger.configure(dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"benchmark_torch_{os.getpid()}"),
                     format_strs=[])
    self.torch, self.np, self.script_util, self.gd_nn = torch, np, script_util, gd_nn
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    args = script_util.model_and_diffusion_defaults()
    args.update(spec["model_and_diffusion"])
    kwargs, self.ignored = spec_kwargs(script_util.create_model_and_diffusion, args)
    self.model_and_diffusion = kwargs
    self.model, self.diffusion = script_util.create_model_and_diffusion(**kwargs)
    self.model.train()
    self.batch_size, self.image_size = int(spec["batch_size"]), int(kwargs["image_size"])
    self.channels = int(spec["channels"])
    self.num_classes = int(spec["num_classes"]) if kwargs.get("class_cond") else 0
    self.mp = fp16_util.MixedPrecisionTrainer(model=self.model, use_fp16=False)
    self.opt = torch.optim.AdamW(self.mp.master_params, lr=float(spec["lr"]), weight_decay=float(spec["weight_decay"]))
    self.ema_rate = float(spec["ema_rate"])
    # bfloat16: the forward passes under torch's CPU autocast (convolutions and matmuls in bfloat16, norms and the
    # loss in float32, float32 params), the counterpart of our model.dtype="bfloat16".
    self.autocast = str(spec.get("autocast") or "")
    self.ema = copy.deepcopy(self.mp.master_params)
    self.schedule_sampler = resample.UniformSampler(self.diffusion)
    gen = torch.Generator().manual_seed(0)
    shape = (self.batch_size, self.channels, self.image_size, self.image_size)
    self.images = torch.rand(shape, generator=gen) * 2 - 1
    self.labels = torch.randint(0, max(self.num_classes, 1), (self.batch_size,), generator=gen)
    self.params = sum(p.numel() for p in self.model.parameters())

  def system_info(self) -> dict:
    return system_info()

  def _cond(self, labels):
    return {"y": labels} if self.num_classes else {}

  def _forward_context(self):
    torch = self.torch
    return torch.autocast("cpu", dtype=getattr(torch, self.autocast or "bfloat16"), enabled=bool(self.autocast))

  def train_step(self):
    """TrainLoop.run_step (one microbatch, fp32) without logging."""
    self.mp.zero_grad()
    t, weights = self.schedule_sampler.sample(self.batch_size, "cpu")
    # Backward inside the autocast context as well: guided-diffusion's attention blocks always checkpoint, and its
    # checkpoint function reruns their forward during backward without restoring the autocast state.
    with self._forward_context():
      losses = self.diffusion.training_losses(self.model, self.images, t, model_kwargs=self._cond(self.labels))
      self.mp.backward((losses["loss"] * weights).mean())
    if self.mp.optimize(self.opt):
      self.gd_nn.update_ema(self.ema, self.mp.master_params, rate=self.ema_rate)

  def time_train(self, steps: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
      self.train_step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
      self.train_step()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {"steps": steps, "batch_size": self.batch_size, "seconds": seconds, "process_cpu_seconds": cpu_seconds,
            "ms_per_step": 1000 * seconds / steps, "images_per_s": steps * self.batch_size / seconds}

  def _ddim(self, steps: int, batch: int, seed: int):
    torch = self.torch
    args = dict(self.model_and_diffusion, timestep_respacing=f"ddim{steps}")
    diffusion_args, _ = spec_kwargs(self.script_util.create_gaussian_diffusion, {
        "steps": args["diffusion_steps"], **args})
    diffusion = self.script_util.create_gaussian_diffusion(**diffusion_args)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((batch, self.channels, self.image_size, self.image_size), generator=gen)
    labels = torch.arange(batch) % max(self.num_classes, 1)
    self.model.eval()
    try:
      with torch.no_grad(), self._forward_context():
        return diffusion.ddim_sample_loop(self.model, noise.shape, noise=noise, clip_denoised=True,
                                          model_kwargs=self._cond(labels), eta=0.0)
    finally:
      self.model.train()

  def time_ddim(self, steps: int, batch: int, batches: int = 1, warmup: int = 1) -> dict:
    for b in range(warmup):
      self._ddim(min(steps, 2), batch, b)
    start, cpu = time.perf_counter(), time.process_time()
    for b in range(batches):
      self._ddim(steps, batch, 100 + b)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {"steps": steps, "batch_size": batch, "batches": batches, "seconds": seconds,
            "process_cpu_seconds": cpu_seconds, "images_per_s": batches * batch / seconds}

  def profile_train(self) -> dict:
    return self.profile(self.train_step)

  def profile_ddim(self, steps: int, batch: int) -> dict:
    return self.profile(lambda: self._ddim(steps, batch, 0))

  def profile(self, fn) -> dict:
    """Self CPU time per operator category of one call of fn (after one untimed call), in milliseconds."""
    from torch import profiler  # pylint: disable=g-import-not-at-top
    fn()
    start = time.perf_counter()
    with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
      fn()
    wall = time.perf_counter() - start
    totals, ops = {}, {}
    for event in prof.key_averages():
      ms = event.self_cpu_time_total / 1000.0
      ops[event.key] = ops.get(event.key, 0.0) + ms
      totals[categorise(event.key)] = totals.get(categorise(event.key), 0.0) + ms
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:25]
    return {"wall_ms": 1000 * wall, "categories_ms": totals, "top_ops_ms": top}


def categorise(name: str) -> str:
  lowered = name.lower()
  for category, needles in TORCH_CATEGORIES:
    if any(n.lower() in lowered for n in needles):
      return category
  return "other (elementwise, copies, loss)"


def system_info() -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  model = ""
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  except OSError:
    pass
  return {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_model": model,
          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
          "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def serve(worker, stdin=sys.stdin, stdout=sys.stdout, **hello):
  """Answers JSON commands, one per line, until {"op": "quit"} or end of input: the protocol of both workers.

  `worker` has time_train, time_ddim, profile_train and profile_ddim; the first line sent, {"ready": true,
  **hello}, says what it runs.
  """
  def reply(obj):
    stdout.write(RESULT_PREFIX + json.dumps(obj) + "\n")
    stdout.flush()

  reply({"ready": True, **hello})
  for line in stdin:
    if not line.strip():
      continue
    cmd = json.loads(line)
    op = cmd.get("op")
    if op == "quit":
      break
    if op == "train":
      reply(worker.time_train(int(cmd.get("steps", 3)), int(cmd.get("warmup", 1))))
    elif op == "ddim":
      reply(worker.time_ddim(int(cmd["steps"]), int(cmd["batch"]), int(cmd.get("batches", 1)),
                             int(cmd.get("warmup", 1))))
    elif op == "profile_train":
      reply(worker.profile_train())
    elif op == "profile_ddim":
      reply(worker.profile_ddim(int(cmd["steps"]), int(cmd["batch"])))
    else:
      reply({"error": f"unknown op {op!r}"})


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkout", required=True, help="root of a guided-diffusion checkout")
  parser.add_argument("--spec", required=True, help="JSON file (or JSON text) from benchmark_side_by_side")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--serve", action="store_true", help="answer JSON commands on stdin")
  parser.add_argument("--train_steps", type=int, default=3)
  args = parser.parse_args(argv)
  spec = json.loads(args.spec) if args.spec.lstrip().startswith("{") else json.load(open(args.spec))
  reference = Reference(args.checkout, spec, args.threads)
  if args.serve:
    serve(reference, system=reference.system_info(), params=reference.params, ignored_spec_keys=reference.ignored,
          autocast=reference.autocast)
  else:
    print(json.dumps({"system": system_info(), "train": reference.time_train(args.train_steps)}, indent=2))


if __name__ == "__main__":
  main()
