"""Throughput of the real training step and samplers on synthetic data: images/s, compile time, memory, FLOPs.

    python -m debias_jax.benchmark --config configs/paper/cifar10.py [--config.model.dtype=bfloat16] \
        [--train_steps 20] [--sample_batches 1] [--ddpm_steps 1000] [--output results.json]

The train step is train.make_train_step jitted exactly as train.train_and_evaluate jits it (state replicated over
the device mesh, batch split over its 'data' axis, state and metric sums donated, train.steps_per_call steps per
call); the samplers are generation.Generator's compiled programs. Inputs are synthetic arrays of the config's shape,
so the data pipeline is not measured. Each program is compiled ahead of time (compile time reported separately);
then the timed loop only dispatches calls and waits once, with block_until_ready, at the end.

FLOPs come from XLA's cost analysis of the compiled train step (forward, backward, optimiser and EMA); with
several devices the compiled program is the per-device one. On a known accelerator the achieved FLOP/s is also
given as a fraction of the device's peak (PEAKS); on CPU there is no peak and the figures are labelled CPU.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import re
import resource
import sys
import time
from typing import Any, Callable

from etils import epath
import jax
import numpy as np

from debias_jax import builders
from debias_jax import config_checks
from debias_jax import generation
from debias_jax import parallel
from debias_jax import train
from debias_jax import train_state
from debias_jax import xla_cpu
from debias_jax.models import unet

SYNTHETIC_NOTE = ("synthetic inputs of the config's shape (uniform images in [-1, 1], random labels); "
                  "the data pipeline is not measured")

# Dense peak TFLOP/s of one device (one GPU, one TPU chip) from the vendors' data sheets, matched in order
# against jax.devices()[0].device_kind. Columns: 16-bit (bfloat16/float16) matmuls; float32 matmuls at JAX's
# default precision (TF32 tensor cores on A100/H100/H200, one bfloat16 pass on TPU); float32 at 'highest'
# precision (true float32; None where the hardware emulates it with several passes).
PEAKS = (
    # (device_kind regex, name, bf16, float32 default precision, float32 highest)
    (r"H100.*PCIe", "NVIDIA H100 PCIe", 756.0, 378.0, 51.2),
    (r"H[12]00.*NVL", "NVIDIA H100/H200 NVL", 835.0, 418.0, 60.0),
    (r"H100|H200", "NVIDIA H100/H200 SXM", 989.0, 495.0, 67.0),
    (r"A100", "NVIDIA A100", 312.0, 156.0, 19.5),
    (r"^TPU v4$", "TPU v4", 275.0, 275.0, None),
    (r"^TPU v5( lite|e)$", "TPU v5e", 197.0, 197.0, None),
    (r"^TPU v5p?$", "TPU v5p", 459.0, 459.0, None),
    (r"^TPU v6( lite|e)$", "TPU v6e", 918.0, 918.0, None),
)
_HIGHEST = ("highest", "float32", "F32_F32_F32")
_HIGH = ("high", "tensorfloat32", "TF32_TF32_F32")


def peak_tflops(device_kind: str, compute_dtype: str, matmul_precision: str | None = None):
  """(peak TFLOP/s of one device for this compute dtype, a line saying which peak) or (None, why not)."""
  for pattern, name, bf16, f32_default, f32_highest in PEAKS:
    if re.search(pattern, device_kind, flags=re.IGNORECASE):
      break
  else:
    return None, f"no peak known for device kind {device_kind!r}"
  if compute_dtype in ("bfloat16", "float16"):
    return bf16, f"{name} dense 16-bit peak"
  precision = str(matmul_precision or "default")
  tpu = name.startswith("TPU")
  if precision in _HIGHEST:
    return (None, f"{name}: float32 at 'highest' precision is emulated") if tpu else (
        f32_highest, f"{name} dense float32 peak (matmul precision 'highest')")
  if precision in _HIGH:
    return (None, f"{name}: float32 at 'high' precision is emulated") if tpu else (
        f32_default, f"{name} dense TF32 peak (matmul precision 'high')")
  return f32_default, (f"{name} dense {'bfloat16' if tpu else 'TF32'} peak (float32 matmuls at JAX's default "
                       f"precision)")


def peak_memory() -> dict:
  """The largest device peak_bytes_in_use over local devices, or the process's peak RSS where devices have none."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  if stats and all(s and "peak_bytes_in_use" in s for s in stats):
    return {"bytes": int(max(s["peak_bytes_in_use"] for s in stats)),
            "kind": "device peak_bytes_in_use (max over local devices)"}
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rss *= 1 if sys.platform == "darwin" else 1024   # bytes on macOS, KiB on Linux
  return {"bytes": int(rss), "kind": "process peak RSS (host memory, includes compilation)"}


