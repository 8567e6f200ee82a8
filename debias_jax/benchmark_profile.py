"""Where a compiled UNet program spends its time on XLA:CPU, per op category, from one traced call.

The trace (jax.profiler) has one event per executed HLO instruction (a fusion, a convolution, a dot, a copy) on
the thread that ran it; each is mapped back to its instruction in the compiled HLO text, and from the
instruction's kind and its `op_name` (the JAX source path, e.g. `transpose(jvp(UNet))/output_blocks_5_0/in_conv/
conv_general_dilated`) to a category. Times are self times (a `while` loop's events exclude its body's), summed
over threads, plus the gaps when no thread has an event (charged to the instruction before: XLA:CPU's large dots
run asynchronously after their event ends); tracing slows the program (an event per thread-pool task), so the shares are what to compare, and
`scaled_ms` spreads an untraced wall time over the categories by those shares.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import re
import tempfile
import time

import jax

from debias_jax.models import conv

CATEGORIES = (
    "convolution forward",
    "convolution input gradient",
    "convolution weight gradient",
    "GroupNorm + SiLU (+ scale/shift, residual)",
    "attention",
    "up/down-sampling, concat",
    "timestep/class embedding + emb_proj",
    "loss, optimizer, EMA, RNG",
    "layout copies, other",
)
(CONV_FWD, CONV_DX, CONV_DW, NORM, ATTENTION, RESAMPLE, EMBED, OUTSIDE, OTHER) = CATEGORIES

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s*\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_WINDOW = re.compile(r"window=\{size=([\dx]+)([^}]*)\}")


@dataclasses.dataclass
class Instruction:
  name: str
  opcode: str
  op_name: str
  calls: str | None
  window: str | None       # convolution window size, e.g. "3x3"
  window_extra: str        # pads, strides, dilations of a convolution window
  computation: str


def parse_hlo(text: str) -> tuple[dict, dict]:
  """(instruction name -> Instruction, computation name -> its instructions) of an HLO module's text."""
  instructions, computations, current = {}, collections.defaultdict(list), ""
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head and not line.startswith(" "):
      current = head.group(1)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    op_name = _OP_NAME.search(line)
    calls = _CALLS.search(line)
    window = _WINDOW.search(line)
    instr = Instruction(m.group(1), m.group(3), op_name.group(1) if op_name else "", calls and calls.group(1),
                        window and window.group(1), window.group(2) if window else "", current)
    instructions[instr.name] = instr
    computations[current].append(instr)
  return instructions, computations


def _is_weight_gradient_conv(instr: Instruction) -> bool:
  # XLA writes dW of a k x k convolution as a convolution whose window is the output gradient's spatial size
  # (or a dilated one, for strided layers); dx keeps the k x k window.
  return instr.window not in ("1x1", "3x3") or "rhs_dilate" in instr.window_extra


def _layer(op_name: str) -> tuple[str, str]:
  """(UNet layer, sub-module or op) of an op_name inside the UNet, e.g. ('output_blocks_5_0', 'in_conv')."""
  parts = re.split(r"UNet\)*/", op_name, maxsplit=1)[-1].split("/") if "UNet" in op_name else [""]
  return parts[0], (parts[1] if len(parts) > 1 else "")


def categorise(instr: Instruction, computations: dict, attention_layers=frozenset()) -> str:
  """The category of one top-level (or loop-body) instruction of the compiled program."""
  inner = computations.get(instr.calls, []) if instr.calls else []
  convs = [i for i in [instr] + inner if i.opcode == "convolution"]
  op_name = instr.op_name or next((i.op_name for i in inner if i.op_name), "")
  for scope, category in ((conv.FORWARD_GEMMS, CONV_FWD), (conv.INPUT_GRAD_GEMMS, CONV_DX),
                          (conv.WEIGHT_GRAD_GEMMS, CONV_DW)):
    if scope in op_name:   # models/conv.py's GEMM forms
      return category
  if convs:
    c = convs[0]
    if _is_weight_gradient_conv(c):
      return CONV_DW
    return CONV_DX if "transpose(" in (c.op_name or op_name) else CONV_FWD
  if "UNet" not in op_name:
    return OUTSIDE if op_name else OTHER
  layer, sub = _layer(op_name)
  if "_conv" in sub or sub in ("op", "conv", "skip", "out_2") or layer.startswith("input_blocks_0"):
    # Non-convolution instructions of a conv layer. Forward (a sampler's loop included): its bias add and, for the
    # 1×1 skips, its dot. Backward: the GEMM weight gradient's loop and pads, bias gradients; the rest (the 1×1
    # skips' gradient dots, which do not say which gradient they are) is "other".
    if "transpose(" not in op_name:
      return CONV_FWD
    return CONV_DW if ("while/body" in op_name or "cond/branch" in op_name or "reduce_sum" in op_name) else OTHER
  if "norm" in sub or layer == "out_0" or "silu" in sub or "silu" in op_name:
    return NORM
  if layer in attention_layers:
    return ATTENTION
  if sub in ("emb_proj",) or layer.startswith(("time_embed", "label_emb")):
    return EMBED
  if sub in ("reduce_sum", "concatenate") or "concatenate" in op_name or "reduce_sum" in op_name:
    return RESAMPLE
  if sub in ("mul", "add", "add_any", "split", "broadcast_in_dim"):
    return NORM
  if instr.opcode in ("copy", "transpose") or "copy" in instr.name:
    return OTHER
  return OTHER


