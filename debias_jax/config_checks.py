"""Validation of a whole config before any compute: every error names the field and the valid choices."""

from __future__ import annotations

import json

import ml_collections
import numpy as np

from debias_jax import builders
from debias_jax import errors
from debias_jax import generation
from debias_jax.analysis import bias
from debias_jax.data import embedded
from debias_jax.data import pipeline
from debias_jax.diffusion import samplers
from debias_jax.diffusion import schedules
from debias_jax.diffusion import t_sampling
from debias_jax.diffusion import targets
from debias_jax.diffusion import weighting
from debias_jax.evaluation import features
from debias_jax.experiments import plan
from debias_jax.models import unet


ConfigError = errors.ConfigError   # defined in a module that imports nothing (no cycle with experiments/plan)


def _plain(value):
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return json.loads(json.dumps(value, default=list))


_MISSING = object()


def _lookup(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


def differences_from_saved(config, saved, fields, ignore=()) -> list[str]:
  """'config.F: trained with X, given Y' for every field (dotted; sections key by key) where config and saved differ.

  Fields or keys absent on either side (a config.json written by an older version) are not compared.
  """
  differences = []
  for field in fields:
    ours, theirs = _lookup(config, field), _lookup(saved, field)
    if theirs is _MISSING or ours is _MISSING:
      continue
    ours, theirs = _plain(ours), _plain(theirs)
    if isinstance(ours, dict) and isinstance(theirs, dict):
      pairs = [(f"{field}.{k}", ours[k], theirs[k]) for k in theirs if k in ours]
    else:
      pairs = [(field, ours, theirs)]
    differences += [f"config.{name}: trained with {t!r}, given {o!r}" for name, o, t in pairs
                    if o != t and name not in ignore]
  return differences


# What a checkpoint was trained with and a config must repeat to resume, sample, evaluate or analyse it.
PROVENANCE_FIELDS = ("model", "diffusion", "loss", "data")
# Where and how to read the data or run the network, not what they are: free to differ in every mode.
OPERATIONAL_FIELDS = ("data.data_dir", "data.num_workers", "data.tfds_access", "data.tfds_max_in_memory_gb",
                      "data.tfds_prepare", "model.remat")
# Free when only sampling from the network (no training): compute precision and dropout.
INFERENCE_FIELDS = ("model.dtype", "model.dropout")


def check_provenance(config, saved, where: str, *, training: bool) -> list[str]:
  """The differences between `config` and the config `saved` with a checkpoint (fields absent on either side, from
  older versions, are not compared). Raises ConfigError listing them all unless config.allow_config_change is set;
  then returns them, for the caller to record."""
  ignore = OPERATIONAL_FIELDS + (() if training else INFERENCE_FIELDS)
  differences = differences_from_saved(config, saved, PROVENANCE_FIELDS, ignore=ignore)
  if differences and not config.allow_config_change:
    raise ConfigError(
        f"The config differs from the one {where} was trained with ({len(differences)} differences):\n  " +
        "\n  ".join(differences) + "\nPass the config and overrides it was trained with (saved with every "
        "checkpoint and in the workdir's config.json), or, to change them deliberately (e.g. fine-tuning with "
        "another weighting), add --config.allow_config_change=True: the changes are then recorded in the "
        "workdir's config_changes.jsonl.")
  return differences


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _choice(value, choices, field: str) -> None:
  _require(value in choices, f"config.{field}={value!r} is not valid; choose one of: {', '.join(choices)}.")


def _positive_int(value, field: str) -> None:
  _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
           f"config.{field} must be a positive integer, got {value!r}.")


def validate_sampling(config, build: bool = True) -> None:
  """config.sampling; with `build`, its sampler is built (steps and solver options checked by the sampler)."""
  s = config.sampling
  _choice(s.sampler, samplers.sampler_names(), "sampling.sampler")
  _positive_int(s.num_samples, "sampling.num_samples")
  _positive_int(s.batch_size, "sampling.batch_size")
  if build:
    try:
      generation.make_sampler(config, builders.schedule(config))
    except (ValueError, TypeError) as e:
      raise ConfigError(f"config.sampling.sampler={s.sampler!r} with sampling.steps={s.steps!r} and "
                        f"sampling.solver_options={dict(s.solver_options)}: {e}") from e