def _cost(compiled_or_lowered) -> dict:
  try:
    cost = compiled_or_lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends have none)
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def _memory_analysis(compiled) -> dict:
  """XLA's static sizes of the compiled program (per device): arguments, outputs, aliased (donated), temporaries."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if m is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
  out = {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}
  if len(out) >= 4:
    out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                          - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  return out


def _compile(jitted, *args):
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lowered_at - start, time.perf_counter() - lowered_at


def _local(global_size: int) -> int:
  return global_size // jax.process_count()


def synthetic_batch(config, mesh, batch_size: int, steps_per_call: int, seed: int = 0) -> dict:
  """A global batch sharded like the training loop's: images (B,H,W,C) in [-1, 1] and labels, with a leading
  axis of steps when steps_per_call > 1."""
  rng = np.random.default_rng(seed + jax.process_index())
  lead = (steps_per_call,) if steps_per_call > 1 else ()
  size, channels = int(config.data.image_size), int(config.data.channels)
  local = lead + (_local(batch_size),)
  classes = max(int(config.data.num_classes), 1)
  batch = {"image": rng.uniform(-1.0, 1.0, local + (size, size, channels)).astype(np.float32),
           "label": rng.integers(0, classes, local).astype(np.int32)}
  return parallel.global_batch(batch, mesh, len(lead))


def _train_flops_per_step(config, model, schedule, state, sums, batch, devices: int):
  """FLOPs of one training step on one device: XLA's count for the one-step program, before optimisation.

  Traced with a UNet on XLA's own convolutions (`lax.conv_general_dilated` instead of the model's), so that the
  figure is the model's arithmetic whatever a backend does with it: cost analysis counts a while loop's body once,
  and the compiled program may loop over steps_per_call steps or over the nine taps of the CPU weight gradient
  (models/conv.py).
  """
  one = config.copy_and_resolve_references()
  one.train.steps_per_call = 1
  lead = int(config.train.steps_per_call) > 1
  abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  one_batch = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((x.shape[lead] // devices,) + x.shape[lead + 1:], x.dtype), batch)
  plain = model.clone(conv=jax.lax.conv_general_dilated)
  lowered = jax.jit(train.make_train_step(one, plain, schedule)).lower(abstract(state), abstract(sums), one_batch)
  flops = _cost(lowered).get("flops")
  return float(flops) if flops and flops > 0 else None


def loss_dtype(config, model, schedule, params, batch) -> str:
  """The dtype of the training loss that train.make_train_step differentiates (from shapes only, no FLOPs)."""
  loss_fn = builders.loss_fn(config, schedule)
  conditional = int(config.data.num_classes) > 0
  key = jax.random.key(0)

  def loss(p, images, labels):
    predict = lambda x, t: model.apply({"params": p}, x, t, labels if conditional else None, train=True,
                                       rngs={"dropout": key})
    return loss_fn(predict, images, key)[0]

  one_step = lambda x: jax.ShapeDtypeStruct(x.shape[-4:] if x.ndim >= 4 else x.shape[-1:], x.dtype)
  return str(jax.eval_shape(loss, params, one_step(batch["image"]), one_step(batch["label"])).dtype)


def benchmark_train(config, mesh, model, schedule, *, steps: int, warmup_calls: int, log: Callable) -> tuple:
  """Times the jitted train step; returns (figures, final state)."""
  steps_per_call = int(config.train.steps_per_call)
  batch_size = int(config.train.batch_size)
  devices = mesh.devices.size
  replicated = parallel.replicated(mesh)
  state = jax.jit(lambda rng: train_state.create_train_state(config, model, rng),
                  out_shardings=replicated)(jax.random.key(int(config.seed)))
  fresh_sums = jax.jit(lambda: train.init_metric_sums(schedule.num_steps), out_shardings=replicated)
  sums = fresh_sums()
  batch = synthetic_batch(config, mesh, batch_size, steps_per_call, int(config.seed))
  step_fn = jax.jit(train.make_train_step(config, model, schedule),
                    in_shardings=(replicated, replicated, parallel.batch_sharding(mesh, int(steps_per_call > 1))),
                    out_shardings=(replicated, replicated), donate_argnums=(0, 1))
  log(f"Compiling the train step ({steps_per_call} step(s) per call, global batch {batch_size}) ...")
  compiled, lower_s, compile_s = _compile(step_fn, state, sums, batch)
  flops_per_step = _train_flops_per_step(config, model, schedule, state, sums, batch, devices)

  for _ in range(warmup_calls):
    state, sums = compiled(state, sums, batch)
  jax.block_until_ready((state, sums))
  calls = max(1, math.ceil(steps / steps_per_call))
  log(f"Timing {calls} call(s) = {calls * steps_per_call} train steps ...")
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(calls):
    state, sums = compiled(state, sums, batch)
  jax.block_until_ready((state, sums))
  seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
  if int(jax.device_get(sums["first_nonfinite_step"])) != train.NO_NONFINITE_STEP:
    log("Warning: the loss became non-finite during the benchmark (the timing is still valid).")

  timed_steps = calls * steps_per_call
  images_per_s = timed_steps * batch_size / seconds
  out = {"batch_size": batch_size, "steps_per_call": steps_per_call, "warmup_calls": warmup_calls,
         "timed_calls": calls, "timed_steps": timed_steps, "seconds": seconds, "process_cpu_seconds": cpu_seconds,
         "ms_per_step": 1000.0 * seconds / timed_steps, "images_per_s": images_per_s,
         "images_per_s_per_device": images_per_s / devices, "lower_s": lower_s, "compile_s": compile_s,
         "loss_dtype": loss_dtype(config, model, schedule, state.params, batch),
         "xla_memory_per_device": _memory_analysis(compiled)}
  if flops_per_step:
    # The compiled program is the per-device program: it holds batch_size / devices examples.
    out["flops_per_step_per_device"] = flops_per_step
    out["gflops_per_image"] = flops_per_step * devices / batch_size / 1e9
    out["achieved_tflops_per_s_per_device"] = flops_per_step * timed_steps / seconds / 1e12
    out["achieved_tflops_per_s"] = out["achieved_tflops_per_s_per_device"] * devices
  mem = peak_memory()
  out["peak_memory_bytes"], out["peak_memory_kind"] = mem["bytes"], mem["kind"]
  return out, state


def benchmark_sampler(config, mesh, model, schedule, params, *, sampler: str, steps: int, batch_size: int,
                      batches: int, warmup_batches: int, log: Callable) -> dict:
  """Times generation.Generator's compiled program for (sampler, steps) on `batches` batches of `batch_size`,
  after `warmup_batches` untimed ones (a program's first run pays one-off costs)."""
  devices = mesh.devices.size
  batch_size = max(devices, batch_size - batch_size % devices)
  generator = generation.Generator(config, model, mesh, schedule)
  jitted = generator.program(sampler, str(steps))  # the very same program
  rng = np.random.default_rng(1 + jax.process_index())
  local = (_local(batch_size),) + generator.image_shape
  inputs = parallel.global_batch({"x_T": rng.standard_normal(local).astype(np.float32),
                                  "labels": generator.labels(local[0])},
                                 mesh)
  x_T, labels = inputs["x_T"], inputs["labels"]
  key = jax.random.key(int(config.seed))
  log(f"Compiling {sampler.upper()}-{steps} (batch {batch_size}) ...")
  compiled, lower_s, compile_s = _compile(jitted, params, x_T, labels, key)
  keys = [jax.random.fold_in(key, b) for b in range(warmup_batches + batches)]
  if warmup_batches:
    log(f"Warm-up: {warmup_batches} batch(es) ...")
    jax.block_until_ready([compiled(params, x_T, labels, k) for k in keys[:warmup_batches]])
  keys = jax.block_until_ready(keys[warmup_batches:])
  log(f"Timing {batches} batch(es) of {sampler.upper()}-{steps} ...")
  start, cpu_start = time.perf_counter(), time.process_time()
  outputs = [compiled(params, x_T, labels, k) for k in keys]
  jax.block_until_ready(outputs)
  seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
  images_per_s = batches * batch_size / seconds
  out = {"sampler": sampler, "steps": steps, "batch_size": batch_size, "warmup_batches": warmup_batches,
         "batches": batches, "seconds": seconds, "process_cpu_seconds": cpu_seconds,
         "images_per_s": images_per_s, "images_per_s_per_device": images_per_s / devices,
         "network_evals_per_s": images_per_s * steps, "lower_s": lower_s, "compile_s": compile_s,
         "xla_memory_per_device": _memory_analysis(compiled)}
  mem = peak_memory()
  out["peak_memory_bytes"], out["peak_memory_kind"] = mem["bytes"], mem["kind"]
  return out


def _check_counts(**counts: tuple[int, int]) -> None:
  """Each count (value, minimum) is an integer >= its minimum; a ValueError names the first that is not."""
  for name, (value, minimum) in counts.items():
    if not isinstance(value, (int, np.integer)) or value < minimum:
      raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _system(devices, precision) -> dict:
  """The machine the figures were measured on."""
  return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
          "num_devices": len(devices), "num_processes": jax.process_count(),
          "jax_version": jax.__version__, "cpu_model": xla_cpu.cpu_model(), "cpu_count": os.cpu_count(),
          "cpu_threads": xla_cpu.usable_cores(),
          "load_average_start": list(os.getloadavg()), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "malloc_reuses_freed_memory": xla_cpu.reusing_freed_memory(),
          "matmul_precision": str(precision or "default")}


