"""Our training step and DDIM sampler beside the authors' PyTorch ones, on this CPU, timed in turn.

    python -m debias_jax.benchmark_side_by_side --config configs/paper/cifar10.py \
        --reference_checkout /path/to/Debias [--reference_python /path/to/python-with-torch] \
        [--threads 2] [--rounds 3] [--train_steps 3] [--ddim_steps 10] [--sample_batch_size 16] [--profile]

Two worker processes, each limited to --threads CPUs (affinity, and torch.set_num_threads): one runs
debias_jax's jitted train step and DDIM program (as benchmark.py builds them), the other `benchmark_torch.py`
with the user's guided-diffusion checkout (openai/guided-diffusion or the authors' yuhuUSTC/Debias; torch from
`pip install -e '.[torch]'` or any other Python given by --reference_python). Both prepare once, then the driver
asks them for the same measurement in turn, round after round, so that a machine whose speed drifts affects both
alike, and prints each round's images/s and their ratio (ours / theirs: above 1 is faster). Without
--reference_checkout only our side runs. --profile adds one traced step of each, per op category
(benchmark_profile for ours, torch.profiler for theirs).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

from debias_jax import benchmark_torch
from debias_jax import xla_cpu

TORCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark_torch.py")


def torch_spec(config) -> dict:
  """The guided-diffusion arguments (script_util.create_model_and_diffusion) of a debias_jax config."""
  m, d = config.model, config.data
  from debias_jax.models import unet  # pylint: disable=g-import-not-at-top
  image_size = int(d.image_size)
  mult = unet.resolve_channel_mult(tuple(m.channel_mult), image_size)
  if any(float(x) != int(x) for x in mult):
    raise ValueError(f"model.channel_mult={mult} has fractions, which guided-diffusion's script_util cannot parse.")
  num_classes = int(d.num_classes)
  if str(config.diffusion.schedule) not in ("linear", "cosine"):
    raise ValueError(f"diffusion.schedule={config.diffusion.schedule!r} has no guided-diffusion counterpart.")
  model_and_diffusion = {
      "image_size": image_size, "num_channels": int(m.model_channels), "num_res_blocks": int(m.num_res_blocks),
      "channel_mult": ",".join(str(int(x)) for x in mult), "class_cond": num_classes > 0,
      "num_classes": max(num_classes, 1), "learn_sigma": bool(m.learn_sigma),
      "attention_resolutions": ",".join(str(int(r)) for r in m.attention_resolutions),
      "num_heads": int(m.num_heads), "num_head_channels": int(m.num_head_channels), "num_heads_upsample": -1,
      "use_scale_shift_norm": bool(m.use_scale_shift_norm), "resblock_updown": bool(m.resblock_updown),
      "dropout": float(m.dropout), "use_new_attention_order": bool(m.use_new_attention_order),
      "use_checkpoint": False, "use_fp16": False, "diffusion_steps": int(config.diffusion.num_timesteps),
      "noise_schedule": str(config.diffusion.schedule), "rescale_learned_sigmas": bool(m.learn_sigma),
      "predict_xstart": config.loss.target == "x0", "predict_v": config.loss.target == "v"}
  return {"model_and_diffusion": model_and_diffusion, "batch_size": int(config.train.batch_size),
          "channels": int(d.channels), "num_classes": num_classes, "lr": float(config.optim.learning_rate),
          "weight_decay": float(config.optim.weight_decay), "ema_rate": float(config.ema_rates[0]),
          # our bfloat16 compute (model.dtype) against torch's CPU autocast to bfloat16: a row of its own
          "autocast": "bfloat16" if str(m.dtype) == "bfloat16" else ""}


def limit_cpus(threads: int) -> list[int]:
  """Pins this process to its first `threads` allowed CPUs (before JAX or torch starts); returns the CPUs."""
  cpus = sorted(os.sched_getaffinity(0))
  if threads < len(cpus):
    cpus = cpus[:threads]
    os.sched_setaffinity(0, cpus)
  return cpus


# ----------------------------------------------------------------------------------------------------------------
# Our side, in a worker process.

class JaxWorker:
  """debias_jax's compiled train step and DDIM program for one config, answering benchmark_torch's commands."""

  def __init__(self, config):
    import jax  # pylint: disable=g-import-not-at-top
    from debias_jax import benchmark, builders, generation, parallel, train, train_state  # pylint: disable=g-import-not-at-top
    from debias_jax.models import unet  # pylint: disable=g-import-not-at-top
    self.jax, self.benchmark, self.config = jax, benchmark, config
    self.mesh = parallel.create_mesh()
    self.model = builders.create_model(config)
    self.schedule = builders.schedule(config)
    replicated = parallel.replicated(self.mesh)
    self.state = jax.jit(lambda rng: train_state.create_train_state(config, self.model, rng),
                         out_shardings=replicated)(jax.random.key(int(config.seed)))
    self.sums = jax.jit(lambda: train.init_metric_sums(self.schedule.num_steps), out_shardings=replicated)()
    self.batch_size = int(config.train.batch_size)
    self.batch = benchmark.synthetic_batch(config, self.mesh, self.batch_size, 1, int(config.seed))
    step = jax.jit(train.make_train_step(config, self.model, self.schedule), donate_argnums=(0, 1))
    self.step, _, self.compile_s = benchmark._compile(step, self.state, self.sums, self.batch)  # pylint: disable=protected-access
    self.generator = generation.Generator(config, self.model, self.mesh, self.schedule)
    self.samplers = {}
    self.params = unet.param_count(self.model)

  def train_step(self):
    self.state, self.sums = self.step(self.state, self.sums, self.batch)
    self.jax.block_until_ready(self.state)

  def time_train(self, steps: int, warmup: int = 1) -> dict:
    import time  # pylint: disable=g-import-not-at-top
    for _ in range(warmup):
      self.train_step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
      self.state, self.sums = self.step(self.state, self.sums, self.batch)
    self.jax.block_until_ready((self.state, self.sums))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {"steps": steps, "batch_size": self.batch_size, "seconds": seconds, "process_cpu_seconds": cpu_seconds,
            "ms_per_step": 1000 * seconds / steps, "images_per_s": steps * self.batch_size / seconds,
            "compile_s": self.compile_s}

  def _sampler(self, steps: int, batch: int):
    import numpy as np  # pylint: disable=g-import-not-at-top
    from debias_jax import parallel  # pylint: disable=g-import-not-at-top
    if (steps, batch) not in self.samplers:
      jitted = self.generator.program("ddim", str(steps))
      rng = np.random.default_rng(1)
      inputs = parallel.global_batch({
          "x_T": rng.standard_normal((batch,) + self.generator.image_shape).astype(np.float32),
          "labels": self.generator.labels(batch)}, self.mesh)
      args = (inputs["x_T"], inputs["labels"], self.jax.random.key(0))
      compiled, _, compile_s = self.benchmark._compile(jitted, self.state.ema_params[0], *args)  # pylint: disable=protected-access
      self.samplers[steps, batch] = (compiled, args, compile_s)
    compiled, args, compile_s = self.samplers[steps, batch]
    # The train step donates the state: take the EMA params it holds now.
    return compiled, (self.state.ema_params[0],) + args, compile_s

  def time_ddim(self, steps: int, batch: int, batches: int = 1, warmup: int = 1) -> dict:
    import time  # pylint: disable=g-import-not-at-top
    compiled, args, compile_s = self._sampler(steps, batch)
    for _ in range(warmup):
      self.jax.block_until_ready(compiled(*args))
    start, cpu = time.perf_counter(), time.process_time()
    self.jax.block_until_ready([compiled(*args[:3], self.jax.random.fold_in(args[3], b)) for b in range(batches)])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {"steps": steps, "batch_size": batch, "batches": batches, "seconds": seconds,
            "process_cpu_seconds": cpu_seconds, "images_per_s": batches * batch / seconds, "compile_s": compile_s}

  def profile_train(self) -> dict:
    from debias_jax import benchmark_profile  # pylint: disable=g-import-not-at-top
    untraced = self.time_train(1, warmup=0)["seconds"]
    copy = self.jax.jit(lambda tree: self.jax.tree.map(lambda x: x.copy(), tree))
    return benchmark_profile.profile(
        self.step, make_args=lambda: (copy(self.state), copy(self.sums), self.batch),
        attention_layers=benchmark_profile.attention_layer_names(self.model), untraced_seconds=untraced)

  def profile_ddim(self, steps: int, batch: int) -> dict:
    from debias_jax import benchmark_profile  # pylint: disable=g-import-not-at-top
    compiled, args, _ = self._sampler(steps, batch)
    untraced = self.time_ddim(steps, batch, 1, warmup=0)["seconds"]
    return benchmark_profile.profile(compiled, args, untraced_seconds=untraced,
                                     attention_layers=benchmark_profile.attention_layer_names(self.model))


def system_info() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  return {"jax_version": jax.__version__, "cpu_model": xla_cpu.cpu_model(),
          "cpus": sorted(os.sched_getaffinity(0)),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "malloc_reuses_freed_memory": xla_cpu.reusing_freed_memory(), "python": platform.python_version(),
          "device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count()}


def serve_jax(config, threads: int):
  """The JAX worker, answering benchmark_torch.serve's protocol."""
  worker = JaxWorker(config)
  benchmark_torch.serve(worker, system=system_info(), params=worker.params, threads=threads)