MODES = ("train", "sample", "eval", "analyze")


def validate(config, mode: str = "train", num_devices: int | None = None) -> None:
  """Every check `mode` needs, run once by its driver before any data is read or anything compiled; raises
  ConfigError (a ValueError) for the first problem found, naming its field.

  Every mode checks the config as the training config it describes (the checkpoint's), then what the mode reads:
  train its sample grids and the device split, sample its labels, eval its sampler:steps pairs (built once by
  the driver) and feature space, analyze its analysis section.
  """
  _choice(mode, MODES, "mode (of validate)")
  validate_training(config, num_devices if mode == "train" else None)
  validate_sampling(config, build=mode in ("train", "sample"))
  if mode == "sample":
    generation.sample_labels(config, int(config.sampling.num_samples), config.sampling.labels)
  elif mode == "eval":
    _validate_eval(config)
  elif mode == "analyze":
    check_analysis_config(config, num_devices or 1)


def _validate_eval(config) -> None:
  ev = config.eval
  generation.eval_samplers(config)
  _choice(ev.feature_space, features.FEATURE_SPACES, "eval.feature_space")
  for field in ("num_samples", "batch_size", "pr_k"):
    _positive_int(ev[field], f"eval.{field}")
  _non_negative_int(ev.num_reference, "eval.num_reference")
  for step in ev.checkpoint_steps:
    _non_negative_int(step, "eval.checkpoint_steps")


def validate_training(config, num_devices: int | None = None) -> None:
  """The config as a training config: diffusion, loss, data, model, optimizer, EMA and the train section."""
  d = config.diffusion
  _choice(d.schedule, schedules.SCHEDULE_NAMES, "diffusion.schedule")
  _require(isinstance(d.num_timesteps, int) and d.num_timesteps > 1,
           f"config.diffusion.num_timesteps must be an integer > 1, got {d.num_timesteps!r}.")

  loss = config.loss
  _choice(loss.target, targets.TARGETS, "loss.target")
  _choice(loss.weighting, weighting.WEIGHTINGS, "loss.weighting")
  _choice(loss.t_sampling, t_sampling.T_SAMPLINGS, "loss.t_sampling")
  _require(loss.snr_clamp >= 0, f"config.loss.snr_clamp must be >= 0 (0 = off), got {loss.snr_clamp}.")
  _require(loss.p2_k >= 0 and loss.p2_gamma >= 0 and loss.min_snr_gamma > 0,
           "config.loss.p2_k and p2_gamma must be >= 0 and config.loss.min_snr_gamma > 0.")

  validate_data(config.data)
  validate_model(config)

  o = config.optim
  _require(o.learning_rate > 0, f"config.optim.learning_rate must be > 0, got {o.learning_rate}.")
  _require(o.weight_decay >= 0 and o.grad_clip_norm >= 0 and o.warmup_steps >= 0,
           "config.optim.weight_decay, grad_clip_norm and warmup_steps must be >= 0.")
  _require(len(config.ema_rates) > 0 and all(0 <= r < 1 for r in config.ema_rates),
           f"config.ema_rates={tuple(config.ema_rates)} needs at least one rate, each in [0, 1).")

  t = config.train
  for field in ("batch_size", "num_steps", "steps_per_call", "keep_checkpoints"):
    _positive_int(t[field], f"train.{field}")
  if num_devices is not None:
    _require(t.batch_size % num_devices == 0,
             f"config.train.batch_size={t.batch_size} is not divisible by the {num_devices} devices; "
             f"use a multiple of {num_devices}.")
  for field in ("log_every", "checkpoint_every", "sample_every"):
    value = t[field]
    _require(isinstance(value, int) and value >= 0, f"config.train.{field} must be an integer >= 0.")
    _require(value % t.steps_per_call == 0,
             f"config.train.{field}={value} must be a multiple of train.steps_per_call={t.steps_per_call}.")
  _require(t.num_steps % t.steps_per_call == 0,
           f"config.train.num_steps={t.num_steps} must be a multiple of train.steps_per_call={t.steps_per_call}.")


