"""Timestep samplers for training: uniform, and loss-second-moment importance sampling.

Both return (t, weights) where the per-example loss is to be multiplied by
weights, which keeps the objective's expectation that of uniform sampling.

The importance sampler's state is a pytree of two plain arrays, kept in the
TrainState, updated inside the jitted step and checkpointed with it:
- history (T, HISTORY) float32: the last HISTORY losses seen at each t,
  oldest first;
- counts (T,) int32: how many of them are filled (saturates at HISTORY).
Feed `update` the per-example UNWEIGHTED losses of the whole global batch (the
reference updates with losses["loss"] before the 1/(T p) weighting).
"""

import dataclasses
from typing import Tuple, Union

import flax.struct
import jax
import jax.numpy as jnp

HISTORY = 10  # losses kept per timestep
UNIFORM_PROB = 0.001  # share of uniform sampling mixed into the learned weights
NAMES = ("uniform", "loss_second_moment")


def uniform(key, batch: int, num_timesteps: int) -> Tuple[jax.Array, jax.Array]:
  """t ~ U{0..T-1} and unit weights."""
  t = jax.random.randint(key, (batch,), 0, num_timesteps, dtype=jnp.int32)
  return t, jnp.ones((batch,), jnp.float32)


@flax.struct.dataclass
class LossSecondMomentState:
  history: jax.Array  # (T, HISTORY) float32
  counts: jax.Array  # (T,) int32


@dataclasses.dataclass(frozen=True)
class LossSecondMoment:
  """Samples t with probability ~ sqrt(E[loss_t^2]) once every t has HISTORY losses.

  Until then it is exactly uniform. Afterwards p = (1 - u) w / sum(w) + u / T
  with w_t = sqrt(mean of the last HISTORY squared losses at t), u = 0.001.
  """
  num_timesteps: int
  history: int = HISTORY
  uniform_prob: float = UNIFORM_PROB

  def init(self) -> LossSecondMomentState:
    return LossSecondMomentState(
        history=jnp.zeros((self.num_timesteps, self.history), jnp.float32),
        counts=jnp.zeros((self.num_timesteps,), jnp.int32))

  def probs(self, state: LossSecondMomentState) -> jax.Array:
    """The sampling distribution p over timesteps, (T,) float32."""
    t_count = self.num_timesteps
    warm = jnp.all(state.counts == self.history)
    w = jnp.sqrt(jnp.mean(jnp.square(state.history), axis=-1))
    total = jnp.sum(w)
    # A warmed-up all-zero history would divide by zero: fall back to uniform.
    w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 1.0 / t_count)
    w = w * (1 - self.uniform_prob) + self.uniform_prob / t_count
    return jnp.where(warm, w, jnp.full((t_count,), 1.0 / t_count, jnp.float32))

  def sample(self, state: LossSecondMomentState, key, batch: int):
    """(t, weights) with weights = 1 / (T p_t)."""
    p = self.probs(state)
    t = jax.random.choice(key, self.num_timesteps, (batch,), replace=True, p=p)
    t = t.astype(jnp.int32)
    return t, 1.0 / (self.num_timesteps * p[t])

  def update(self, state: LossSecondMomentState, t, losses) -> LossSecondMomentState:
    """Records losses[i] at t[i] for i = 0, 1, ... in batch order.

    Order matters when a t repeats within the batch: later entries are newer
    (pushed after earlier ones), exactly as the reference's Python loop over
    zip(ts, losses). A full row drops its oldest loss.
    """
    t = jnp.asarray(t, jnp.int32).reshape(-1)
    losses = jnp.asarray(losses, jnp.float32).reshape(-1)
    if t.shape != losses.shape:
      raise ValueError(f"update needs one loss per timestep, got {t.shape} and {losses.shape}")
    h = self.history

    def push(carry, item):
      history, counts = carry
      ti, li = item
      row, c = history[ti], counts[ti]
      full = c >= h
      shifted = jnp.concatenate([row[1:], li[None]])
      filled = row.at[jnp.minimum(c, h - 1)].set(li)
      history = history.at[ti].set(jnp.where(full, shifted, filled))
      counts = counts.at[ti].set(jnp.minimum(c + 1, h))
      return (history, counts), None

    (history, counts), _ = jax.lax.scan(push, (state.history, state.counts), (t, losses))
    return LossSecondMomentState(history=history, counts=counts)


@dataclasses.dataclass(frozen=True)
class Uniform:
  """The uniform sampler behind the same init/sample/update interface."""
  num_timesteps: int

  def init(self) -> LossSecondMomentState:
    # Empty arrays, so a TrainState has the same structure for both samplers' code paths.
    return LossSecondMomentState(history=jnp.zeros((0, HISTORY), jnp.float32),
                                 counts=jnp.zeros((0,), jnp.int32))

  def sample(self, state, key, batch: int):
    del state
    return uniform(key, batch, self.num_timesteps)

  def update(self, state, t, losses):
    del t, losses
    return state


def create(name: str, num_timesteps: int) -> Union[Uniform, LossSecondMoment]:
  """The sampler named in config.diffusion.timestep_sampler."""
  key = name.replace("-", "_")
  if key == "uniform":
    return Uniform(num_timesteps)
  if key == "loss_second_moment":
    return LossSecondMoment(num_timesteps)
  raise ValueError(f"unknown timestep_sampler {name!r} (expected one of {NAMES})")
