"""Import a guided-diffusion UNet state dict (the authors' PyTorch checkpoints) as params of our Flax UNet.

    python -m debias_jax.convert --config configs/paper/ffhq256.py --checkpoint ema_0.9999_500000.pt --workdir DIR

Reads `.pt`/`.pth` (needs torch: `pip install debias_jax[torch]`), `.npz` or `.safetensors` files whose keys are
guided-diffusion's module paths (`input_blocks.1.0.in_layers.2.weight`, ...), converts them with
`convert_state_dict` and hands the params to `debias_jax.checkpointing.save_converted`.

Layouts: PyTorch conv kernels (O, I, kh, kw) become HWIO, linear weights (O, I) and the 1x1 conv1d weights of
attention (O, I, 1) become (I, O) dense kernels, GroupNorm weight becomes scale. The qkv channels keep their
order: the Flax AttentionBlock splits them in the checkpoint's layout (legacy or new order), which tensor shapes
cannot reveal; set model.use_new_attention_order and the head count (model.num_heads / num_head_channels) to
what the checkpoint was trained with (the authors' and ADM's released models use the legacy order).
"""

from __future__ import annotations

import json
import re
from typing import Callable, Mapping

from etils import epath
import jax
import numpy as np

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax.models import unet as unet_lib

# ----------------------------------------------------------------------------------------------------------------
# The key map: guided-diffusion key -> (flax param path, PyTorch shape, PyTorch -> Flax transform).


def _conv2d(w):
  return np.transpose(w, (2, 3, 1, 0))


def _linear(w):
  return np.transpose(w)


def _conv1d_as_dense(w):
  return np.transpose(w[:, :, 0])


def _same(w):
  return w


class _Entry:
  __slots__ = ("path", "shape", "transform")

  def __init__(self, path: tuple[str, ...], shape: tuple[int, ...], transform: Callable):
    self.path, self.shape, self.transform = path, tuple(shape), transform


def _add_group_norm(table, key, path, channels):
  table[f"{key}.weight"] = _Entry(path + ("scale",), (channels,), _same)
  table[f"{key}.bias"] = _Entry(path + ("bias",), (channels,), _same)


def _add_conv(table, key, path, in_ch, out_ch, kernel=3):
  table[f"{key}.weight"] = _Entry(path + ("kernel",), (out_ch, in_ch, kernel, kernel), _conv2d)
  table[f"{key}.bias"] = _Entry(path + ("bias",), (out_ch,), _same)


def _add_linear(table, key, path, in_ch, out_ch):
  table[f"{key}.weight"] = _Entry(path + ("kernel",), (out_ch, in_ch), _linear)
  table[f"{key}.bias"] = _Entry(path + ("bias",), (out_ch,), _same)


def _add_conv1d(table, key, path, in_ch, out_ch):
  table[f"{key}.weight"] = _Entry(path + ("kernel",), (out_ch, in_ch, 1), _conv1d_as_dense)
  table[f"{key}.bias"] = _Entry(path + ("bias",), (out_ch,), _same)


def key_map(model: unet_lib.UNet) -> dict[str, _Entry]:
  """Every guided-diffusion state-dict key of `model`'s architecture, with its Flax path and PyTorch shape."""
  table: dict[str, _Entry] = {}
  mc, emb = model.model_channels, 4 * model.model_channels
  _add_linear(table, "time_embed.0", ("time_embed_0",), mc, emb)
  _add_linear(table, "time_embed.2", ("time_embed_2",), emb, emb)
  if model.num_classes > 0:
    table["label_emb.weight"] = _Entry(("label_emb", "embedding"), (model.num_classes, emb), _same)
  layout = model.layout()
  for layer in layout.layers():
    key, path, cin, cout = layer.name, (layer.flax_name,), layer.in_channels, layer.out_channels
    if layer.kind == "conv":
      _add_conv(table, key, path, cin, cout)
    elif layer.kind in ("res", "res_down", "res_up"):
      _add_group_norm(table, f"{key}.in_layers.0", path + ("in_norm",), cin)
      _add_conv(table, f"{key}.in_layers.2", path + ("in_conv",), cin, cout)
      width = 2 * cout if model.use_scale_shift_norm else cout
      _add_linear(table, f"{key}.emb_layers.1", path + ("emb_proj",), emb, width)
      _add_group_norm(table, f"{key}.out_layers.0", path + ("out_norm",), cout)
      _add_conv(table, f"{key}.out_layers.3", path + ("out_conv",), cout, cout)
      if cin != cout:
        _add_conv(table, f"{key}.skip_connection", path + ("skip",), cin, cout, kernel=1)
    elif layer.kind == "attn":
      _add_group_norm(table, f"{key}.norm", path + ("norm",), cin)
      _add_conv1d(table, f"{key}.qkv", path + ("qkv",), cin, 3 * cin)
      _add_conv1d(table, f"{key}.proj_out", path + ("proj_out",), cin, cin)
    elif layer.kind == "down":
      _add_conv(table, f"{key}.op", path + ("op",), cin, cout)
    elif layer.kind == "up":
      _add_conv(table, f"{key}.conv", path + ("conv",), cin, cout)
    else:
      raise AssertionError(layer.kind)
  _add_group_norm(table, "out.0", ("out_0",), layout.out_channels_last)
  _add_conv(table, "out.2", ("out_2",), layout.out_channels_last, model.out_channels)
  return table