# ----------------------------------------------------------------------------------------------------------------
# The driver.

class Worker:
  """A worker subprocess speaking benchmark_torch's line protocol."""

  def __init__(self, name: str, argv: list[str], env: dict, log):
    self.name, self.log = name, log
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.hello = self._read()

  def _read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith(benchmark_torch.RESULT_PREFIX):
        result = json.loads(line[len(benchmark_torch.RESULT_PREFIX):])
        if "error" in result:
          raise RuntimeError(f"{self.name} worker: {result['error']}")
        return result
      self.log(f"  [{self.name}] {line.rstrip()}")
    raise RuntimeError(f"the {self.name} worker exited with code {self.proc.wait()} (its messages are above)")

  def ask(self, **cmd) -> dict:
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
      except BrokenPipeError:
        pass
      self.proc.wait(timeout=60)


def worker_env(threads: int, batch_sizes=()) -> dict:
  """The environment of a worker: the user's, with XLA's CPU settings (xla_cpu) and OpenMP at `threads`; given
  our batch sizes, the `threads` cores as that many CPU devices sharing each batch, as `main` and `compare` run."""
  env = dict(os.environ)
  xla_cpu.prefer_wide_vectors(env)
  if batch_sizes:
    xla_cpu.cores_as_devices(batch_sizes, env, cores=threads)
  env.setdefault("OMP_NUM_THREADS", str(threads))
  return env