def _benchmark_samplers(config, mesh, model, schedule, params, *, sample_batches: int, sample_warmup_batches: int,
                        batch_size: int, ddim_steps: int, ddpm_steps: int, log: Callable) -> dict:
  """DDIM and DDPM figures ({"skipped": True} for a sampler with 0 steps, or for both with sample_batches=0); DDPM
  on fewer than 1000 steps adds its estimate at 1000 steps."""
  results = {}
  for sampler, steps in (("ddim", ddim_steps), ("ddpm", ddpm_steps)):
    if sample_batches == 0 or steps == 0:
      results[sampler] = {"skipped": True}
      continue
    figures = benchmark_sampler(config, mesh, model, schedule, params, sampler=sampler, steps=steps,
                                batch_size=batch_size, batches=sample_batches, warmup_batches=sample_warmup_batches,
                                log=log)
    if sampler == "ddpm" and steps != 1000:
      figures["estimated_images_per_s_at_1000_steps"] = figures["images_per_s"] * steps / 1000.0
    results[sampler] = figures
  return results


def run(config, *, train_steps: int = 10, warmup_calls: int = 1, sample_batches: int = 1,
        sample_warmup_batches: int = 1, sample_batch_size: int | None = None, ddim_steps: int = 50,
        ddpm_steps: int = 1000,
        log: Callable[[str], Any] = functools.partial(print, flush=True)) -> dict:
  """Benchmarks training and sampling for `config`; returns every figure as a JSON-ready dict.

  sample_batches=0 skips sampling; ddim_steps=0 or ddpm_steps=0 skips that sampler. ddpm_steps < 1000 runs DDPM
  on a respaced chain of that many steps (the same per-step program) and extrapolates to 1000 steps, labelled as
  an estimate.
  """
  _check_counts(train_steps=(train_steps, 1), warmup_calls=(warmup_calls, 0), sample_batches=(sample_batches, 0),
                sample_warmup_batches=(sample_warmup_batches, 0), ddim_steps=(ddim_steps, 0),
                ddpm_steps=(ddpm_steps, 0))
  mesh = parallel.create_mesh()
  config_checks.validate(config, "train", mesh.devices.size)
  model = builders.create_model(config)
  schedule = builders.schedule(config)
  devices = jax.devices()
  compute_dtype = str(config.model.dtype)
  precision = jax.config.jax_default_matmul_precision
  peak, peak_source = peak_tflops(devices[0].device_kind, compute_dtype, precision)
  if devices[0].platform == "cpu":
    peak, peak_source = None, "CPU: no peak table (figures are CPU measurements)"

  results = {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "synthetic_data": True, "data_note": SYNTHETIC_NOTE,
      "system": _system(devices, precision),
      "model": {"image_size": int(config.data.image_size), "channels": int(config.data.channels),
                "num_classes": int(config.data.num_classes), "params": unet.param_count(model),
                "dtype": compute_dtype, "remat": bool(config.model.remat)},
  }
  log(f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}); {SYNTHETIC_NOTE}.")
  results["train"], state = benchmark_train(config, mesh, model, schedule, steps=train_steps,
                                            warmup_calls=warmup_calls, log=log)
  t = results["train"]
  t["peak_tflops_per_device"], t["peak_source"] = peak, peak_source
  if peak and "achieved_tflops_per_s_per_device" in t:
    t["fraction_of_peak"] = t["achieved_tflops_per_s_per_device"] / peak
  results["sampling"] = _benchmark_samplers(
      config, mesh, model, schedule, state.ema_params[0], sample_batches=sample_batches,
      sample_warmup_batches=sample_warmup_batches, batch_size=int(sample_batch_size or config.sampling.batch_size),
      ddim_steps=ddim_steps, ddpm_steps=ddpm_steps, log=log)
  results["system"]["load_average_end"] = list(os.getloadavg())
  results["peak_memory"] = peak_memory()
  return results