# ----- data and model: what the dataset and the UNet need, checked without reading data or building arrays -----

def _choices(values) -> str:
  return ", ".join(str(v) for v in values)


def _non_negative_int(value, field: str) -> None:
  _require(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0,
           f"config.{field} must be a non-negative integer, got {value!r}.")


def validate_data(d) -> None:
  """config.data (the section): the source, the name and every field its source reads."""
  _require(d.source in pipeline.SOURCES, f"Unknown data.source={d.source!r}; valid: {_choices(pipeline.SOURCES)}.")
  for field in ("image_size", "channels", "num_classes"):
    _non_negative_int(d[field], f"data.{field}")
  _require(d.image_size >= 1 and d.channels >= 1,
           f"data.image_size and data.channels must be positive, got {d.image_size}, {d.channels}.")
  if d.source == "embedded":
    _validate_embedded(d)
  elif d.source == "tfds":
    _require(bool(d.name), "data.name is empty: set it to a TFDS dataset name, e.g. cifar10.")
  else:
    _require(d.channels in (1, 3), f"data.channels={d.channels} is not supported for image folders; valid: 1, 3.")


def _validate_embedded(d) -> None:
  spec = pipeline.EMBEDDED_DATASETS.get(d.name)
  _require(spec is not None,
           f"Unknown embedded dataset data.name={d.name!r}; valid: {_choices(pipeline.EMBEDDED_DATASETS)}.")
  sizes, channels = spec["image_sizes"], spec["channels"]
  _require(sizes is None or d.image_size in sizes,
           f"data.image_size={d.image_size} is not offered by {d.name!r}; valid: {_choices(sizes or ())}.")
  _require(sizes is not None or d.image_size >= 2,
           f"data.image_size={d.image_size} is too small for {d.name!r}; use 2 or more.")
  _require(channels is None or d.channels in channels,
           f"data.channels={d.channels} does not match {d.name!r}; valid: {_choices(channels or ())}.")
  _require(d.split in spec["splits"],
           f"data.split={d.split!r} is not a split of {d.name!r}; valid: {_choices(spec['splits'])}.")
  if d.name == "digits":
    _require(d.digits_upsample in embedded.DIGITS_UPSAMPLE_MODES, f"Unknown data.digits_upsample="
             f"{d.digits_upsample!r}; valid: {_choices(embedded.DIGITS_UPSAMPLE_MODES)}.")
  if d.name == "gmm":
    for field, minimum in (("gmm_components", 1), ("gmm_rank", 0), ("gmm_num_train", 1), ("gmm_num_test", 1)):
      value = d[field]
      _require(isinstance(value, (int, np.integer)) and value >= minimum,
               f"data.{field} must be an integer >= {minimum}, got {value!r}.")
    dim = d.image_size ** 2 * d.channels
    _require(d.gmm_rank <= dim, f"data.gmm_rank={d.gmm_rank} exceeds the image dimension {dim}.")
    _require(d.gmm_noise_std > 0, f"data.gmm_noise_std must be positive, got {d.gmm_noise_std!r}.")


