"""Noise schedules of discrete-time DDPM, as float64 numpy tables.

Everything here is computed once on the host in float64 (JAX would silently drop to float32 without x64) and
cast to float32 where a jitted function gathers from it. A `Schedule` holds the tables for one chain of
timesteps: the full training chain, or a respaced subsequence of it (`respace`), which keeps the original
alphas_cumprod at the kept steps and remembers which original timestep each index stands for.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SCHEDULE_NAMES = ("linear", "cosine")


def linear_betas(num_timesteps: int) -> np.ndarray:
  """Ho et al.'s linear schedule, scaled so any T spans the same noise range as T = 1000."""
  scale = 1000.0 / num_timesteps
  return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule, alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)."""

  def alpha_bar(s):
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

  return np.array([min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
                   for i in range(num_timesteps)], dtype=np.float64)


def get_betas(name: str, num_timesteps: int) -> np.ndarray:
  if name == "linear":
    return linear_betas(num_timesteps)
  if name == "cosine":
    return cosine_betas(num_timesteps)
  raise ValueError(f"Unknown noise schedule {name!r}; valid names: {', '.join(SCHEDULE_NAMES)}.")


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """Tables of one diffusion chain; index i of every table is step i of this chain.

  `timesteps[i]` is the original training timestep that step i stands for (the identity on the full chain);
  models are always called with original timesteps. `num_train_timesteps` is T of the training chain.
  """
  alphas_cumprod: np.ndarray
  timesteps: np.ndarray
  num_train_timesteps: int

  def __post_init__(self):
    ac = np.asarray(self.alphas_cumprod, np.float64)
    if ac.ndim != 1 or not np.all((ac > 0) & (ac <= 1)) or np.any(np.diff(ac) > 0):
      raise ValueError("alphas_cumprod must be a non-increasing 1-D sequence in (0, 1].")
    object.__setattr__(self, "alphas_cumprod", ac)
    object.__setattr__(self, "timesteps", np.asarray(self.timesteps, np.int64))

  @classmethod
  def from_betas(cls, betas: np.ndarray) -> "Schedule":
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas > 1):
      raise ValueError("betas must be a 1-D sequence in (0, 1].")
    return cls(np.cumprod(1.0 - betas), np.arange(len(betas)), len(betas))

  @classmethod
  def named(cls, name: str, num_timesteps: int = 1000) -> "Schedule":
    return cls.from_betas(get_betas(name, num_timesteps))

  # Derived tables (cheap; recomputed on access so the dataclass has a single source of truth).
  @property
  def num_steps(self) -> int:
    return len(self.alphas_cumprod)

  @property
  def alphas_cumprod_prev(self) -> np.ndarray:
    return np.append(1.0, self.alphas_cumprod[:-1])

  @property
  def betas(self) -> np.ndarray:
    return 1.0 - self.alphas_cumprod / self.alphas_cumprod_prev

  @property
  def sqrt_alphas_cumprod(self) -> np.ndarray:
    return np.sqrt(self.alphas_cumprod)

  @property
  def sqrt_one_minus_alphas_cumprod(self) -> np.ndarray:
    return np.sqrt(1.0 - self.alphas_cumprod)

  @property
  def snr(self) -> np.ndarray:
    return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

  @property
  def log_snr(self) -> np.ndarray:
    return np.log(self.alphas_cumprod) - np.log1p(-self.alphas_cumprod)

  @property
  def posterior_variance(self) -> np.ndarray:
    """Variance of q(x_{i-1} | x_i, x0)."""
    return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

  @property
  def posterior_log_variance_clipped(self) -> np.ndarray:
    """log of the posterior variance with its zero at step 0 replaced by step 1's value (guided-diffusion)."""
    var = self.posterior_variance
    if len(var) == 1:
      return np.log(np.maximum(var, 1e-20))
    return np.log(np.append(var[1], var[1:]))

  @property
  def posterior_mean_coef1(self) -> np.ndarray:
    """Coefficient of x0 in the posterior mean."""
    return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

  @property
  def posterior_mean_coef2(self) -> np.ndarray:
    """Coefficient of x_t in the posterior mean."""
    return (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.alphas_cumprod)

  def respace(self, spec: str | int) -> "Schedule":
    """The sub-chain chosen by guided-diffusion's respacing string (see `space_timesteps`)."""
    kept = space_timesteps(self.num_steps, spec)
    return Schedule(self.alphas_cumprod[kept], self.timesteps[kept], self.num_train_timesteps)


def space_timesteps(num_timesteps: int, spec: str | int) -> np.ndarray:
  """Sorted indices of the steps to keep, with guided-diffusion's `space_timesteps` semantics.

  - "ddimN": the stride-s grid range(0, T, s) for the smallest s that gives exactly N steps;
  - "N" or N: N steps spread evenly over the chain (first and last step kept);
  - "a,b,c": the chain cut into equal sections, a steps spread evenly in the first, b in the second, ...
  """
  if isinstance(spec, (int, np.integer)):
    spec = str(int(spec))
  spec = spec.strip()
  if spec.startswith("ddim"):
    count = int(spec[len("ddim"):])
    for stride in range(1, num_timesteps):
      if len(range(0, num_timesteps, stride)) == count:
        return np.arange(0, num_timesteps, stride)
    if count == num_timesteps:
      return np.arange(num_timesteps)
    raise ValueError(f"Cannot take exactly {count} steps of a {num_timesteps}-step chain with a fixed stride "
                     f"(respacing {spec!r}); pick a count that some stride produces, or use '{count}'.")
  try:
    counts = [int(c) for c in spec.split(",")]
  except ValueError:
    raise ValueError(f"Bad respacing {spec!r}: use 'N', 'ddimN' or comma-separated counts like '10,15,20'.")
  base, extra = divmod(num_timesteps, len(counts))
  kept, start = [], 0
  for i, count in enumerate(counts):
    size = base + (1 if i < extra else 0)
    if not 1 <= count <= size:
      raise ValueError(f"Respacing {spec!r}: section {i} has {size} steps, cannot take {count} from it.")
    stride = 1.0 if count == 1 else (size - 1) / (count - 1)
    # A running float sum and Python's round() (half to even), as guided-diffusion does: both decide ties.
    position = 0.0
    for _ in range(count):
      kept.append(start + round(position))
      position += stride
    start += size
  return np.array(sorted(set(kept)), dtype=np.int64)
