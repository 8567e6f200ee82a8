"""Helpers shared by the test files: configs with dotted overrides, the command-line flags for them, parameter
leaves, free ports, temporary folders, and the small sampling checkpoint that several files write."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import importlib
import os
import shutil
import socket
import tempfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from debias_jax import builders
from debias_jax import checkpointing
from debias_jax import train_state
from debias_jax.models import unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A one-level UNet on 8x8 digits at batch 8: for tests of the loop's mechanics, where the model's size is not the
# point and the scanned step at the suite's low XLA optimisation level would cost the most.
ONE_LEVEL = {"model.channel_mult": (1,), "model.attention_resolutions": (8,), "train.batch_size": 8}

# The tiny config with a one-level UNet (half the compile time), sampling 16 images in two batches of 8 with
# 3 DDIM steps. An x0-predicting model: random params then give varied, unsaturated images (an untrained eps
# model's x0 estimate at high noise is x_t / sqrt(alpha_bar), clipped to +-1).
SAMPLING = {"model.channel_mult": (1,), "model.attention_resolutions": (8,), "loss.target": "x0",
            "sampling.steps": "3", "sampling.num_samples": 16, "sampling.batch_size": 8}


def config(*layers: Mapping[str, Any], base: str = "tiny", **overrides) -> ml_collections.ConfigDict:
  """configs/<base>.py's config ("tiny", "default", "compare.quick", ...) with dotted overrides
  ({"model.channel_mult": (1,)}) applied in order: each mapping in `layers`, then the keywords."""
  result = importlib.import_module(f"configs.{base}").get_config()
  for layer in (*layers, overrides):
    result.update_from_flattened_dict(dict(layer))
  return result


def section(name: str, /, *, base: str = "tiny", **fields) -> ml_collections.ConfigDict:
  """Section `name` ("data", "eval", ...) of configs/<base>.py's config, with its fields overridden by keyword."""
  return config({f"{name}.{k}": v for k, v in fields.items()}, base=base)[name]


def flags(overrides: Mapping[str, Any]) -> list[str]:
  """The command-line flags (--config.k=v) that apply the dotted overrides."""
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def leaves(tree) -> list[np.ndarray]:
  """The tree's leaves as host numpy arrays, in tree order."""
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def devices_env(devices: int, **extra) -> dict[str, str]:
  """This process's environment for a subprocess whose JAX sees `devices` CPU devices."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", **extra)


def assert_same_trajectory(test, params, reference, initial, tolerance=0.02):
  """params ~ reference relative to how far training moved them: float reordering (fused multi-step programs,
  other device counts) is amplified by Adam's normalisation, so exact or per-element comparisons do not apply."""
  diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(leaves(params), leaves(reference), strict=True)))
  moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(leaves(reference), leaves(initial), strict=True)))
  test.assertGreater(moved, 0.0)
  test.assertLess(diff / moved, tolerance)


def free_port() -> int:
  """A localhost TCP port free at the time of the call (for jax.distributed coordinators and servers)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def tmpdir(test) -> str:
  """A temporary directory removed after the test (absltest's create_tempdir needs parsed flags, not pytest)."""
  path = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def random_params(cfg, seed=0, scale=0.2):
  """Random params of the config's UNet without compiling its init (shapes only): every layer does something."""
  rng = np.random.default_rng(seed)
  shapes = unet.param_shapes(builders.create_model(cfg))
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def write_checkpoint(cfg, workdir, steps=(5,), params=None, ema_params=None):
  """Saves a train state (random params unless given) at each of `steps`, and config.json, as training would."""
  state = train_state.state_from_params(cfg, random_params(cfg) if params is None else params)
  if ema_params is not None:
    state = state.replace(ema_params=(jax.tree.map(jnp.asarray, ema_params),))
  checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir))
  for step in steps:
    checkpointer.save(state.replace(step=jnp.asarray(step, jnp.int32)))
  checkpointer.close()
  checkpointing.save_config(cfg, workdir)
  return state


def toy_study_config(cache_dir: str, **overrides) -> ml_collections.ConfigDict:
  """configs/compare/quick.py shrunk to seconds: three arms (two weightings and another target, so two sets of
  sampler programs), a few steps, a handful of samples, fixed variances (a cheaper program to compile)."""
  return config(TOY_STUDY, {"eval.cache_dir": cache_dir}, overrides, base="compare.quick")


TOY_STUDY = {
    "compare.arms": ("constant", "debias", "v"), "model.learn_sigma": False, "train.num_steps": 4,
    "train.batch_size": 8, "model.channel_mult": (1,), "compare.num_checkpoints": 2, "compare.eval_sampler": "ddim:2",
    "compare.sweep": ("ddim:2", "ddpm:3"), "eval.feature_space": "pixels", "eval.num_reference": 64,
    "eval.num_samples": 8, "analysis.num_examples": 16, "analysis.num_buckets": 4, "analysis.sampling_steps": (2,),
    "analysis.num_samples": 8, "analysis.batch_size": 8, "sampling.batch_size": 8}