# ----------------------------------------------------------------------------------------------------------------
# Reporting.

def _num(x, digits: int = 3) -> str:
  if x is None:
    return "n/a"
  if isinstance(x, (int, np.integer)):
    return f"{x:,}"
  if x == 0 or 1e-3 <= abs(x) < 1e5:
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:,.{max(0, digits - len(str(int(abs(x)))))}f}"
  return f"{x:.{digits}e}"


def _bytes(n) -> str:
  if n is None:
    return "n/a"
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
    n /= 1024.0
  return str(n)


def _table(rows) -> str:
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _cpu_text(figures) -> str:
  cpu, wall = figures["process_cpu_seconds"], figures["seconds"]
  return f"{_num(cpu)} s in {_num(wall)} s wall ({_num(cpu / wall)} cores busy on average)"


def format_report(results: dict) -> str:
  """Readable tables of every figure in `results`."""
  s, m, t = results["system"], results["model"], results["train"]
  platform = s["platform"].upper()
  lines = [f"debias_jax benchmark, {results['date']}: {s['num_devices']} x {s['device_kind']} ({platform}"
           + (f", {s['cpu_model']}, {s['cpu_count']} cores" if s["platform"] == "cpu" else "") + ")",
           f"Data: {results['data_note']}.",
           f"Host: {s['cpu_model'] or 'unknown CPU'}, {s.get('cpu_threads') or s['cpu_count']} thread(s) of "
           f"{s['cpu_count']} CPUs; XLA_FLAGS={s['xla_flags'] or '(none)'}; malloc keeps freed memory: "
           f"{'yes' if s.get('malloc_reuses_freed_memory') else 'no'}; jax {s['jax_version']}.",
           f"Load average (1/5/15 min) at start {s['load_average_start'][0]:.2f}/{s['load_average_start'][1]:.2f}/"
           f"{s['load_average_start'][2]:.2f}, at end {s['load_average_end'][0]:.2f}/"
           f"{s['load_average_end'][1]:.2f}/{s['load_average_end'][2]:.2f}.",
           f"Model: {m['image_size']}x{m['image_size']}x{m['channels']}, {m['num_classes']} classes, "
           f"{m['params']:,} params, compute dtype {m['dtype']}, remat {m['remat']}.",
           "", f"Training ({platform})"]
  rows = [("global batch", _num(t["batch_size"])), ("steps per call", _num(t["steps_per_call"])),
          ("timed steps", f"{t['timed_steps']} ({t['timed_calls']} calls after {t['warmup_calls']} warm-up)"),
          ("time per step", f"{_num(t['ms_per_step'])} ms"),
          ("process CPU time", _cpu_text(t)),
          ("images/s (total)", _num(t["images_per_s"])),
          ("images/s per device", _num(t["images_per_s_per_device"])),
          ("compile time", f"{_num(t['compile_s'])} s (+ {_num(t['lower_s'])} s tracing/lowering)"),
          ("loss dtype", t["loss_dtype"]),
          ("GFLOPs per image (train step)", _num(t.get("gflops_per_image"))),
          ("achieved TFLOP/s per device", _num(t.get("achieved_tflops_per_s_per_device"))),
          ("peak TFLOP/s per device", f"{_num(t['peak_tflops_per_device'])} ({t['peak_source']})"),
          ("fraction of peak", _num(t.get("fraction_of_peak"))),
          ("XLA memory per device", _bytes(t["xla_memory_per_device"].get("total_bytes"))
           + " (arguments + outputs - donated + temporaries)"),
          ("peak memory so far", f"{_bytes(t['peak_memory_bytes'])} ({t['peak_memory_kind']})")]
  lines.append(_table(rows))
  for name, f in results["sampling"].items():
    lines += ["", f"Sampling {name.upper()} ({platform})"]
    if f.get("skipped"):
      lines.append("  skipped")
      continue
    rows = [("steps (network evaluations)", _num(f["steps"])), ("batch", _num(f["batch_size"])),
            ("timed batches", f"{f['batches']} (after {f['warmup_batches']} warm-up)"),
            ("seconds", _num(f["seconds"])), ("process CPU time", _cpu_text(f)),
            ("images/s (total)", _num(f["images_per_s"])),
            ("images/s per device", _num(f["images_per_s_per_device"])),
            ("compile time", f"{_num(f['compile_s'])} s (+ {_num(f['lower_s'])} s tracing/lowering)"),
            ("peak memory so far", f"{_bytes(f['peak_memory_bytes'])} ({f['peak_memory_kind']})")]
    if "estimated_images_per_s_at_1000_steps" in f:
      rows.insert(5, ("images/s at 1000 steps", f"{_num(f['estimated_images_per_s_at_1000_steps'])} "
                                                f"(estimate: x {f['steps']}/1000)"))
    lines.append(_table(rows))
  return "\n".join(lines)


