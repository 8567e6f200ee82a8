"""A Gaussian mixture in image shape whose optimal denoiser is known exactly: the ground truth of the bias benchmark.

Each component k is N(mu_k, Q_k diag(lam_k) Q_k^T + sigma_k^2 I): a mean image of a coloured blob on a coloured
background, a few structured directions of variation (Q_k orthonormal, D x rank) and isotropic pixel noise. The
directions are a global colour offset (the very thing the paper's colour shift gets wrong), the blob's contrast and
smooth random fields, so the data is low-dimensional and image-like and denoising it is not trivial.

For x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (ab = alpha_bar), component k's marginal is
N(sqrt(ab) mu_k, Q diag(ab lam + delta) Q^T + delta (I - Q Q^T)) with delta = ab sigma_k^2 + 1 - ab, so the
posterior mean E[x0 | x_t], the noisy marginal density and log p(x0) have closed forms with no per-example matrix
factorisation. They are written in jax.numpy (jittable, batched, alpha_bar per example, highest matmul precision
so TPUs do not drop to bfloat16). Sampling is numpy float64, so the training set is identical on every platform.
Samples are not clipped to [-1, 1] (clipping would break the exact formulas); with the defaults about 0.1% of
values fall outside it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  """Mixture parameters (numpy float64) and exact jax formulas; images are flattened in NHWC order (D = H*W*C)."""
  shape: tuple[int, int, int]
  weights: np.ndarray      # (K,), sums to 1
  means: np.ndarray        # (K, D)
  basis: np.ndarray        # (K, D, r), orthonormal columns per component
  eigvals: np.ndarray      # (K, r), variances along the basis directions (on top of the noise)
  noise_var: np.ndarray    # (K,), isotropic variance sigma_k^2

  def __post_init__(self):
    k, d = self.means.shape
    if d != math.prod(self.shape):
      raise ValueError(f"Means have dimension {d}, but the image shape {self.shape} has {math.prod(self.shape)}.")
    if (self.weights.shape != (k,) or self.basis.shape[:2] != (k, d) or self.eigvals.shape != (k, self.basis.shape[2])
        or self.noise_var.shape != (k,)):
      raise ValueError("Inconsistent mixture parameter shapes.")
    if not np.isclose(self.weights.sum(), 1.0) or np.any(self.weights <= 0):
      raise ValueError("Mixture weights must be positive and sum to 1.")
    if np.any(self.eigvals < 0) or np.any(self.noise_var <= 0):
      raise ValueError("Variances must be non-negative (eigvals) and positive (noise_var).")

  def __repr__(self):
    return (f"GaussianMixture(shape={self.shape}, num_components={self.num_components}, rank={self.rank}, "
            f"weights={np.round(self.weights, 3).tolist()})")

  @property
  def num_components(self) -> int:
    return len(self.weights)

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  @property
  def rank(self) -> int:
    return self.basis.shape[2]

  @property
  def mean(self) -> np.ndarray:
    """The data mean E[x0], (H, W, C) float64: the ideal x0 prediction at t -> T."""
    return (self.weights @ self.means).reshape(self.shape)

  def component_covariance(self, k: int) -> np.ndarray:
    """Dense (D, D) covariance of component k (float64; for tests and small analyses)."""
    q = self.basis[k]
    return (q * self.eigvals[k]) @ q.T + self.noise_var[k] * np.eye(self.dim)

  # ----- sampling (numpy) -----

  def sample(self, seed: int | np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n exact samples: images float32 (n, H, W, C) and component labels int32 (n,); deterministic given a seed."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    labels = rng.choice(self.num_components, size=n, p=self.weights)
    z_low = rng.standard_normal((n, self.rank)) * np.sqrt(self.eigvals[labels])
    x = (self.means[labels] + np.einsum("ndr,nr->nd", self.basis[labels], z_low)
         + np.sqrt(self.noise_var[labels])[:, None] * rng.standard_normal((n, self.dim)))
    return x.reshape((n,) + self.shape).astype(np.float32), labels.astype(np.int32)

  # ----- exact densities and denoiser (jax) -----

  def _components(self, x_t, alpha_bar):
    """Per-component log N(x_t; marginal) and E[x0 | x_t, k]; x_t (B, D), alpha_bar (B,) -> (B, K), (B, K, D)."""
    dtype = x_t.dtype
    means = jnp.asarray(self.means, dtype)
    basis = jnp.asarray(self.basis, dtype)
    eigvals = jnp.asarray(self.eigvals, dtype)
    noise_var = jnp.asarray(self.noise_var, dtype)
    a = jnp.sqrt(alpha_bar)[:, None]                                    # (B, 1)
    delta = alpha_bar[:, None] * noise_var[None] + (1.0 - alpha_bar)[:, None]   # (B, K) variance off the basis
    along = alpha_bar[:, None, None] * eigvals[None] + delta[..., None]  # (B, K, r) variance along the basis
    y = x_t[:, None, :] - a[..., None] * means[None]                   # (B, K, D)
    proj = jnp.einsum("bkd,kdr->bkr", y, basis, precision=_HIGHEST)    # Q^T y
    y_perp = y - jnp.einsum("bkr,kdr->bkd", proj, basis, precision=_HIGHEST)
    quad = jnp.sum(proj * proj / along, axis=-1) + jnp.sum(y_perp * y_perp, axis=-1) / delta
    logdet = jnp.sum(jnp.log(along), axis=-1) + (self.dim - self.rank) * jnp.log(delta)
    log_normal = -0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))
    # E[x0 | x_t, k] = mu + a Sigma C^{-1} y, with C^{-1} y = Q (proj / along) + y_perp / delta and
    # Sigma = Q lam Q^T + sigma^2 I, so Sigma C^{-1} y = Q ((lam + sigma^2) proj / along) + sigma^2 y_perp / delta.
    low = (eigvals[None] + noise_var[None, :, None]) * proj / along
    sigma_z = (jnp.einsum("bkr,kdr->bkd", low, basis, precision=_HIGHEST)
               + (noise_var[None] / delta)[..., None] * y_perp)
    return log_normal, means[None] + a[..., None] * sigma_z

  def _prepare(self, x, alpha_bar):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    if x.shape[-3:] != self.shape:
      raise ValueError(f"Expected images of shape (..., {', '.join(map(str, self.shape))}), got {x.shape}.")
    batch_shape = x.shape[:-3]
    flat = x.reshape((-1, self.dim))
    ab = jnp.broadcast_to(jnp.asarray(alpha_bar, x.dtype), batch_shape).reshape(-1)
    return flat, ab, batch_shape

  def marginal_log_prob(self, x_t, alpha_bar):
    """Exact log density of x_t = sqrt(ab) x0 + sqrt(1 - ab) eps; x_t (..., H, W, C), alpha_bar broadcastable."""
    return _marginal_log_prob(self, x_t, alpha_bar)

  def log_prob(self, x):
    """Exact log p(x0) of clean images (..., H, W, C)."""
    return _marginal_log_prob(self, x, 1.0)

  def posterior_mean(self, x_t, alpha_bar):
    """E[x0 | x_t] for x_t = sqrt(ab) x0 + sqrt(1 - ab) eps: the optimal x0 prediction at that noise level.

    x_t: (..., H, W, C); alpha_bar: scalar or per example (broadcastable to the batch shape), e.g.
    `schedule.alphas_cumprod[t]`. Returns the shape and float dtype of x_t. Jitted (and jittable inside a caller).
    """
    return _posterior_mean(self, x_t, alpha_bar)

  def posterior_eps(self, x_t, alpha_bar):
    """E[eps | x_t] = (x_t - sqrt(ab) E[x0 | x_t]) / sqrt(1 - ab): the optimal eps prediction (ab < 1)."""
    x_t = jnp.asarray(x_t)
    x0 = self.posterior_mean(x_t, alpha_bar)
    ab = jnp.asarray(alpha_bar, x0.dtype).reshape(jnp.shape(alpha_bar) + (1, 1, 1))
    return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)


# Compiled once per mixture (hashed by identity) and input shape.
@functools.partial(jax.jit, static_argnums=0)
def _marginal_log_prob(mixture: GaussianMixture, x_t, alpha_bar):
  flat, ab, batch_shape = mixture._prepare(x_t, alpha_bar)  # pylint: disable=protected-access
  log_normal, _ = mixture._components(flat, ab)  # pylint: disable=protected-access
  log_w = jnp.log(jnp.asarray(mixture.weights, flat.dtype))
  return jax.nn.logsumexp(log_normal + log_w, axis=-1).reshape(batch_shape)


@functools.partial(jax.jit, static_argnums=0)
def _posterior_mean(mixture: GaussianMixture, x_t, alpha_bar):
  flat, ab, batch_shape = mixture._prepare(x_t, alpha_bar)  # pylint: disable=protected-access
  log_normal, cond_means = mixture._components(flat, ab)  # pylint: disable=protected-access
  resp = jax.nn.softmax(log_normal + jnp.log(jnp.asarray(mixture.weights, flat.dtype)), axis=-1)
  return jnp.einsum("bk,bkd->bd", resp, cond_means, precision=_HIGHEST).reshape(batch_shape + mixture.shape)


def make_gmm(image_size: int = 8, channels: int = 3, num_components: int = 8, rank: int = 6,
             noise_std: float = 0.05, seed: int = 0) -> GaussianMixture:
  """Builds the mixture deterministically from a seed: coloured-blob means and structured low-rank variation."""
  if image_size < 2 or channels < 1 or num_components < 1 or rank < 0 or noise_std <= 0:
    raise ValueError("make_gmm needs image_size >= 2, channels >= 1, num_components >= 1, rank >= 0, noise_std > 0.")
  shape = (image_size, image_size, channels)
  dim = math.prod(shape)
  if rank > dim:
    raise ValueError(f"rank={rank} exceeds the image dimension {dim}.")
  rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x6A11,)))
  weights = rng.dirichlet(np.full(num_components, 4.0))
  weights = 0.5 * weights + 0.5 / num_components          # keep every component visible in a few thousand samples
  coords = (np.arange(image_size) + 0.5) / image_size
  yy, xx = np.meshgrid(coords, coords, indexing="ij")

  def unit_colour():
    c = rng.standard_normal(channels)
    return c / np.linalg.norm(c)

  means, bases, eigvals = [], [], []
  for _ in range(num_components):
    background = rng.uniform(-0.45, 0.45, channels)
    blob = rng.uniform(-0.6, 0.6, channels)
    centre = rng.uniform(0.25, 0.75, 2)
    radius = rng.uniform(0.15, 0.3)
    bump = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * radius ** 2))[..., None]
    means.append((background + (blob - background) * bump).reshape(-1))
    # Directions whose largest per-pixel standard deviation is `std`: colour offsets, blob contrast, smooth fields.
    directions = []
    for j in range(rank):
      if j < min(2, channels):
        pattern, std = np.ones((image_size, image_size, 1)) * unit_colour(), 0.15
      elif j == min(2, channels):
        pattern, std = bump * unit_colour(), 0.25
      else:
        field = ndimage.gaussian_filter(rng.standard_normal((image_size, image_size)), image_size / 4, mode="wrap")
        pattern, std = field[..., None] * unit_colour(), 0.08
      pattern = pattern.reshape(-1)
      directions.append(pattern / np.max(np.abs(pattern)) * std)
    u = np.stack(directions, axis=1) if rank else np.zeros((dim, 0))
    q, s, _ = np.linalg.svd(u, full_matrices=False)       # u u^T = q diag(s^2) q^T
    bases.append(q)
    eigvals.append(s ** 2)
  noise_var = (noise_std * rng.uniform(0.7, 1.3, num_components)) ** 2
  return GaussianMixture(shape=shape, weights=weights, means=np.stack(means), basis=np.stack(bases),
                         eigvals=np.stack(eigvals), noise_var=noise_var)