def _config_argv(flag_values) -> list[str]:
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  overrides = [f"--config.{k}={v}" for k, v in config_flags.get_override_values(flag_values["config"]).items()]
  return [f"--config={config_flags.get_config_filename(flag_values['config'])}"] + overrides


def _ratio_line(name: str, ours: float, theirs: float | None) -> str:
  if theirs is None:
    return f"  {name:10s} debias_jax {ours:8.3f} img/s"
  return f"  {name:10s} debias_jax {ours:8.3f} img/s   PyTorch {theirs:8.3f} img/s   ratio {ours / theirs:5.2f}"


def _start_workers(f, threads: int, log) -> dict[str, Worker]:
  """Our worker, and the PyTorch one when --reference_checkout is given; each has prepared its programs."""
  env = worker_env(threads, (int(f.config.train.batch_size), sample_batch_size(f)) if f.cores_as_devices else ())
  ours_argv = [sys.executable, "-m", "debias_jax.benchmark_side_by_side", "--worker=jax",
               f"--threads={threads}"] + _config_argv(f)
  workers = {}
  try:
    log(f"Starting debias_jax ({threads} thread(s)); compiling the train step ...")
    workers["jax"] = Worker("debias_jax", ours_argv, env, log)
    if f.reference_checkout:
      spec = json.dumps(torch_spec(f.config))
      argv = [f.reference_python or sys.executable, TORCH_SCRIPT, "--checkout", f.reference_checkout, "--spec",
              spec, "--threads", str(threads), "--serve"]
      log(f"Starting the PyTorch reference ({argv[0]}, checkout {f.reference_checkout}) ...")
      workers["torch"] = Worker("PyTorch", _pinned(argv, threads), env, log)
  except BaseException:
    for w in workers.values():
      w.close()
    raise
  return workers


