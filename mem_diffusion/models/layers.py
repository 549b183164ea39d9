"""Primitive layers of the IDDPM UNet, with PyTorch's initialisation.

The layers declare their parameters themselves (instead of wrapping
`nn.Conv`/`nn.Dense`) for three reasons that matter for a faithful port:
  * the bias of a PyTorch Conv/Linear is drawn from U(-1/sqrt(fan_in),
    +1/sqrt(fan_in)), which needs the fan-in at bias-init time;
  * the parameter tree stays one level deep per PyTorch module, so
    `convert.py` maps names one to one (`in_layers_2/kernel` <->
    `in_layers.2.weight`);
  * padding is explicit: a stride-2 'SAME' conv in XLA pads (0, 1), PyTorch's
    `padding=1` pads (1, 1).
Parameters are always float32; `dtype` is the compute dtype.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
NUM_GROUPS = 32
GROUPNORM_EPS = 1e-5


def torch_uniform(fan_in: int) -> nn.initializers.Initializer:
  """U(-1/sqrt(fan_in), +1/sqrt(fan_in)): PyTorch's default for both weights
  (kaiming_uniform with a=sqrt(5)) and biases of Conv and Linear layers."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv2d(nn.Module):
  """A square-kernel 2-D convolution, NHWC, HWIO kernel.

  `padding` is the number of pixels added on every side (PyTorch semantics).
  `zero_init` reproduces the reference's `zero_module` (weights and bias 0).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int = 1
  zero_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    k = self.kernel_size
    fan_in = in_features * k * k
    init = nn.initializers.zeros if self.zero_init else torch_uniform(fan_in)
    kernel = self.param("kernel", init, (k, k, in_features, self.features),
                        jnp.float32)
    bias = self.param("bias", init, (self.features,), jnp.float32)
    pad = ((self.padding, self.padding), (self.padding, self.padding))
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=(self.stride, self.stride), padding=pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


class Linear(nn.Module):
  """A dense layer with PyTorch's default (or zero) initialisation."""
  features: int
  zero_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    init = nn.initializers.zeros if self.zero_init else torch_uniform(in_features)
    kernel = self.param("kernel", init, (in_features, self.features), jnp.float32)
    bias = self.param("bias", init, (self.features,), jnp.float32)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class Embed(nn.Module):
  """A label embedding table, N(0, 1) as PyTorch's nn.Embedding."""
  num_embeddings: int
  features: int

  @nn.compact
  def __call__(self, y: jax.Array) -> jax.Array:
    table = self.param("embedding", nn.initializers.normal(1.0),
                       (self.num_embeddings, self.features), jnp.float32)
    return jnp.take(table, y, axis=0)


class GroupNorm32(nn.Module):
  """GroupNorm(32 groups, eps 1e-5) computed in float32, output in `dtype`.

  Mirrors the reference's GroupNorm32, which upcasts to float32, applies the
  affine transform there and casts back: with bfloat16 compute the statistics
  stay exact. The variance is the two-pass mean((x - mean)^2), as PyTorch.

  The arithmetic is laid out for XLA:CPU: statistics are first summed per
  channel over H and W (a reduction whose innermost axis is the channel, so
  it vectorizes), then per group on the tiny (N, C) array; the group mean
  and the folded scale `rstd * gamma` are broadcast back per channel, and
  the normalized output is one fused multiply-add, `(x - mean) * a + beta`.
  Reshaping to (..., 32 groups, C / 32) instead puts the few channels of a
  group innermost, where XLA:CPU cannot vectorize over them (docs/benchmarks.md,
  "GroupNorm layout"). Same math; rounding differs in the last bits.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if c % NUM_GROUPS:
      raise ValueError(f"GroupNorm32 needs channels divisible by {NUM_GROUPS}, got {c}")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    h = x.astype(jnp.float32)
    n, per_group = h.shape[0], c // NUM_GROUPS
    spatial_axes = tuple(range(1, h.ndim - 1))
    count = per_group * math.prod(h.shape[axis] for axis in spatial_axes)

    def group_mean(channel_sums):
      """(N, C) per-channel sums -> (N, C) mean of each channel's group."""
      sums = channel_sums.reshape(n, NUM_GROUPS, per_group).sum(axis=-1)
      return jnp.repeat(sums / count, per_group, axis=-1)

    def per_sample_channel(v):
      return v.reshape((n,) + (1,) * len(spatial_axes) + (c,))

    mean = group_mean(jnp.sum(h, axis=spatial_axes))
    centered = h - per_sample_channel(mean)
    var = group_mean(jnp.sum(jnp.square(centered), axis=spatial_axes))
    folded_scale = jax.lax.rsqrt(var + GROUPNORM_EPS) * scale
    return (centered * per_sample_channel(folded_scale) + bias).astype(self.dtype)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of float timesteps, ordered [cos | sin] as the
  reference (the opposite of the original DDPM code); float32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def avg_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2 (Downsample without conv_resample)."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
