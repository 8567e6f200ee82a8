"""generation: "sampler:steps" entries, sampler options, class labels, and the one stream of sample batches."""

import test_env  # noqa: F401  first: the test environment (tests/test_env.py), before JAX starts

import gc
from unittest import mock
import weakref

from absl.testing import absltest
import jax
import numpy as np

from debias_jax import builders
from debias_jax import generation
from debias_jax import parallel
from tests import test_util


class ConfigReadingTest(absltest.TestCase):

  def test_sampler_steps_entries(self):
    self.assertEqual(generation.parse_sampler_steps(" dpm_solver++ : 20 ", "eval.sampler_steps"),
                     ("dpm_solver++", "20"))
    self.assertEqual(generation.parse_sampler_steps("ddpm:10,15,20", "x"), ("ddpm", "10,15,20"))
    for entry in ("ddim50", "ddim:", ":50", ""):
      with self.assertRaisesRegex(ValueError, f"config.compare.sweep has {entry!r}; write 'sampler:steps'"):
        generation.parse_sampler_steps(entry, "compare.sweep")

  def test_sampler_options_are_what_the_sampler_gets(self):
    config = test_util.config({"sampling.eta": 0.5, "sampling.clip_x0": False,
                               "sampling.solver_options": {"order": 3}})
    self.assertEqual(generation.sampler_options(config, "ddim"), {"eta": 0.5, "clip_x0": False})
    self.assertEqual(generation.sampler_options(config, "ddpm"), {"clip_x0": False})
    self.assertEqual(generation.sampler_options(config, "unipc"), {"order": 3, "clip_x0": False})
    with mock.patch.object(generation.samplers, "get_sampler") as get_sampler:
      generation.make_sampler(config, builders.schedule(config), "unipc", "7")
    self.assertEqual(get_sampler.call_args.args[0::2], ("unipc", "7"))
    self.assertEqual(get_sampler.call_args.kwargs, {"target": "eps", "var_type": "learned_range",   # tiny's model
                                                    "order": 3, "clip_x0": False})
    config.sampling.solver_options = {"clip_x0": True}
    with self.assertRaisesRegex(ValueError, "set config.sampling.clip_x0 instead"):
      generation.sampler_options(config, "dpm_solver++")

  def test_labels(self):
    unconditional = test_util.config()
    self.assertIsNone(generation.sample_labels(unconditional, 5))
    with self.assertRaisesRegex(ValueError, r"sampling.labels=\(1,\) is set, but the model is unconditional"):
      generation.sample_labels(unconditional, 5, (1,))
    conditional = test_util.config({"data.num_classes": 3})
    np.testing.assert_array_equal(generation.sample_labels(conditional, 7), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(generation.sample_labels(conditional, 5, (2, 0)), [2, 0, 2, 0, 2])
    with self.assertRaisesRegex(ValueError, r"sampling.labels has \[3\], outside \[0, 3\)"):
      generation.sample_labels(conditional, 5, (3, 1))


class StreamTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = test_util.config(test_util.SAMPLING, {"data.num_classes": 3, "sampling.steps": "2"})
    cls.generator = generation.Generator(cls.config, builders.create_model(cls.config), parallel.create_mesh())
    cls.params = test_util.random_params(cls.config)

  def test_the_first_n_samples_of_a_longer_run_are_a_run_of_n(self):
    rng = generation.sample_rng(self.config)
    long = list(self.generator.batches(self.params, 7, rng, batch_size=3))
    self.assertEqual([len(images) for images, _ in long], [3, 3, 1])
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in long]), [0, 1, 2, 0, 1, 2, 0])
    images = np.concatenate([images for images, _ in long])
    np.testing.assert_array_equal(self.generator.generate(self.params, 6, rng, batch_size=3), images[:6])
    # A shorter last batch is another program (batch 1, not 3): the same noise, equal up to float rounding.
    np.testing.assert_allclose(self.generator.generate(self.params, 4, rng, batch_size=3), images[:4], atol=1e-5)
    other = self.generator.generate(self.params, 4, jax.random.fold_in(rng, 1), batch_size=3)
    self.assertGreater(np.abs(other - images[:4]).mean(), 0.01)
    # Labels reach the model: the same noise with other labels gives other images (example 0 has label 0 in both).
    given = self.generator.generate(self.params, 3, rng, batch_size=3, labels=np.array([0, 2, 2]))
    np.testing.assert_array_equal(given[0], images[0])
    self.assertGreater(np.abs(given[1] - images[1]).mean(), 0.001)

  def test_each_program_is_built_once_per_generator_and_goes_with_it(self):
    generator = generation.Generator(self.config, self.generator.model, self.generator.mesh)
    with mock.patch.object(generation, "make_sampler", wraps=generation.make_sampler) as make_sampler:
      first = generator.program("ddim", 2)
      self.assertIs(generator.program("ddim", "2"), first)
      self.assertIs(generator.program(), first)          # config.sampling's: ddim, "2"
      self.assertIsNot(generator.program("ddim", "3"), first)
    self.assertEqual([c.args[2:] for c in make_sampler.call_args_list], [("ddim", "2"), ("ddim", "3")])
    alive = weakref.ref(generator)
    del generator, first
    gc.collect()
    self.assertIsNone(alive())     # no process-wide cache keeps a Generator (and its model) alive


if __name__ == "__main__":
  absltest.main()