def readme_row(results: dict, name: str) -> str:
  """One markdown row: config | batch | train img/s | DDIM-50 img/s | DDPM-1000 img/s | compile s | peak mem | GFLOPs/img."""
  t, samp = results["train"], results["sampling"]
  ddim = samp["ddim"]
  ddim_text = "skipped" if ddim.get("skipped") else f"{_num(ddim['images_per_s'])} (DDIM-{ddim['steps']})"
  if ddim_text.endswith("(DDIM-50)"):
    ddim_text = _num(ddim["images_per_s"])
  ddpm = samp["ddpm"]
  if ddpm.get("skipped"):
    ddpm_text = "skipped"
  elif ddpm["steps"] == 1000:
    ddpm_text = _num(ddpm["images_per_s"])
  else:
    ddpm_text = f"~{_num(ddpm['estimated_images_per_s_at_1000_steps'])} (from DDPM-{ddpm['steps']})"
  compile_s = [t["compile_s"]] + [f["compile_s"] for f in samp.values() if not f.get("skipped")]
  compile_text = " / ".join(_num(c) for c in compile_s)
  return (f"| {name} | {t['batch_size']} | {_num(t['images_per_s'])} | {ddim_text} | {ddpm_text} | {compile_text} "
          f"| {_bytes(results['peak_memory']['bytes'])} | {_num(t.get('gflops_per_image'))} |")