# ----------------------------------------------------------------------------------------------------------------
# Diagnosis: which config field explains a mismatch.

def _shape(sd, key):
  return tuple(np.shape(sd[key])) if key in sd else None


def _width_hints(sd, model: unet_lib.UNet, table) -> list[str]:
  """model_channels, data.channels and channel_mult, from the time embedding and the input conv."""
  hints = []
  mc = model.model_channels
  s = _shape(sd, "time_embed.0.weight")
  if s is not None and len(s) == 2 and s[1] != mc:
    hints.append(f"model.model_channels={mc}, but the checkpoint's time embedding has width {s[1]}.")
  s = _shape(sd, "input_blocks.0.0.weight")
  if s is not None and len(s) == 4:
    if s[1] != model.in_channels:
      hints.append(f"data.channels={model.in_channels}, but the checkpoint's input conv reads {s[1]} channels.")
    first = table["input_blocks.0.0.weight"].shape[0]
    if s[0] != first and not hints:
      hints.append(f"model.channel_mult[0] * model.model_channels = {first}, but the checkpoint's input conv "
                   f"has {s[0]} output channels (check model.channel_mult).")
  return hints


def _output_hints(sd, model: unet_lib.UNet) -> list[str]:
  """learn_sigma from the output conv, num_classes from the label embedding."""
  hints = []
  s = _shape(sd, "out.2.weight")
  if s is not None and len(s) == 4 and s[0] != model.out_channels:
    if s[0] == 2 * model.in_channels:
      hints.append(f"model.learn_sigma=False, but the checkpoint outputs {s[0]} = 2 x {model.in_channels} channels "
                   f"(learned variance); set model.learn_sigma=True.")
    elif 2 * s[0] == model.out_channels:
      hints.append(f"model.learn_sigma=True, but the checkpoint outputs {s[0]} channels; set "
                   f"model.learn_sigma=False.")
    else:
      hints.append(f"The checkpoint outputs {s[0]} channels, the config {model.out_channels} "
                   f"(data.channels={model.in_channels}, model.learn_sigma).")
  s = _shape(sd, "label_emb.weight")
  if s is None and model.num_classes > 0:
    hints.append(f"data.num_classes={model.num_classes}, but the checkpoint has no label_emb (unconditional); "
                 f"set data.num_classes=0.")
  elif s is not None and s[0] != model.num_classes:
    hints.append(f"data.num_classes={model.num_classes}, but the checkpoint's label_emb has {s[0]} classes.")
  return hints


def _block_count(sd, prefix: str) -> int:
  ids = {int(m.group(1)) for k in sd for m in [re.match(rf"{prefix}\.(\d+)\.", k)] if m}
  return max(ids) + 1 if ids else 0


