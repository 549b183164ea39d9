"""training.micro_batches: the jitted gradient calls and one update, against the
whole batch, and the compiled form the benchmarks count FLOPs with."""

import jax
import numpy as np
import pytest

from mem_diffusion.run import metrics
from mem_diffusion.run import micro_batches
from mem_diffusion.run import parallel
from mem_diffusion.run import state as state_lib
from mem_diffusion.run import train
import train_helpers as th


def _batch(config, mesh, seed=0):
  rng = np.random.default_rng(seed)
  b, size = config.training.batch_size, config.data.image_size
  return parallel.to_global({
      "image": rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32),
      "label": rng.integers(0, 2, (b,)).astype(np.int32)}, mesh)


def _one_step(config, mesh, **step_kwargs):
  parts = state_lib.parts(config)
  step = train.make_train_step(*parts[:4], config, mesh, **step_kwargs)
  new_state, stats = step(state_lib.initial_state(config, mesh), _batch(config, mesh))
  return step, parallel.fetch(new_state), parallel.fetch(stats)


def _assert_same_step(a, b, rtol):
  (state_a, stats_a), (state_b, stats_b) = a, b
  for x, y in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6)
  for k in ("loss_sum", "grad_norm"):
    np.testing.assert_allclose(stats_a[k], stats_b[k], rtol=rtol)
  assert int(state_a.step) == int(state_b.step) == 1


@pytest.fixture(scope="module")
def mesh():
  return parallel.data_mesh()


def test_the_config_key_alone_decides_the_split(mesh):
  """No threshold of its own: a large CPU step is one program unless the
  config asks for micro-batches, and then it is the micro-batched step."""
  config = th.micro_config(training__batch_size=32, model__model_channels=128,
                           data__image_size=32)
  parts = state_lib.parts(config)
  assert not isinstance(train.make_train_step(*parts[:4], config, mesh),
                        micro_batches.MicroBatchedStep)
  config.training.micro_batches = 4
  step = train.make_train_step(*parts[:4], config, mesh)
  assert isinstance(step, micro_batches.MicroBatchedStep) and step.micro_batches == 4


@pytest.mark.slow
def test_micro_batches_without_dropout_are_the_whole_batch(mesh):
  """t and noise are drawn before the split, so without dropout 2 or 4
  micro-batches give the whole batch's step up to float summation order; a
  changed draw (another seed) is far outside that margin."""
  config = th.micro_config(model__dropout=0.0, training__batch_size=16)
  whole = _one_step(config, mesh, accum=1)[1:]
  for accum in (2, 4):  # 8 rows, then 4, over the test's 4 CPU devices
    _assert_same_step(_one_step(config, mesh, accum=accum)[1:], whole, rtol=2e-4)
  other = th.micro_config(model__dropout=0.0, training__batch_size=16)
  other.seed = config.seed + 1
  with pytest.raises(AssertionError):
    _assert_same_step(_one_step(other, mesh, accum=2)[1:], whole, rtol=2e-4)


@pytest.mark.slow
def test_compiled_step_runs_and_counts_every_micro_batch(mesh):
  config = th.micro_config(training__micro_batches=2)
  parts = state_lib.parts(config)
  step = train.make_train_step(*parts[:4], config, mesh)
  batch = _batch(config, mesh)
  compiled, flops = micro_batches.compile_step(step, state_lib.initial_state(config, mesh),
                                               batch)
  grad_flops = step.grad.lower(state_lib.initial_state(config, mesh), batch,
                               np.int32(0)).compile().cost_analysis()["flops"]
  assert flops > 2 * grad_flops > 0
  direct = parallel.fetch(step(state_lib.initial_state(config, mesh), batch))
  via_aot = parallel.fetch(compiled(state_lib.initial_state(config, mesh), batch))
  assert metrics.tree_sha256(direct[0].params) == metrics.tree_sha256(via_aot[0].params)
  # One jitted program (micro_batches = 1) compiles and counts as itself.
  whole = train.make_train_step(*parts[:4], config, mesh, accum=1)
  _, whole_flops = micro_batches.compile_step(whole, state_lib.initial_state(config, mesh),
                                              batch)
  assert 0.5 * flops < whole_flops < 1.5 * flops


@pytest.mark.slow  # two compiles: ~50 s on 2 busy cores
def test_loss_scale_scales_the_gradient_not_the_logged_loss(mesh):
  """training.loss_scale = 2 (the balanced arm's weight per original row)
  doubles the gradient; the logged loss terms stay the batch mean."""
  config = th.micro_config(model__dropout=0.0)
  _, _, one = _one_step(config, mesh)
  config.training.loss_scale = 2.0
  _, _, two = _one_step(config, mesh)
  np.testing.assert_allclose(two["grad_norm"], 2 * one["grad_norm"], rtol=1e-5)
  np.testing.assert_allclose(two["loss_sum"], one["loss_sum"], rtol=1e-6)