def validate_model(config) -> None:
  """config.model with config.data's image size: every UNet the config describes can be built."""
  m = config.model
  _require(str(m.dtype) in unet.DTYPES, f"model.dtype={m.dtype!r} is not one of {sorted(unet.DTYPES)}.")
  try:
    channel_mult = unet.resolve_channel_mult(tuple(m.channel_mult), int(config.data.image_size))
  except ValueError as e:
    raise ConfigError(str(e)) from e
  image_size, width = int(config.data.image_size), int(m.model_channels)
  levels = len(channel_mult)
  _require(image_size > 0 and image_size % (2 ** (levels - 1)) == 0,
           f"data.image_size={image_size} is not divisible by 2**(len(model.channel_mult)-1)={2 ** (levels - 1)} "
           f"(model.channel_mult={tuple(channel_mult)}); use fewer levels or another image size.")
  resolutions = [image_size // 2 ** level for level in range(levels)]
  attention = [int(r) for r in m.attention_resolutions]
  bad = [r for r in attention if r not in resolutions]
  _require(not bad, f"model.attention_resolutions={tuple(attention)} contains {bad}, which never occurs in this "
                    f"UNet; the resolutions (in pixels) are {resolutions}.")
  widths = [int(mult * width) for mult in channel_mult]
  for w in sorted(set(widths)):
    _require(w % unet.NUM_GROUPS == 0, f"model.model_channels={width} with model.channel_mult={tuple(channel_mult)} "
                                       f"gives {w} channels, not a multiple of the {unet.NUM_GROUPS} GroupNorm groups.")
  # Attention runs at the listed resolutions and always in the middle block (the last level's width).
  for w in sorted({w for w, r in zip(widths, resolutions) if r in attention} | {widths[-1]}):
    if m.num_head_channels > 0:
      _require(w % m.num_head_channels == 0, f"model.num_head_channels={m.num_head_channels} does not divide the "
                                             f"{w} channels of an attention layer.")
    else:
      _require(m.num_heads > 0 and w % m.num_heads == 0, f"model.num_heads={m.num_heads} does not divide the {w} "
                                                         "channels of an attention layer (or set "
                                                         "model.num_head_channels > 0).")


# Analysis and comparison studies.


def _positive(value, field: str) -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"config.{field} must be a positive integer, got {value!r}.")
  return int(value)


def check_analysis_config(config, num_devices: int) -> None:
  """Raises ConfigError naming the first bad config.analysis field (before any compute)."""
  a = config.analysis
  for field in ("num_examples", "num_buckets", "batch_size", "num_samples"):
    _positive(a[field], f"analysis.{field}")
  if a.batch_size % num_devices:
    raise ConfigError(f"config.analysis.batch_size={a.batch_size} is not divisible by the {num_devices} devices; "
                      f"use a multiple of {num_devices}.")
  if a.bucket_by not in bias.BUCKET_KINDS:
    raise ConfigError(f"config.analysis.bucket_by={a.bucket_by!r} is not valid; choose one of: "
                      f"{', '.join(bias.BUCKET_KINDS)}.")
  schedule = builders.schedule(config)
  if a.num_buckets > schedule.num_steps:
    raise ConfigError(f"config.analysis.num_buckets={a.num_buckets} exceeds the {schedule.num_steps} timesteps.")
  for name in a.samplers:
    if name not in samplers.sampler_names():
      raise ConfigError(f"config.analysis.samplers has {name!r}; valid samplers: "
                        f"{', '.join(samplers.sampler_names())}.")
    for steps in a.sampling_steps:
      try:
        generation.make_sampler(config, schedule, name, str(steps))
      except (ValueError, TypeError) as e:
        raise ConfigError(f"config.analysis.sampling_steps has {steps!r}, which sampler {name!r} cannot take: "
                          f"{e}") from e


def _check_study_samplers(config, entries: list[tuple[str, tuple[str, str]]]) -> None:
  """Each (sampler, steps) of the study, with the compare field that names it, builds for config."""
  schedule = builders.schedule(config)
  for field, (name, steps) in entries:
    try:
      generation.make_sampler(config, schedule, name, steps)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"config.compare.{field} has '{name}:{steps}', which cannot be built: {e}") from e


def validate_study(config) -> None:
  """Raises ConfigError naming the first bad field of a comparison study (configs/compare/*.py), before any
  compute: the compare section, and every arm's training config with the study's samplers."""
  if "compare" not in config:
    raise ConfigError("The config has no compare section; use a configs/compare/*.py preset.")
  arms = plan.study_arms(config)
  plan.final_step(config)
  if features.resolve_feature_space(config.eval, config.data) == "inception" and not config.eval.inception_weights:
    raise ConfigError("config.eval.feature_space is inception but config.eval.inception_weights is empty; pass "
                      "--config.eval.inception_weights=/path/to/the FID Inception-v3 weights (see "
                      "debias_jax/evaluation/inception.py), or set feature_space.")
  entries = [("eval_sampler", plan.eval_sampler(config))]
  entries += [("sweep", plan.parse_sampler(entry, "sweep")) for entry in config.compare.sweep]
  for arm in {a.target: a for a in arms}.values():   # samplers depend on the target only
    arm_config = plan.arm_config(config, arm)
    validate(arm_config)
    _check_study_samplers(arm_config, entries)
