"""How many micro-batches a train step runs as, and the CPU way to run them.

Why the CPU splits big steps by itself. Measured on a 2-core AMD EPYC
(docs/benchmarks.md, "CPU micro-batches"): XLA:CPU's UNet-128 train step
costs more per image as the batch grows (batch 32: 2.42 images/s; the same 32
images as 4 micro-batches of 8: 2.79; of 16: 2.70; of 4: 2.64), while the
PyTorch reference runs batch 8 and 32 at the same speed. So on CPU a step
whose micro-batch would hold more than CPU_MICRO_BATCH_ELEMENTS first-level
activation values (rows x image_size^2 x model_channels; 8 x 32^2 x 128 for
UNet-128) is run as more micro-batches, each no larger than that. Toy and
quickstart configs stay far below it and are unchanged.

What that changes: gradients are averaged over micro-batches exactly as
training.micro_batches would, and the step's t and noise are drawn for the
whole batch before the split, so a CPU run differs from an accelerator run of
the same config only in float summation order and, where model.dropout > 0,
in which (equally distributed) dropout masks are drawn: they are drawn per
micro-batch. MEM_DIFFUSION_XLA_CPU_DEFAULTS=0 turns this off together with
the project's other CPU defaults (mem_diffusion/cpu_flags.py).

Why separate jitted calls on CPU, not one jit: XLA:CPU emits the
input-gradient convolutions inside a while loop (lax.scan) as plain loops
instead of library calls (the UNet step ~30x slower), and unrolling the
micro-batches inside one jit makes the UNet-128 program too large to compile
in reasonable time. Dispatching the calls from Python costs nothing that
matters: they are queued without waiting, and each runs for seconds.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mem_diffusion import cpu_flags

CPU_MICRO_BATCH_ELEMENTS = 8 * 32 * 32 * 128


def cpu_micro_batches(batch_size: int, image_size: int, model_channels: int,
                      accum: int) -> int:
  """The fewest micro-batches, a multiple of `accum` dividing `batch_size`,
  whose micro-batch holds at most CPU_MICRO_BATCH_ELEMENTS first-level
  activation values (or one image per micro-batch, if none does)."""
  per_image = image_size * image_size * model_channels
  a = accum
  while a < batch_size and (batch_size % a or
                            batch_size // a * per_image > CPU_MICRO_BATCH_ELEMENTS):
    a += accum
  return a if batch_size % a == 0 else accum


def execution_accum_steps(config: ml_collections.ConfigDict,
                          mesh: jax.sharding.Mesh, environ=os.environ) -> int:
  """The number of micro-batches a step of `config` runs as on `mesh`.

  training.micro_batches on accelerators; on CPU possibly more (module
  docstring), chosen from the config alone so that 1 and 8 CPU devices draw
  the same dropout masks. Where the chosen micro-batch would not split over
  the devices, the config's own value is used.
  """
  tcfg = config.training
  accum = tcfg.micro_batches
  if (mesh.devices.flat[0].platform != "cpu" or
      environ.get(cpu_flags.OPT_OUT, "1") == "0"):
    return accum
  auto = cpu_micro_batches(tcfg.batch_size, config.data.image_size,
                           config.model.model_channels, accum)
  if auto != accum and tcfg.batch_size % (auto * mesh.devices.size) == 0:
    logging.info("CPU: each step of %d images runs as %d micro-batches of %d "
                 "(mem_diffusion/run/micro_batches.py)", tcfg.batch_size, auto,
                 tcfg.batch_size // auto)
    return auto
  return accum


def host_accumulated_step(grad_fn, inputs, micro_inputs, finish, merge,
                          accum: int, replicated, batch_sharded):
  """The HostAccumulatedStep for the pieces of train.make_train_step.

  inputs(state, batch) -> (drawn, sampler_state) draws the whole batch's
  random numbers; micro_inputs(drawn, i) cuts micro-batch i out of them;
  grad_fn is jax.value_and_grad of the loss; finish applies the update;
  merge undoes the micro-batch split of per-example values.

  Each call redraws the whole batch's t and noise from the state's key
  rather than passing them between calls: the same numbers every time, and
  a few hundred thousand normals against seconds of convolutions.
  """

  def micro_grads(state, batch, i, grad_sum):
    drawn, _ = inputs(state, batch)
    (_, losses), g = grad_fn(state.params, *micro_inputs(drawn, i))
    return jax.tree.map(jnp.add, grad_sum, g), losses

  def finish_step(state, batch, grad_sum, micro_losses):
    drawn, sampler_state = inputs(state, batch)
    t, weights = drawn[2], drawn[3]
    grads = jax.tree.map(lambda g: g / accum, grad_sum)
    losses = jax.tree.map(lambda *ls: merge(jnp.stack(ls)), *micro_losses)
    return finish(state, grads, losses, t, weights, sampler_state)

  return HostAccumulatedStep(
      zeros=jax.jit(lambda params: jax.tree.map(jnp.zeros_like, params),
                    out_shardings=replicated),
      micro=jax.jit(micro_grads, out_shardings=(replicated, batch_sharded),
                    donate_argnums=3),
      finish=jax.jit(finish_step, out_shardings=(replicated, replicated),
                     donate_argnums=0),
      accum=accum)


class HostAccumulatedStep:
  """A train step run as `accum` jitted micro-batch gradient calls and one
  jitted update, queued from Python without waiting in between.

  Called like the jitted step (the state is donated to the update), and
  lowered like one: `lower(state, batch).compile()` returns a callable whose
  `cost_analysis()` sums its parts, so the loop and the benchmarks need not
  know which kind of step they hold.
  """

  def __init__(self, zeros, micro, finish, accum: int):
    self.parts = (zeros, micro, finish)
    self.accum = accum

  def __call__(self, state, batch):
    return self.run(self.parts, state, batch)

  def run(self, parts, state, batch):
    zeros, micro, finish = parts
    grad_sum, losses = zeros(state.params), []
    for i in range(self.accum):
      grad_sum, micro_losses = micro(state, batch, np.int32(i), grad_sum)
      losses.append(micro_losses)
    return finish(state, batch, grad_sum, tuple(losses))

  def lower(self, state, batch):
    return _LoweredHostStep(self, state, batch)


class _LoweredHostStep:
  """What `HostAccumulatedStep.lower` returns: compile() builds all parts."""

  def __init__(self, step: HostAccumulatedStep, state, batch):
    self._step, self._state, self._batch = step, state, batch

  def compile(self):
    step, state, batch = self._step, self._state, self._batch
    zeros, micro, finish = step.parts
    i = np.int32(0)
    grad_sum = jax.eval_shape(zeros, state.params)
    _, loss_shapes = jax.eval_shape(micro, state, batch, i, grad_sum)
    compiled = (zeros.lower(state.params).compile(),
                micro.lower(state, batch, i, grad_sum).compile(),
                finish.lower(state, batch, grad_sum,
                             (loss_shapes,) * step.accum).compile())
    return _CompiledHostStep(step, compiled)


class _CompiledHostStep:

  def __init__(self, step: HostAccumulatedStep, parts):
    self._step, self._parts = step, parts

  def __call__(self, state, batch):
    return self._step.run(self._parts, state, batch)

  def cost_analysis(self) -> dict[str, float]:
    """XLA's FLOP count of one whole step: the micro-batch call counts A times."""
    total = 0.0
    for part, times in zip(self._parts, (1, self._step.accum, 1)):
      cost = part.cost_analysis()
      if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
        cost = cost[0]
      total += times * float((cost or {}).get("flops", 0.0))
    return {"flops": total}
