"""Inception-v3 of FID (the TF-slim graph `inception-2015-12-05`) in Flax linen, with weights from a local file.

The architecture is the FID variant that pytorch-fid (`fid_inception_v3`: FIDInceptionA/C/E_1/E_2) and
matthias-wright/jax-fid port from TensorFlow, not torchvision's Inception-v3: average pools inside the blocks
ignore the zero padding (TF's behaviour), the last block (Mixed_7c) max-pools in its pool branch, batch norm has
eps 1e-3, and the classifier has 1008 outputs. Outputs:
  pool     (B, 2048)  the pool3 features that FID, precision and recall use;
  logits   (B, 1008)  the classifier logits, for the Inception Score (absent if the weight file has no `fc`);
  spatial  (B, 2023)  the first 7 channels of Mixed_6d's 1x1 branch (17x17), flattened in HWC order: the
                      `mixed_6/conv` tensor ADM's evaluator uses for sFID (TF names the blocks mixed, mixed_1, ...
                      from Mixed_5b, so mixed_6 is Mixed_6d).
Inputs (`preprocess`): uint8 [0, 255] or float [-1, 1] NHWC images, 1 or 3 channels, resized to 299x299 with
bilinear interpolation (half-pixel centres, no antialiasing: pytorch-fid's F.interpolate(align_corners=False)).
ADM's evaluator resizes inside the TF graph instead, so FIDs agree with pytorch-fid/jax-fid, not to the last
digit with ADM's published numbers.

Weight file (WEIGHTS_FORMAT below): nothing is ever downloaded. Get the file once, by hand, from either
  * jax-fid: `inception_v3_weights_fid.pickle`, the file `jax_fid.inception.InceptionV3` downloads (its
    `ckpt_path`, https://www.dropbox.com/s/xt6zvlvt22dcwck/inception_v3_weights_fid.pickle?dl=1); or
  * pytorch-fid: `pt_inception-2015-12-05-6726825d.pth` (https://github.com/mseitzer/pytorch-fid/releases/
    download/fid_weights/pt_inception-2015-12-05-6726825d.pth), converted with
    `python -m debias_jax.evaluation.inception --convert_torch=IN.pth --output=OUT.pickle` (needs torch; or
    pass the state dict saved as .npz, see `read_torch_state_dict`).
and set the config value `eval.inception_weights` to its path.
"""

from __future__ import annotations

import functools
import io
import pickle
from typing import Any, Callable, Mapping

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from debias_jax import storage

INPUT_SIZE = 299
MIN_INPUT_SIZE = 75
POOL_DIM = 2048
NUM_CLASSES = 1008
SPATIAL_CHANNELS = 7

WEIGHTS_FORMAT = """\
A Python pickle of nested dicts of numpy arrays (the format of matthias-wright/jax-fid's
inception_v3_weights_fid.pickle), keyed by the pytorch-fid module names:
  {'Conv2d_1a_3x3': {'conv': {'kernel': float32 (3, 3, 3, 32) HWIO},
                     'bn': {'scale': (32,), 'bias': (32,), 'mean': (32,), 'var': (32,)}},
   'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'Conv2d_3b_1x1', 'Conv2d_4a_3x3': same layout,
   'Mixed_5b' ... 'Mixed_7c': {'<branch name, e.g. branch1x1, branch5x5_1>': {'conv': ..., 'bn': ...}, ...},
   'fc': {'kernel': (2048, 1008), 'bias': (1008,)}}
Convolutions have no bias (a 'bias' entry under 'conv' is ignored, as is 'AuxLogits'); 'fc' is optional
(without it there are no logits and no Inception Score)."""

HOW_TO_GET = """\
Get the FID Inception weights by hand (nothing here downloads): either jax-fid's inception_v3_weights_fid.pickle
(the file at jax_fid.inception.InceptionV3.ckpt_path:
https://www.dropbox.com/s/xt6zvlvt22dcwck/inception_v3_weights_fid.pickle?dl=1), or pytorch-fid's
pt_inception-2015-12-05-6726825d.pth converted with
`python -m debias_jax.evaluation.inception --convert_torch=pt_inception-2015-12-05-6726825d.pth
--output=inception_v3_fid.pickle` (needs torch); then pass its path: --config.eval.inception_weights=PATH to
main.py, --inception_weights=PATH to debias_jax.evaluation.evaluator.
For the embedded offline datasets, --config.eval.feature_space=standin needs no weights."""


