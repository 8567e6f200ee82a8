"""Exact tests of the prediction targets: eps, x0 and v convert into each other."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts


from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from debias_jax.diffusion import schedules
from debias_jax.diffusion import targets

LINEAR = schedules.Schedule.named("linear", 1000)


def _random_batch(seed, shape=(16, 4, 4, 3)):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  x0 = jax.random.uniform(k1, shape, minval=-1, maxval=1)
  eps = jax.random.normal(k2, shape)
  steps = jax.random.randint(k3, (shape[0],), 0, 1000)
  other = jax.random.normal(k4, shape)
  return x0, eps, steps, other


def _sq(x):
  return np.asarray(jnp.sum(jnp.square(x), axis=(1, 2, 3)), np.float64)
class TargetIdentityTest(parameterized.TestCase):
  """The identities between the targets, on random tensors."""

  def test_error_identities(self):
    x0, eps, steps, perturbation = _random_batch(0)
    x_t = targets.q_sample(LINEAR, x0, steps, eps)
    x0_hat = x0 + 0.1 * perturbation
    eps_hat = targets.predict_eps("x0", LINEAR, x0_hat, x_t, steps)
    v = targets.regression_target("v", LINEAR, x0, eps, steps)
    v_hat = targets.predict_v("x0", LINEAR, x0_hat, x_t, steps)
    snr = LINEAR.snr[np.asarray(steps)]
    alpha_bar = LINEAR.alphas_cumprod[np.asarray(steps)]
    x0_err, eps_err, v_err = _sq(x0 - x0_hat), _sq(eps - eps_hat), _sq(v - v_hat)
    np.testing.assert_allclose(eps_err, snr * x0_err, rtol=2e-3)
    np.testing.assert_allclose(v_err, (1 + snr) * x0_err, rtol=2e-3)
    np.testing.assert_allclose(eps_err, alpha_bar * v_err, rtol=2e-3)

  @parameterized.product(source=targets.TARGETS, schedule=("linear", "cosine"))
  def test_conversions_invert_each_other(self, source, schedule):
    sched = schedules.Schedule.named(schedule)
    x0, eps, steps, _ = _random_batch(1)
    steps = jnp.clip(steps, 50, 950)  # away from the ends, where float32 loses one of x0/eps entirely
    x_t = targets.q_sample(sched, x0, steps, eps)
    prediction = targets.regression_target(source, sched, x0, eps, steps)
    np.testing.assert_allclose(targets.predict_x0(source, sched, prediction, x_t, steps), x0, atol=2e-4)
    np.testing.assert_allclose(targets.predict_eps(source, sched, prediction, x_t, steps), eps, atol=2e-4)
    np.testing.assert_allclose(targets.predict_v(source, sched, prediction, x_t, steps),
                               targets.regression_target("v", sched, x0, eps, steps), atol=2e-4)

  def test_v_definition(self):
    x0, eps, steps, _ = _random_batch(2)
    a = LINEAR.sqrt_alphas_cumprod[np.asarray(steps)][:, None, None, None]
    s = LINEAR.sqrt_one_minus_alphas_cumprod[np.asarray(steps)][:, None, None, None]
    np.testing.assert_allclose(targets.regression_target("v", LINEAR, x0, eps, steps), a * eps - s * x0,
                               rtol=1e-5, atol=1e-6)

  def test_unknown_target(self):
    with self.assertRaisesRegex(ValueError, "eps, x0, v"):
      targets.check_target("score")


if __name__ == "__main__":
  absltest.main()