def _hello_line(workers: dict[str, Worker], threads: int, dtype: str) -> str:
  hello = workers["jax"].hello["system"]
  line = (f"Host CPU: {hello['cpu_model']}; {threads} thread(s) on CPUs {hello['cpus']}, ours as "
          f"{hello['num_devices']} device(s) computing in {dtype}; XLA_FLAGS={hello['xla_flags']!r}; "
          f"malloc keeps freed memory: {'yes' if hello.get('malloc_reuses_freed_memory') else 'no'}; "
          f"jax {hello['jax_version']}")
  if "torch" in workers:
    torch = workers["torch"].hello
    line += (f"; torch {torch['system']['torch_version']} ({torch['system']['cpu_capability']}, "
             f"{torch['system']['torch_threads']} threads, autocast {torch.get('autocast') or 'off'}), params "
             f"{torch['params']:,} vs ours {workers['jax'].hello['params']:,}")
  return line


def _summary(rounds: list[dict], names, with_torch: bool) -> dict:
  """Per measurement: our images/s per round and, with the reference, theirs, the ratios and their median."""
  summary = {}
  for name in names:
    ours = [row[name]["jax"]["images_per_s"] for row in rounds]
    entry = {"ours_images_per_s": ours}
    if with_torch:
      theirs = [row[name]["torch"]["images_per_s"] for row in rounds]
      ratios = [a / b for a, b in zip(ours, theirs)]
      entry.update(theirs_images_per_s=theirs, ratios=ratios, median_ratio=statistics.median(ratios))
    summary[name] = entry
  return summary


def _log_summary(summary: dict, log) -> None:
  log("\nSummary (images/s per round; ratio = debias_jax / PyTorch, measured in turn):")
  for name, entry in summary.items():
    line = f"  {name:10s} debias_jax " + ", ".join(f"{v:.3f}" for v in entry["ours_images_per_s"])
    if "ratios" in entry:
      line += ("; PyTorch " + ", ".join(f"{v:.3f}" for v in entry["theirs_images_per_s"])
               + "; ratios " + ", ".join(f"{v:.2f}" for v in entry["ratios"])
               + f" (median {entry['median_ratio']:.2f})")
    log(line)


def run(flag_values, log=print) -> dict:
  """Starts the workers, measures --rounds rounds in turn, prints and returns every figure."""
  f = flag_values
  threads = int(f.threads)
  workers = _start_workers(f, threads, log)
  try:
    results = {"threads": threads, "workers": {k: w.hello for k, w in workers.items()}, "rounds": []}
    log(_hello_line(workers, threads, str(f.config.model.dtype)))
    batch = sample_batch_size(f)
    commands = {"train": {"op": "train", "steps": int(f.train_steps)}}
    if f.ddim_steps:
      commands[f"DDIM-{f.ddim_steps}"] = {"op": "ddim", "steps": int(f.ddim_steps), "batch": batch}
    for r in range(int(f.rounds)):
      row = {}
      for name, cmd in commands.items():
        order = list(workers) if r % 2 == 0 else list(reversed(workers))
        row[name] = fastest_in_turn(workers, order, cmd, int(f.repeats), warmup=int(r == 0))
        theirs = row[name].get("torch", {}).get("images_per_s")
        log(f"round {r + 1}:" + _ratio_line(name, row[name]["jax"]["images_per_s"], theirs))
      results["rounds"].append(row)
    results["summary"] = _summary(results["rounds"], commands, "torch" in workers)
    _log_summary(results["summary"], log)
    if f.profile:
      results["profile"] = _profiles(workers, batch, int(f.ddim_steps or 10), log)
    return results
  finally:
    for w in workers.values():
      w.close()


def fastest_in_turn(workers: dict, order: list[str], cmd: dict, repeats: int, warmup: int) -> dict:
  """Each worker's fastest of `repeats` measurements of `cmd`, taken in turn (A B A B ...), with its images/s.

  On a machine shared with other jobs a measurement is only ever slowed down, so the fastest of a few is the
  steadier estimate of what each program can do; taking them in turn exposes both to the same conditions.
  """
  best = {}
  for i in range(repeats):
    for k in order:
      result = workers[k].ask(**cmd, warmup=warmup if i == 0 else 0)
      if k not in best or result["images_per_s"] > best[k]["images_per_s"]:
        best[k] = result
  return {k: dict(best[k], measurements=repeats) for k in order}


def sample_batch_size(flag_values) -> int:
  return int(flag_values.sample_batch_size or flag_values.config.sampling.batch_size)