# ----------------------------------------------------------------------------------------------------------------
# Command line.

def define_flags(flag_values=None, argv=None):
  """Defines the command line's flags on `flag_values` (absl's global FLAGS by default) and returns it.

  `argv` is the command line to be parsed when it is not sys.argv (ml_collections finds --config.* overrides in it).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS if flag_values is None else flag_values
  config_flags.DEFINE_config_file("config", None, "Path to a config file (see configs/).", flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_integer("train_steps", 10, "Train steps to time (rounded up to whole calls of steps_per_call).",
                       flag_values=fv)
  flags.DEFINE_integer("warmup_calls", 1, "Untimed train-step calls after compilation.", flag_values=fv)
  flags.DEFINE_integer("sample_batches", 1, "Batches to time per sampler (0 skips sampling).", flag_values=fv)
  flags.DEFINE_integer("sample_warmup_batches", 1, "Untimed batches per sampler after compilation.",
                       flag_values=fv)
  flags.DEFINE_integer("sample_batch_size", 0, "Sampling batch (0 = config.sampling.batch_size).", flag_values=fv)
  flags.DEFINE_integer("ddim_steps", 50, "DDIM steps (0 skips DDIM).", flag_values=fv)
  flags.DEFINE_integer("ddpm_steps", 1000, "DDPM steps (0 skips DDPM; fewer than 1000 extrapolates to 1000).",
                       flag_values=fv)
  flags.DEFINE_string("output", "", "Write the figures as JSON to this path.", flag_values=fv)
  flags.mark_flags_as_required(["config"], flag_values=fv)
  return fv


def run_from_flags(flag_values) -> dict:
  """Runs the benchmark from parsed flags, prints the tables and a README row, writes --output; returns figures."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  f = flag_values
  results = run(f.config, train_steps=f.train_steps, warmup_calls=f.warmup_calls, sample_batches=f.sample_batches,
                sample_warmup_batches=f.sample_warmup_batches, sample_batch_size=f.sample_batch_size or None,
                ddim_steps=f.ddim_steps, ddpm_steps=f.ddpm_steps)
  overrides = [f"--config.{k}={v}" for k, v in config_flags.get_override_values(f["config"]).items()]
  name = " ".join([config_flags.get_config_filename(f["config"])] + overrides)
  results["command"] = " ".join(["python -m debias_jax.benchmark", f"--config={name.split()[0]}"] + overrides
                                + [f"--{k}={f[k].value}" for k in ("train_steps", "warmup_calls", "sample_batches",
                                                                   "sample_warmup_batches", "sample_batch_size",
                                                                   "ddim_steps", "ddpm_steps")
                                   if f[k].present])
  print()
  print(format_report(results))
  print()
  print("README row:")
  print(readme_row(results, name))
  if f.output:
    path = epath.Path(f.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"Wrote {f.output}")
  return results


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  xla_cpu.prefer_wide_vectors()  # before JAX starts its backends
  xla_cpu.reuse_freed_memory()
  run_from_flags(flags.FLAGS)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
