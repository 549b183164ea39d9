"""A train step run as micro-batches: jitted gradient calls and one jitted update.

`training.micro_batches = A` (the config's choice, the same on every
platform) runs a step of B images as A calls of the micro-batch gradient
(B/A images each; the running sum is added by a small donated add), then
one call that applies the averaged gradient. The calls are queued from
Python without waiting, and each runs for much longer than its dispatch.

Why not one jit: on CPU, a `lax.scan` over micro-batches makes XLA emit the
input-gradient convolutions inside the loop as plain loops instead of
library calls (the UNet step ~30x slower), and unrolling the micro-batches
inside one program made the UNet-128 step too large to compile in
reasonable time. Separate calls keep one micro-batch's activations alive,
which is what accumulation is for on accelerators too.

The step's t and noise are drawn for the whole batch in every call from the
state's key (cheap against the convolutions, and no numbers need passing
between calls), and micro-batch i takes rows i, i+A, ... of them: without
dropout, any A computes the whole batch's update up to float summation
order. Dropout masks are drawn per micro-batch (key fold_in(key, i)).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MicroBatchedStep:
  """(state, batch) -> (state, metrics), like the one-jit step; the state is
  donated to `apply`.

  grad(state, batch, i) -> (gradient of micro-batch i, its per-example
  losses); add(sum, gradient) -> sum (sum donated); apply(state, batch,
  gradient sum, losses of every micro-batch) -> (state, metrics). Each may be
  replaced by its compiled form (`compile_step`), which is called the same way.
  """
  grad: Callable[..., Any]
  add: Callable[..., Any]
  apply: Callable[..., Any]
  micro_batches: int

  def __call__(self, state, batch):
    grad_sum, losses = None, []
    for i in range(self.micro_batches):
      g, micro_losses = self.grad(state, batch, np.int32(i))
      grad_sum = g if grad_sum is None else self.add(grad_sum, g)
      losses.append(micro_losses)
    return self.apply(state, batch, grad_sum, tuple(losses))


def build(grad_fn, inputs, micro_inputs, finish, merge, micro_batches: int,
          replicated, batch_sharded) -> MicroBatchedStep:
  """The MicroBatchedStep of train.make_train_step's pieces.

  inputs(state, batch) -> (drawn, sampler_state) draws the whole batch's
  random numbers; micro_inputs(drawn, i) cuts micro-batch i out of them;
  grad_fn is jax.value_and_grad of the loss; finish applies the update;
  merge undoes the micro-batch split of per-example values.
  """

  def grad(state, batch, i):
    drawn, _ = inputs(state, batch)
    (_, losses), g = grad_fn(state.params, *micro_inputs(drawn, i))
    return g, losses

  def apply(state, batch, grad_sum, micro_losses):
    drawn, sampler_state = inputs(state, batch)
    t, weights = drawn[2], drawn[3]
    grads = jax.tree.map(lambda g: g / micro_batches, grad_sum)
    losses = jax.tree.map(lambda *ls: merge(jnp.stack(ls)), *micro_losses)
    return finish(state, grads, losses, t, weights, sampler_state)

  return MicroBatchedStep(
      grad=jax.jit(grad, out_shardings=(replicated, batch_sharded)),
      add=jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), out_shardings=replicated,
                  donate_argnums=0),
      apply=jax.jit(apply, out_shardings=(replicated, replicated), donate_argnums=0),
      micro_batches=micro_batches)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0]
  return float((cost or {}).get("flops", float("nan")))


def compile_step(step, state, batch) -> tuple[Callable[..., Any], float]:
  """(the step with its programs compiled ahead of time, XLA's FLOP count of
  one whole step), for the benchmarks: the gradient counts once per
  micro-batch. `step` is a jitted step or a MicroBatchedStep."""
  if not isinstance(step, MicroBatchedStep):
    compiled = step.lower(state, batch).compile()
    return compiled, _flops(compiled)
  i = np.int32(0)
  grad_shape, loss_shape = jax.eval_shape(step.grad, state, batch, i)
  grad = step.grad.lower(state, batch, i).compile()
  add = step.add.lower(grad_shape, grad_shape).compile()
  apply = step.apply.lower(state, batch, grad_shape,
                           (loss_shape,) * step.micro_batches).compile()
  a = step.micro_batches
  flops = a * _flops(grad) + (a - 1) * _flops(add) + _flops(apply)
  return dataclasses.replace(step, grad=grad, add=add, apply=apply), flops