class InceptionWeightsError(ValueError):
  """The Inception weight file is missing or is not in WEIGHTS_FORMAT."""


# ----------------------------------------------------------------------------------------------------------------
# The network. Module names equal the keys of the weight file, so loading is a walk over matching paths.


class FrozenBatchNorm(nn.Module):
  """Inference-only batch norm (running statistics as parameters: this network is never trained here)."""
  epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (features,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (features,), jnp.float32)
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    return x * mul.astype(x.dtype) + (bias - mean * mul).astype(x.dtype)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> batch norm (eps 1e-3) -> ReLU."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Any = "VALID"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel_size, self.strides, self.padding, use_bias=False, dtype=self.dtype,
                name="conv")(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x))


def _pad(h: int, w: int):
  return ((h, h), (w, w))


def _avg_pool_3x3(x):
  # TF's average pool divides by the number of valid (unpadded) pixels.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=_pad(1, 1), count_include_pad=False)


def _max_pool_3x3(x):
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=_pad(1, 1))


class InceptionA(nn.Module):
  pool_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=_pad(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    bp = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(nn.Module):
  """Returns the block output and its 1x1 branch (Mixed_6d's 1x1 branch is ADM's sFID tensor)."""
  channels_7x7: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=_pad(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=_pad(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=_pad(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=_pad(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=_pad(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=_pad(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1), b1


class InceptionD(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=_pad(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=_pad(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    bp = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(nn.Module):
  """pool_branch: 'avg' in Mixed_7b, 'max' in Mixed_7c (a quirk of the 2015 graph that FID inherits)."""
  pool_branch: str = "avg"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=_pad(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=_pad(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=_pad(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=_pad(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pool = _max_pool_3x3 if self.pool_branch == "max" else _avg_pool_3x3
    bp = conv(192, (1, 1), name="branch_pool")(pool(x))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3 on preprocessed images (B, H, W, 3) in [-1, 1], H, W >= 75 (299 for real FID).

  num_classes: size of the classifier head (1008 for the FID weights; 0 = no head, no logits).
  """
  num_classes: int = NUM_CLASSES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x) -> dict[str, jax.Array]:
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = conv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = conv(64, (3, 3), padding=_pad(1, 1), name="Conv2d_2b_3x3")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = InceptionA(32, dtype=self.dtype, name="Mixed_5b")(x)
    x = InceptionA(64, dtype=self.dtype, name="Mixed_5c")(x)
    x = InceptionA(64, dtype=self.dtype, name="Mixed_5d")(x)
    x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)
    x, _ = InceptionC(128, dtype=self.dtype, name="Mixed_6b")(x)
    x, _ = InceptionC(160, dtype=self.dtype, name="Mixed_6c")(x)
    x, mixed_6d_1x1 = InceptionC(160, dtype=self.dtype, name="Mixed_6d")(x)
    x, _ = InceptionC(192, dtype=self.dtype, name="Mixed_6e")(x)
    x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)
    x = InceptionE("avg", dtype=self.dtype, name="Mixed_7b")(x)
    x = InceptionE("max", dtype=self.dtype, name="Mixed_7c")(x)
    pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    spatial = mixed_6d_1x1[..., :SPATIAL_CHANNELS].astype(jnp.float32)
    out = {"pool": pool, "spatial": spatial.reshape(spatial.shape[0], -1)}
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(pool)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing.


def preprocess(images, size: int = INPUT_SIZE) -> jax.Array:
  """uint8 [0, 255] or float [-1, 1] NHWC images with 1 or 3 channels -> float32 (B, size, size, 3) in [-1, 1].

  Bilinear with half-pixel centres and no antialiasing, like pytorch-fid's F.interpolate(align_corners=False).
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Inception expects NHWC images with 1 or 3 channels; got shape {images.shape}.")
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 127.5 - 1.0
  elif jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  else:
    raise ValueError(f"Images must be uint8 or float in [-1, 1]; got dtype {images.dtype}.")
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  if images.shape[1:3] != (size, size):
    images = jax.image.resize(images, (images.shape[0], size, size, 3), method="bilinear", antialias=False)
  return images


# ----------------------------------------------------------------------------------------------------------------
# Parameters: random stand-ins, loading, saving, converting.


def init_params(seed: int = 0, num_classes: int = NUM_CLASSES) -> dict:
  """Random stand-in parameters for tests without weight files: LeCun-normal kernels scaled by sqrt(2) (He, so
  activations keep their size through 90+ ReLU layers), zero biases, identity batch norms.

  Drawn with numpy from the shape tree: jitting `model.init` for 24M parameters takes a minute on a CPU.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(draw, param_shapes(num_classes))


@functools.lru_cache(maxsize=4)
def param_shapes(num_classes: int = NUM_CLASSES) -> dict:
  """The tree of parameter shapes (as jax.ShapeDtypeStruct), computed without allocating anything (cached: the
  trace takes seconds)."""
  model = InceptionV3(num_classes=num_classes)
  dummy = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), dummy)["params"]


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Refuses anything but containers and numpy/jax arrays, so a wrong or hostile file cannot run code."""
  _ALLOWED = {
      "numpy": {"ndarray", "dtype"},
      "numpy.core.multiarray": {"_reconstruct", "scalar"},
      "numpy._core.multiarray": {"_reconstruct", "scalar"},
      "numpy.core.numeric": {"_frombuffer"},
      "numpy._core.numeric": {"_frombuffer"},
      "collections": {"OrderedDict"},
      "builtins": {"dict", "list", "tuple"},
  }
  _ALLOWED_MODULES = ("numpy.dtypes", "jax._src.array", "flax.core.frozen_dict")

  def find_class(self, module, name):
    if name in self._ALLOWED.get(module, ()) or module in self._ALLOWED_MODULES:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"the pickle contains a {module}.{name} object, not just dicts of arrays")


def _read_weight_dict(path: str) -> Mapping:
  if not path:
    raise InceptionWeightsError("No Inception weight file given (config value eval.inception_weights is empty).\n"
                                + HOW_TO_GET)
  if not epath.Path(path).is_file():
    raise InceptionWeightsError(f"Inception weight file not found: {str(path)!r}.\n" + HOW_TO_GET)
  raw = epath.Path(path).read_bytes()
  try:
    tree = _ArraysOnlyUnpickler(io.BytesIO(raw)).load()
  except Exception as e:  # pickle raises many types on foreign bytes.
    raise InceptionWeightsError(
        f"{path} is not an Inception weight pickle ({type(e).__name__}: {e}).\nExpected format:\n{WEIGHTS_FORMAT}\n"
        + HOW_TO_GET) from e
  if not isinstance(tree, Mapping):
    raise InceptionWeightsError(f"{path} holds a {type(tree).__name__}, not a dict of parameters.\n"
                                f"Expected format:\n{WEIGHTS_FORMAT}\n" + HOW_TO_GET)
  return tree


def _lookup(tree: Mapping, path: tuple[str, ...]):
  node = tree
  for key in path:
    if not isinstance(node, Mapping) or key not in node:
      return None
    node = node[key]
  return node


def params_from_weight_dict(tree: Mapping, source: str = "weight dict") -> tuple[dict, int]:
  """Checks a nested weight dict against the architecture and returns (params, num_classes)."""
  fc_kernel = _lookup(tree, ("fc", "kernel"))
  num_classes = int(np.shape(fc_kernel)[1]) if fc_kernel is not None and np.ndim(fc_kernel) == 2 else 0
  expected = param_shapes(num_classes)
  problems = []

  def fill(path, leaf):
    keys = tuple(k.key for k in path)
    value = _lookup(tree, keys)
    name = "/".join(keys)
    if value is None:
      problems.append(f"missing {name} (expected shape {leaf.shape})")
      return None
    value = np.asarray(value)
    if value.shape != leaf.shape:
      problems.append(f"{name} has shape {value.shape}, expected {leaf.shape}")
      return None
    if not np.issubdtype(value.dtype, np.floating):
      problems.append(f"{name} has dtype {value.dtype}, expected floating point")
      return None
    return value.astype(np.float32)

  params = jax.tree_util.tree_map_with_path(fill, expected)
  if problems:
    shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
    raise InceptionWeightsError(
        f"{source} does not match the FID Inception-v3 ({len(problems)} problems):\n  {shown}\n"
        f"Expected format:\n{WEIGHTS_FORMAT}\n" + HOW_TO_GET)
  return params, num_classes


def load_params(path: str) -> tuple[dict, int]:
  """Reads a weight file in WEIGHTS_FORMAT; returns (params, num_classes). Errors say what is wrong and how to
  get the right file."""
  return params_from_weight_dict(_read_weight_dict(path), source=path)


def save_params(path: str, params) -> str:
  """Writes params in WEIGHTS_FORMAT (numpy arrays in nested dicts), readable by `load_params` and jax-fid."""
  tree = jax.tree.map(lambda x: np.asarray(x, np.float32), _to_plain_dict(params))
  storage.write_atomic(path, pickle.dumps(tree, protocol=4))
  return path


def _to_plain_dict(tree):
  if isinstance(tree, Mapping):
    return {k: _to_plain_dict(v) for k, v in tree.items()}
  return tree


_TORCH_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def convert_torch_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """pytorch-fid's FID Inception state dict (names like `Mixed_5b.branch1x1.conv.weight`, arrays or tensors)
  -> the nested dict of WEIGHTS_FORMAT. Conv kernels OIHW -> HWIO, the fc matrix (out, in) -> (in, out);
  num_batches_tracked and AuxLogits are dropped."""
  tree: dict = {}
  for name, value in state_dict.items():
    parts = name.split(".")
    if parts[0] == "AuxLogits" or parts[-1] == "num_batches_tracked":
      continue
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, np.float32)
    if parts[0] == "fc":
      leaf_path, array = ("fc", {"weight": "kernel", "bias": "bias"}[parts[-1]]), (
          array.T if parts[-1] == "weight" else array)
    elif parts[-2] == "conv" and parts[-1] == "weight":
      leaf_path, array = tuple(parts[:-1]) + ("kernel",), array.transpose(2, 3, 1, 0)
    elif parts[-2] == "bn" and parts[-1] in _TORCH_BN_NAMES:
      leaf_path = tuple(parts[:-1]) + (_TORCH_BN_NAMES[parts[-1]],)
    else:
      raise InceptionWeightsError(f"Unexpected entry {name!r} in the torch state dict: not pytorch-fid's FID "
                                  "Inception (pt_inception-2015-12-05-6726825d.pth).")
    node = tree
    for key in leaf_path[:-1]:
      node = node.setdefault(key, {})
    node[leaf_path[-1]] = array
  return tree


# ----------------------------------------------------------------------------------------------------------------
# The forward function used by evaluation.


def make_inception_fn(params, num_classes: int, *, dtype=jnp.float32) -> Callable[[Any], dict[str, jax.Array]]:
  """A jitted fn(images uint8 or float [-1, 1] NHWC) -> {'pool', 'spatial'[, 'logits']}; params stay arguments."""
  model = InceptionV3(num_classes=num_classes, dtype=dtype)

  @jax.jit
  def forward(params, images):
    return model.apply({"params": params}, preprocess(images))

  params = jax.device_put(params)
  return lambda images: forward(params, images)


def load_inception_fn(path: str, **kwargs) -> tuple[Callable[[Any], dict[str, jax.Array]], int]:
  """make_inception_fn with the weights of `path`; returns (fn, num_classes)."""
  params, num_classes = load_params(path)
  return make_inception_fn(params, num_classes, **kwargs), num_classes


def read_torch_state_dict(path: str) -> Mapping[str, np.ndarray]:
  """pytorch-fid's .pth (needs torch), or the same state dict saved as .npz of numpy arrays (needs no torch)."""
  if str(path).endswith(".npz"):
    with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(
        "Reading a .pth needs torch. Either install torch here, or in any environment that has it run\n"
        "  python -c \"import torch, numpy as np; sd = torch.load('pt_inception-2015-12-05-6726825d.pth', "
        "map_location='cpu'); np.savez('pt_inception.npz', **{k: v.numpy() for k, v in sd.items()})\"\n"
        "and convert the .npz instead.") from e
  with epath.Path(path).open("rb") as f:
    return torch.load(f, map_location="cpu", weights_only=True)


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f"Unexpected arguments: {argv[1:]}")
  if not flag_values.convert_torch or not flag_values.output:
    raise SystemExit("Usage: python -m debias_jax.evaluation.inception --convert_torch=IN.pth|IN.npz "
                     "--output=OUT.pickle")
  tree = convert_torch_state_dict(read_torch_state_dict(flag_values.convert_torch))
  params, num_classes = params_from_weight_dict(tree, source=flag_values.convert_torch)
  save_params(flag_values.output, params)
  print(f"Wrote {flag_values.output}: FID Inception-v3 weights, {num_classes} classes.")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  flags.DEFINE_string("convert_torch", "", "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or its state dict "
                      "as .npz) to convert.")
  flags.DEFINE_string("output", "", "Where to write the pickle in WEIGHTS_FORMAT.")
  app.run(_main)