def _pinned(argv: list[str], threads: int) -> list[str]:
  """argv run under `taskset` on the first `threads` allowed CPUs, where taskset exists and it limits anything."""
  cpus = sorted(os.sched_getaffinity(0))
  if threads >= len(cpus) or not any(os.access(os.path.join(p, "taskset"), os.X_OK)
                                     for p in os.environ.get("PATH", "").split(os.pathsep)):
    return argv
  return ["taskset", "-c", ",".join(map(str, cpus[:threads]))] + argv


def _profiles(workers: dict, batch: int, ddim_steps: int, log) -> dict:
  from debias_jax import benchmark_profile  # pylint: disable=g-import-not-at-top
  out = {}
  for what, cmd in (("train step", {"op": "profile_train"}),
                    (f"DDIM-{ddim_steps} batch {batch}", {"op": "profile_ddim", "steps": ddim_steps, "batch": batch})):
    out[what] = {k: w.ask(**cmd) for k, w in workers.items()}
    log("")
    log(benchmark_profile.format_profile(out[what]["jax"], f"debias_jax {what}"))
    if "torch" in out[what]:
      t = out[what]["torch"]
      log(f"PyTorch {what}: profiled call {t['wall_ms'] / 1000:.2f} s (self CPU time per category)")
      for c, ms in sorted(t["categories_ms"].items(), key=lambda kv: -kv[1]):
        log(f"  {c:45s} {ms:9.0f} ms")
  return out


def define_flags(flag_values=None, argv=None):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS if flag_values is None else flag_values
  config_flags.DEFINE_config_file("config", None, "Path to a config file (see configs/).", flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_string("reference_checkout", "", "Root of a guided-diffusion checkout (openai/guided-diffusion or "
                      "yuhuUSTC/Debias); empty runs our side only.", flag_values=fv)
  flags.DEFINE_string("reference_python", "", "Python with torch for the reference (default: this one).",
                      flag_values=fv)
  flags.DEFINE_integer("threads", 2, "CPUs (and threads) for each program.", flag_values=fv)
  flags.DEFINE_integer("rounds", 3, "Rounds of measurements, each program in turn.", flag_values=fv)
  flags.DEFINE_integer("repeats", 1, "Measurements per program, workload and round, taken in turn; each program's "
                       "fastest is reported (steadier on a shared machine).", flag_values=fv)
  flags.DEFINE_integer("train_steps", 3, "Train steps per measurement (after one untimed step).", flag_values=fv)
  flags.DEFINE_integer("ddim_steps", 10, "DDIM steps per sampling measurement (0 skips sampling).", flag_values=fv)
  flags.DEFINE_integer("sample_batch_size", 0, "Sampling batch (0 = config.sampling.batch_size).", flag_values=fv)
  flags.DEFINE_bool("cores_as_devices", True, "Our side as main runs it: each batch split over the --threads cores "
                    "as CPU devices when they divide it (xla_cpu.cores_as_devices); False: one device.",
                    flag_values=fv)
  flags.DEFINE_bool("profile", False, "Also profile one train step and one DDIM batch per op category.",
                    flag_values=fv)
  flags.DEFINE_string("output", "", "Write every figure as JSON to this path (local or gs://).", flag_values=fv)
  flags.DEFINE_enum("worker", "", ["", "jax"], "Internal: run as the debias_jax worker.", flag_values=fv)
  flags.mark_flags_as_required(["config"], flag_values=fv)
  return fv


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if f.threads < 1:
    raise app.UsageError(f"--threads must be >= 1, got {f.threads}.")
  if f.repeats < 1:
    raise app.UsageError(f"--repeats must be >= 1, got {f.repeats}.")
  if f.worker == "jax":
    limit_cpus(f.threads)           # before JAX creates its thread pools
    xla_cpu.reuse_freed_memory()
    serve_jax(f.config, f.threads)
    return
  if f.reference_checkout and not os.path.isdir(os.path.join(f.reference_checkout, "guided_diffusion")):
    raise app.UsageError(f"--reference_checkout={f.reference_checkout!r} has no guided_diffusion/ folder; give the "
                         f"root of a guided-diffusion checkout (openai/guided-diffusion or yuhuUSTC/Debias).")
  results = run(f)
  if f.output:
    from etils import epath  # pylint: disable=g-import-not-at-top
    path = epath.Path(f.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"Wrote {f.output}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