@dataclasses.dataclass
class Event:
  name: str
  start: int
  end: int
  self_ns: int = 0


def _self_times(events: list[Event]) -> list[Event]:
  """Fills self_ns: duration minus the durations of the events nested in it (same thread)."""
  events.sort(key=lambda e: (e.start, -e.end))
  stack: list[Event] = []
  for e in events:
    e.self_ns = e.end - e.start
    while stack and stack[-1].end <= e.start:
      stack.pop()
    if stack and e.end <= stack[-1].end:
      stack[-1].self_ns -= e.end - e.start
    stack.append(e)
  return events


def instruction_events(xplane_path: str, instructions: dict) -> list[list[Event]]:
  """Per host thread, the trace events that name an instruction of the program."""
  data = jax.profiler.ProfileData.from_file(xplane_path)
  threads = []
  for plane in data.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      events = [Event(ev.name, int(ev.start_ns), int(ev.start_ns + ev.duration_ns))
                for ev in line.events if ev.name in instructions]
      if events:
        threads.append(_self_times(events))
  return threads


def _gaps(threads: list[list[Event]]) -> list[tuple[int, str]]:
  """(length, name of the instruction that ended last before it) of every stretch with no event on any thread.

  XLA:CPU runs large dots asynchronously: their event ends when the work is handed to the thread pool, and the
  wait shows as a gap after it (the GEMM weight gradient's dots, mostly), so gaps are charged to that instruction.
  """
  spans = sorted((e.start, e.end, e.name) for events in threads for e in events)
  gaps, end, last = [], None, None
  for s, e, name in spans:
    if end is not None and s > end:
      gaps.append((s - end, last))
    if end is None or e > end:
      end, last = e, name
  return gaps


def profile(compiled, args=(), *, make_args=None, attention_layers=frozenset(),
            untraced_seconds: float | None = None, repeats: int = 1) -> dict:
  """Runs compiled(*args) `repeats` times under the profiler; returns per-category milliseconds and shares.

  For a program that donates its arguments, make_args() gives a fresh tuple for each call (made before tracing).
  """
  instructions, computations = parse_hlo(compiled.as_text())
  arg_sets = [make_args() if make_args else args for _ in range(repeats)]
  jax.block_until_ready(arg_sets)
  with tempfile.TemporaryDirectory() as logdir:
    start = time.perf_counter()
    with jax.profiler.trace(logdir):
      for call_args in arg_sets:
        jax.block_until_ready(compiled(*call_args))
      traced = time.perf_counter() - start
    paths = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    if not paths:
      raise RuntimeError("jax.profiler wrote no trace; is this a CPU backend?")
    threads = instruction_events(paths[0], instructions)
  per_category = collections.Counter()
  per_instruction = collections.Counter()
  for events in threads:
    for e in events:
      per_category[categorise(instructions[e.name], computations, attention_layers)] += e.self_ns
      per_instruction[e.name] += e.self_ns
  gaps = _gaps(threads)
  for length, name in gaps:
    per_category[categorise(instructions[name], computations, attention_layers)] += length
  busy = sum(per_category.values())
  out = {"traced_seconds": traced / repeats, "repeats": repeats, "threads_with_events": len(threads),
         "op_time_ms": busy / 1e6 / repeats, "gaps_ms": sum(g for g, _ in gaps) / 1e6 / repeats,
         "categories_ms": {c: per_category[c] / 1e6 / repeats for c in CATEGORIES if per_category[c]},
         "top_instructions_ms": [(n, t / 1e6 / repeats, categorise(instructions[n], computations, attention_layers))
                                 for n, t in per_instruction.most_common(15)]}
  out["shares"] = {c: ms / (busy / 1e6 / repeats) for c, ms in out["categories_ms"].items()}
  if untraced_seconds:
    out["untraced_seconds"] = untraced_seconds
    out["scaled_ms"] = {c: share * untraced_seconds * 1e3 for c, share in out["shares"].items()}
  return out


def attention_layer_names(model) -> frozenset:
  """Flax names of the UNet's attention blocks (their ops are the attention category)."""
  return frozenset(l.flax_name for l in model.layout().layers() if l.kind == "attn")


def format_profile(result: dict, title: str) -> str:
  lines = [f"{title}: traced call {result['traced_seconds']:.2f} s, op time {result['op_time_ms']:.0f} ms over "
           f"{result['threads_with_events']} thread(s), of which {result['gaps_ms']:.0f} ms of gaps (no event on any "
           f"thread; charged to the instruction before them)"]
  scaled = result.get("scaled_ms", {})
  for c, ms in sorted(result["categories_ms"].items(), key=lambda kv: -kv[1]):
    extra = f"  ~{scaled[c]:8.0f} ms untraced" if c in scaled else ""
    lines.append(f"  {c:45s} {ms:9.0f} ms  {100 * result['shares'][c]:5.1f}%{extra}")
  lines.append("  top instructions: " + ", ".join(f"{n} {t:.0f} ms ({c})" for n, t, c in
                                                 result["top_instructions_ms"][:8]))
  return "\n".join(lines)
