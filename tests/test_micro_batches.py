"""Micro-batches: the CPU's host-dispatched step against the one-jit scan and
against the whole batch, and the rule that picks their number on CPU."""

import jax
import numpy as np
import pytest

from mem_diffusion import cpu_flags
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


def test_host_step_is_the_scan_step(mesh):
  """Same micro-batches, same dropout keys: the host-dispatched step and the
  one-jit scan compute the same update (dropout on)."""
  config = th.micro_config(training__micro_batches=2)
  host_step, *host = _one_step(config, mesh, host_accum=True)
  scan_step, *scan = _one_step(config, mesh, host_accum=False)
  assert isinstance(host_step, micro_batches.HostAccumulatedStep)
  assert not isinstance(scan_step, micro_batches.HostAccumulatedStep)
  _assert_same_step(host, scan, rtol=1e-5)
  initial = parallel.fetch(state_lib.initial_state(config, mesh).params)
  assert metrics.tree_sha256(host[0].params) != metrics.tree_sha256(initial)


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


def test_compiled_host_step_runs_and_counts_every_micro_batch(mesh):
  config = th.micro_config(training__micro_batches=2)
  parts = state_lib.parts(config)
  step = train.make_train_step(*parts[:4], config, mesh, host_accum=True)
  state, batch = state_lib.initial_state(config, mesh), _batch(config, mesh)
  compiled = step.lower(state, batch).compile()
  flops = compiled.cost_analysis()["flops"]
  grad_sum = jax.eval_shape(step.parts[0], state.params)
  micro = step.parts[1].lower(state, batch, np.int32(0), grad_sum).compile()
  assert flops > 2 * micro.cost_analysis()["flops"] > 0
  direct = parallel.fetch(step(state_lib.initial_state(config, mesh), batch))
  via_aot = parallel.fetch(compiled(state, batch))
  assert metrics.tree_sha256(direct[0].params) == metrics.tree_sha256(via_aot[0].params)


@pytest.mark.parametrize("batch,size,channels,accum,expected", [
    (32, 32, 128, 1, 4),    # UNet-128 at batch 32: micro-batches of 8
    (8, 32, 128, 1, 1),     # batch 8 is already at the limit
    (128, 32, 128, 1, 16),  # the CIFAR-10 recipe's batch
    (128, 32, 128, 2, 16),  # the user's accumulation is a floor, kept as a factor
    (32, 32, 128, 8, 8),    # already finer than the rule asks
    (12, 32, 128, 1, 2),    # 6 rows: the largest divisor within the limit
    (16, 8, 32, 1, 1),      # toy configs are untouched
    (16, 16, 32, 1, 1),     # so is the quickstart
    (6, 64, 256, 1, 6),     # nothing fits: one image per micro-batch
])
def test_cpu_micro_batch_rule(batch, size, channels, accum, expected):
  got = micro_batches.cpu_micro_batches(batch, size, channels, accum)
  assert got == expected
  assert batch % got == 0 and got % accum == 0


def _config_for(batch, channels, size=32, accum=1):
  config = th.micro_config()
  config.training.batch_size, config.training.micro_batches = batch, accum
  config.model.model_channels, config.data.image_size = channels, size
  return config


def test_execution_accum_steps_on_cpu(mesh):
  config = _config_for(32, 128)
  assert micro_batches.execution_accum_steps(config, mesh, environ={}) == 4
  # The project's CPU defaults switch off together.
  off = {cpu_flags.OPT_OUT: "0"}
  assert micro_batches.execution_accum_steps(config, mesh, environ=off) == 1
  # 2 rows per micro-batch would not split over the 4 test devices: the config's own.
  assert mesh.devices.size == 4
  assert micro_batches.execution_accum_steps(_config_for(8, 512), mesh, environ={}) == 1
  # Nothing to do for a toy config.
  assert micro_batches.execution_accum_steps(th.micro_config(), mesh, environ={}) == 1