def _layout_hints(sd, model: unet_lib.UNet, table) -> list[str]:
  """num_res_blocks and channel_mult from the number of blocks; then attention_resolutions and resblock_updown."""
  layout = model.layout()
  n_in, n_out = _block_count(sd, "input_blocks"), _block_count(sd, "output_blocks")
  if (n_in, n_out) != (len(layout.input_blocks), len(layout.output_blocks)):
    return [f"The checkpoint has {n_in} input / {n_out} output blocks, the config "
            f"{len(layout.input_blocks)} / {len(layout.output_blocks)}: check model.num_res_blocks="
            f"{model.num_res_blocks} and model.channel_mult={model.channel_mult}."]
  hints = []
  res = {l.name: l.resolution for l in layout.layers()}
  blocks = [f"{p}.{i}" for p, blks in (("input_blocks", layout.input_blocks),
                                        ("output_blocks", layout.output_blocks)) for i in range(len(blks))]
  theirs, ours = set(), set()
  for block in blocks:
    for k in sd:
      if k.startswith(block + ".") and k.endswith(".qkv.weight"):
        theirs.add(res.get(f"{block}.0", -1))
    for l in layout.layers():
      if l.kind == "attn" and l.name.startswith(block + "."):
        ours.add(l.resolution)
  if theirs != ours:
    hints.append(f"model.attention_resolutions={tuple(model.attention_resolutions)}, but the checkpoint has "
                 f"attention at {tuple(sorted(theirs, reverse=True))} (pixels).")
  updown_theirs = any(re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", k) for k in sd)
  updown_ours = any(k.endswith(".op.weight") for k in table)
  if updown_theirs != updown_ours:
    hints.append(f"model.resblock_updown={model.resblock_updown}, but the checkpoint "
                 f"{'down-samples with strided convs' if updown_theirs else 'has up/down-sampling ResBlocks'}; "
                 f"set model.resblock_updown={not updown_theirs}.")
  return hints


def _scale_shift_hints(sd, model: unet_lib.UNet, table) -> list[str]:
  """use_scale_shift_norm from the width of a ResBlock's embedding projection."""
  key = "input_blocks.1.0.emb_layers.1.weight"
  s, want = _shape(sd, key), table.get(key)
  if s is None or want is None or s == want.shape or len(s) != 2:
    return []
  out = table["input_blocks.1.0.out_layers.0.weight"].shape[0]
  if s[0] == 2 * out and not model.use_scale_shift_norm:
    return ["model.use_scale_shift_norm=False, but the checkpoint's ResBlocks use scale-shift norm; set it to True."]
  if 2 * s[0] == want.shape[0] and model.use_scale_shift_norm:
    return ["model.use_scale_shift_norm=True, but the checkpoint's ResBlocks add the embedding; set it to False."]
  return []


def _diagnose(sd: Mapping[str, np.ndarray], model: unet_lib.UNet, table: Mapping[str, _Entry]) -> list[str]:
  """The config fields that would explain why the checkpoint `sd` does not fit the config's UNet, in words."""
  return (_width_hints(sd, model, table) + _output_hints(sd, model) + _layout_hints(sd, model, table)
          + _scale_shift_hints(sd, model, table))


# ----------------------------------------------------------------------------------------------------------------
# Conversion.

def _strip_prefix(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drop a `module.` prefix that (Distributed)DataParallel puts on every key."""
  if sd and all(k.startswith("module.") for k in sd):
    return {k[len("module."):]: v for k, v in sd.items()}
  return dict(sd)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config) -> dict:
  """guided-diffusion UNet state dict -> params (nested dict of float32 numpy arrays) of `create_model(config)`.

  Every key must map to a parameter and every parameter must be present with its exact shape; otherwise one
  ValueError lists the config fields that look wrong and all missing, unexpected and mis-shaped tensors.
  """
  model = builders.create_model(config)
  sd = _strip_prefix(state_dict)
  table = key_map(model)

  missing = [k for k in table if k not in sd]
  unexpected = [k for k in sd if k not in table]
  wrong = [f"{k}: checkpoint {tuple(np.shape(sd[k]))}, expected {table[k].shape}"
           for k in table if k in sd and tuple(np.shape(sd[k])) != table[k].shape]
  if missing or unexpected or wrong:
    lines = ["The checkpoint does not match the config's UNet."]
    hints = _diagnose(sd, model, table)
    if hints:
      lines += ["Likely cause:"] + [f"  - {h}" for h in hints]
    for title, items in (("Missing keys", missing), ("Unexpected keys", unexpected), ("Wrong shapes", wrong)):
      if items:
        lines.append(f"{title} ({len(items)}):")
        lines += [f"  {item}" for item in items]
    raise ValueError("\n".join(lines))

  params: dict = {}
  for key, entry in table.items():
    value = np.asarray(sd[key])
    if not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f"Checkpoint tensor {key} has dtype {value.dtype}; expected floating point weights.")
    node = params
    for name in entry.path[:-1]:
      node = node.setdefault(name, {})
    node[entry.path[-1]] = np.ascontiguousarray(entry.transform(value.astype(np.float32)))

  expected = unet_lib.param_shapes(model)
  got = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  if jax.tree.structure(expected) != jax.tree.structure(got) or jax.tree.leaves(expected) != jax.tree.leaves(got):
    raise AssertionError("Internal error: the key map does not cover the UNet's parameter tree.")
  return params


# ----------------------------------------------------------------------------------------------------------------
# Reading checkpoint files.

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Parse a .safetensors file (8-byte little-endian header size, JSON header, raw little-endian data)."""
  data = epath.Path(path).read_bytes()
  if len(data) < 8:
    raise ValueError(f"{path} is not a safetensors file (too short).")
  header_len = int.from_bytes(data[:8], "little")
  if 8 + header_len > len(data):
    raise ValueError(f"{path} is not a safetensors file (header length {header_len} exceeds the file).")
  header = json.loads(data[8:8 + header_len].decode("utf-8"))
  body = memoryview(data)[8 + header_len:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    dtype = info["dtype"]
    raw = body[begin:end]
    if dtype == "BF16":
      bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
      array = bits.view(np.float32)
    elif dtype in _SAFETENSORS_DTYPES:
      array = np.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[dtype])
    else:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}.")
    out[name] = array.reshape(shape).copy()
  return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {path} needs PyTorch, an optional extra: `pip install 'debias_jax[torch]'` "
                      f"(or convert the file to .safetensors / .npz elsewhere).") from e
  with epath.Path(path).open("rb") as f:   # local or gs://
    obj = torch.load(f, map_location="cpu", weights_only=True)
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict.")
  out = {}
  for k, v in obj.items():
    if not torch.is_tensor(v):
      raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; expected a UNet state dict.")
    v = v.detach().cpu()
    out[k] = (v.float() if v.is_floating_point() else v).numpy()
  return out


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Read a guided-diffusion state dict from .pt/.pth/.bin (torch), .npz or .safetensors."""
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"Checkpoint file {path} does not exist.")
  ext = epath.Path(path).suffix.lower()
  if ext == ".npz":
    with epath.Path(path).open("rb") as file, np.load(file) as f:
      return {k: f[k] for k in f.files}
  if ext == ".safetensors":
    return read_safetensors(path)
  if ext in (".pt", ".pth", ".bin"):
    return _read_torch(path)
  raise ValueError(f"Unknown checkpoint format {ext!r} for {path}; use .pt/.pth (torch), .npz or .safetensors.")


def convert_file(path: str, config) -> dict:
  """load_state_dict + convert_state_dict."""
  return convert_state_dict(load_state_dict(path), config)


# ----------------------------------------------------------------------------------------------------------------
# Command line.

def run(config, checkpoint: str, workdir: str) -> dict:
  """Convert `checkpoint` for `config` and write it to `workdir`; returns the params."""
  params = convert_file(checkpoint, config)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f"Converted {checkpoint}: {count:,} parameters.")
  checkpointing.save_converted(workdir, config, params)
  print(f"Wrote the converted checkpoint to {workdir}: sample, evaluate, analyse or fine-tune it from there.")
  return params


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  run(flags.FLAGS.config, flags.FLAGS.checkpoint, flags.FLAGS.workdir)


def _run():
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from debias_jax import config_files  # pylint: disable=g-import-not-at-top
  config_files.DEFINE_config_file("config", None, "Config file describing the checkpoint's UNet.",
                                  lock_config=True)
  flags.DEFINE_string("checkpoint", None, "guided-diffusion state dict: .pt/.pth, .npz or .safetensors.")
  flags.DEFINE_string("workdir", None, "Directory for the converted checkpoint.")
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])
  app.run(main)


if __name__ == "__main__":
  _run()
