"""DDPM and DDIM samplers against data N(mu, s^2) per pixel, whose optimal denoiser is analytic."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.diffusion import samplers
from debias_jax.diffusion import schedules
from debias_jax.diffusion import targets

LINEAR = schedules.Schedule.named("linear", 1000)
MU, S = 0.3, 0.5


def gaussian_denoiser(target, learned_variance_chain=None):
  """The exact model for x0 ~ N(MU, S^2) per pixel, as an eps, x0 or v predictor at original timesteps.

  With `learned_variance_chain`, it also outputs the learned-range channels that give the exact reverse
  variance on that chain: posterior variance + coef1^2 Var[x0 | x_t] (the true reverse kernel is Gaussian).
  """
  ab_table = jnp.asarray(LINEAR.alphas_cumprod, jnp.float32)

  def model_fn(x, t):
    ab = ab_table[t.astype(jnp.int32)][:, None, None, None]
    a, sigma2 = jnp.sqrt(ab), 1 - ab
    x0 = MU + a * S ** 2 * (x - a * MU) / (ab * S ** 2 + sigma2)
    eps = (x - a * x0) / jnp.sqrt(sigma2)
    out = {"x0": x0, "eps": eps, "v": a * eps - jnp.sqrt(sigma2) * x0}[target]
    if learned_variance_chain is None:
      return out
    chain = learned_variance_chain
    i = jnp.searchsorted(jnp.asarray(chain.timesteps), t.astype(jnp.int32))
    post_var = jnp.asarray(chain.posterior_variance, jnp.float32)[i][:, None, None, None]
    coef1 = jnp.asarray(chain.posterior_mean_coef1, jnp.float32)[i][:, None, None, None]
    min_log = jnp.asarray(chain.posterior_log_variance_clipped, jnp.float32)[i][:, None, None, None]
    max_log = jnp.log(jnp.asarray(chain.betas, jnp.float32))[i][:, None, None, None]
    var_x0 = S ** 2 * sigma2 / (ab * S ** 2 + sigma2)
    log_var = jnp.log(jnp.maximum(post_var + coef1 ** 2 * var_x0, 1e-20))
    frac = jnp.where(i[:, None, None, None] == 0, 0.0, (log_var - min_log) / (max_log - min_log))
    return jnp.concatenate([out, (2 * frac - 1) * jnp.ones_like(x)], axis=-1)

  return model_fn


def run(name, steps, model_fn, x_T, rng, **options):
  sample = samplers.get_sampler(name, LINEAR, steps, clip_x0=False, **options)
  return jax.jit(lambda x, key: sample(model_fn, x, key))(x_T, rng)


def moments(samples):
  samples = np.asarray(samples, np.float64)
  return samples.mean(), samples.var()


class SamplerTest(parameterized.TestCase):
  N = 8192  # pixels: standard errors ~0.0055 on the mean, ~0.004 on the variance

  def _noise(self, seed=0):
    return jax.random.normal(jax.random.key(seed), (self.N // 16, 4, 4, 1))

  @parameterized.parameters(*targets.TARGETS)
  def test_ddpm_1000_steps_matches_the_data_distribution(self, target):
    x = run("ddpm", "1000", gaussian_denoiser(target), self._noise(), jax.random.key(1), target=target)
    mean, var = moments(x)
    self.assertAlmostEqual(mean, MU, delta=0.025)
    self.assertAlmostEqual(var, S ** 2, delta=0.02)

  @parameterized.parameters("10", "ddim25")
  def test_ddpm_with_the_exact_learned_variance_is_exact_on_a_short_chain(self, steps):
    chain = LINEAR.respace(steps)
    x = run("ddpm", steps, gaussian_denoiser("eps", chain), self._noise(), jax.random.key(2),
            var_type="learned_range")
    mean, var = moments(x)
    self.assertAlmostEqual(mean, MU, delta=0.025)
    self.assertAlmostEqual(var, S ** 2, delta=0.02)

  @parameterized.parameters(*targets.TARGETS)
  def test_ddim_converges_to_the_data_distribution_at_first_order(self, target):
    """DDIM (eta = 0) is an affine map per pixel, x0 = A x_T + B: read A and B off two inputs, no sampling error.

    Its variance A^2 approaches S^2 with an error that halves when the steps double (Euler-like, first order).
    """
    def affine(steps):
      x_T = jnp.array([0.0, 1.0]).reshape(2, 1, 1, 1)
      b, a_plus_b = np.asarray(run("ddim", steps, gaussian_denoiser(target), x_T, jax.random.key(0),
                                   target=target), np.float64).ravel()
      return a_plus_b - b, b

    errors = []
    for steps in ("ddim25", "ddim50", "ddim100", "ddim200"):
      a, b = affine(steps)
      self.assertAlmostEqual(b, MU, delta=0.003)
      errors.append(S ** 2 - a ** 2)
    for coarse, fine in zip(errors, errors[1:]):
      self.assertBetween(coarse / fine, 1.6, 2.4)
    a, b = affine("ddim1000")
    self.assertAlmostEqual(a ** 2, S ** 2, delta=0.003)

  def test_ddim_50_samples_match_the_data_up_to_its_discretisation_error(self):
    x = run("ddim", "ddim50", gaussian_denoiser("eps"), self._noise(), jax.random.key(3))
    mean, var = moments(x)
    self.assertAlmostEqual(mean, MU, delta=0.025)
    self.assertAlmostEqual(var, S ** 2, delta=0.04)  # 0.027 of it is DDIM's, measured exactly above

  @parameterized.parameters(("ddim", "ddim50"), ("ddpm", "100"))
  def test_eps_x0_and_v_parameterisations_give_the_same_samples(self, name, steps):
    x_T, key = self._noise(4)[:32], jax.random.key(5)
    outputs = [run(name, steps, gaussian_denoiser(t), x_T, key, target=t) for t in targets.TARGETS]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=2e-4)
    np.testing.assert_allclose(outputs[0], outputs[2], atol=2e-4)

  def test_same_key_same_samples_and_other_key_other_samples(self):
    x_T = self._noise(6)[:16]
    first = run("ddpm", "50", gaussian_denoiser("eps"), x_T, jax.random.key(7))
    np.testing.assert_array_equal(first, run("ddpm", "50", gaussian_denoiser("eps"), x_T, jax.random.key(7)))
    self.assertGreater(float(jnp.abs(first - run("ddpm", "50", gaussian_denoiser("eps"), x_T,
                                                   jax.random.key(8))).max()), 0.01)

  def test_ddim_eta_one_is_stochastic_and_eta_zero_is_not(self):
    x_T = self._noise(9)[:8]
    a = run("ddim", "20", gaussian_denoiser("eps"), x_T, jax.random.key(1))
    np.testing.assert_array_equal(a, run("ddim", "20", gaussian_denoiser("eps"), x_T, jax.random.key(2)))
    b = run("ddim", "20", gaussian_denoiser("eps"), x_T, jax.random.key(1), eta=1.0)
    self.assertGreater(float(jnp.abs(a - b).max()), 0.01)

  def test_clipping_keeps_x0_in_range(self):
    far = gaussian_denoiser("x0")
    shifted = lambda x, t: far(x, t) + 5.0  # predicts x0 far outside [-1, 1]
    sample = samplers.get_sampler("ddim", LINEAR, "10", target="x0", clip_x0=True)
    x = sample(shifted, self._noise(10)[:4], jax.random.key(0))
    self.assertLessEqual(float(jnp.abs(x).max()), 1.0 + 1e-5)

  def test_unknown_sampler_lists_the_choices(self):
    with self.assertRaisesRegex(ValueError, "ddim.*ddpm"):
      samplers.get_sampler("euler", LINEAR, "10")


if __name__ == "__main__":
  absltest.main()
