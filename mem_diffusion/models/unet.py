"""The improved-diffusion UNetModel in Flax Linen (NHWC).

Submodules are named after the PyTorch state_dict paths with '.' -> '_'
(`input_blocks.3.1.qkv` -> `input_blocks_3_1/qkv`), so that the checkpoint
converter is a name rewrite plus a transpose. The index layout of
`input_blocks` / `output_blocks` follows the reference exactly, including
Downsample and Upsample occupying slots of their own.

Mixed precision follows the reference's fp16 mode: the timestep MLP, the
label embedding and the output head run in float32, the blocks in `dtype`,
with GroupNorm statistics and the attention softmax always in float32.
"""

import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mem_diffusion import config as config_lib
from mem_diffusion.errors import ConfigError
from mem_diffusion.models.layers import (Conv2d, Embed, GroupNorm32, Linear,
                                         avg_pool_2x2,
                                         timestep_embedding, upsample_nearest_2x)

Dtype = Any


class ResBlock(nn.Module):
  """Residual block conditioned on the (time + label) embedding.

  With scale-shift norm the embedding modulates the second GroupNorm as
  norm(h) * (1 + scale) + shift; otherwise it is added before that norm.
  The residual sum is not rescaled (unlike DDPM's 1/sqrt(2)).
  """
  out_channels: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    h = GroupNorm32(dtype=self.dtype, name="in_layers_0")(x)
    h = nn.silu(h)
    h = Conv2d(self.out_channels, dtype=self.dtype, name="in_layers_2")(h)

    emb_features = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
    # float32 like the reference, whose fp16 mode converts only convolutions.
    e = Linear(emb_features, name="emb_layers_1")(nn.silu(emb))
    e = e[:, None, None, :].astype(self.dtype)

    out_norm = GroupNorm32(dtype=self.dtype, name="out_layers_0")
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = out_norm(h) * (1 + scale) + shift
    else:
      h = out_norm(h + e)
    h = nn.silu(h)
    h = nn.Dropout(self.dropout, deterministic=not train, name="out_layers_2")(h)
    h = Conv2d(self.out_channels, zero_init=True, dtype=self.dtype,
               name="out_layers_3")(h)

    if x.shape[-1] != self.out_channels:
      x = Conv2d(self.out_channels, kernel_size=1, padding=0, dtype=self.dtype,
                 name="skip_connection")(x)
    return x.astype(self.dtype) + h


class AttentionBlock(nn.Module):
  """Full self-attention over all spatial positions, with a residual.

  The qkv projection's channels are laid out head by head, each head holding
  [q | k | v]; q and k are both scaled by d^(-1/4), which keeps the logits in
  range for low-precision compute. Softmax runs in float32.
  """
  num_heads: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, hgt, wid, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"AttentionBlock: {c} channels not divisible by num_heads={self.num_heads}")
    d = c // self.num_heads
    qkv = Conv2d(3 * c, kernel_size=1, padding=0, dtype=self.dtype, name="qkv")(
        GroupNorm32(dtype=self.dtype, name="norm")(x))
    qkv = qkv.reshape(n, hgt * wid, self.num_heads, 3, d)
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]  # (n, T, heads, d)
    scale = 1.0 / math.sqrt(math.sqrt(d))
    logits = jnp.einsum("nthd,nshd->nhts", q * scale, k * scale)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    a = jnp.einsum("nhts,nshd->nthd", weights, v).reshape(n, hgt, wid, c)
    h = Conv2d(c, kernel_size=1, padding=0, zero_init=True, dtype=self.dtype,
               name="proj_out")(a)
    return x.astype(self.dtype) + h


class Downsample(nn.Module):
  """Halves the resolution: 3x3 stride-2 conv padded 1 on every side, or a
  2x2 average pool when conv_resample is off."""
  use_conv: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.use_conv:
      return Conv2d(x.shape[-1], stride=2, padding=1, dtype=self.dtype, name="op")(x)
    return avg_pool_2x2(x)


class Upsample(nn.Module):
  """Doubles the resolution: nearest neighbour, then a 3x3 conv if use_conv."""
  use_conv: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = upsample_nearest_2x(x)
    if self.use_conv:
      x = Conv2d(x.shape[-1], dtype=self.dtype, name="conv")(x)
    return x


class UNet(nn.Module):
  """improved-diffusion's UNetModel (docs/architecture.md, docs/reference.md#unet-layout).

  `attention_resolutions` holds downsample rates (2 = 16x16 for a 32x32
  input), as the reference module; `unet_from_config` converts pixels.
  A rate the model never reaches is ignored, as in the reference.
  """
  in_channels: int = 3
  model_channels: int = 128
  out_channels: int = 3
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  channel_mult: Sequence[int] = (1, 2, 4, 8)
  conv_resample: bool = True
  num_classes: Optional[int] = None
  num_heads: int = 1
  use_scale_shift_norm: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: Optional[jax.Array] = None,
               *, train: bool = False) -> jax.Array:
    conditional = bool(self.num_classes)
    if conditional and y is None:
      raise ValueError("UNet: the model is class-conditional (num_classes="
                       f"{self.num_classes}) but no labels y were given")
    if not conditional and y is not None:
      raise ValueError("UNet: labels y given to an unconditional model (num_classes is 0/None)")
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"UNet: expected NHWC input with {self.in_channels} channels, got shape {x.shape}")
    factor = 2 ** (len(self.channel_mult) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"UNet: image size {x.shape[1:3]} not divisible by {factor} = "
                       f"2**(len(channel_mult)-1) with channel_mult={tuple(self.channel_mult)}")

    ch = self.model_channels
    emb = timestep_embedding(t, ch)
    emb = Linear(4 * ch, name="time_embed_0")(emb)
    emb = Linear(4 * ch, name="time_embed_2")(nn.silu(emb))
    if conditional:
      emb = emb + Embed(self.num_classes, 4 * ch, name="label_emb")(y)

    def res_block(out_ch, name):
      return ResBlock(out_ch, dropout=self.dropout,
                      use_scale_shift_norm=self.use_scale_shift_norm,
                      dtype=self.dtype, name=name)

    def attention(name):
      return AttentionBlock(self.num_heads, dtype=self.dtype, name=name)

    h = Conv2d(ch, dtype=self.dtype, name="input_blocks_0_0")(x)
    skips = [h]
    index, ds = 1, 1
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        h = res_block(mult * ch, f"input_blocks_{index}_0")(h, emb, train)
        if ds in self.attention_resolutions:
          h = attention(f"input_blocks_{index}_1")(h)
        skips.append(h)
        index += 1
      if level != len(self.channel_mult) - 1:
        h = Downsample(self.conv_resample, dtype=self.dtype,
                       name=f"input_blocks_{index}_0")(h)
        skips.append(h)
        index += 1
        ds *= 2

    h = res_block(h.shape[-1], "middle_block_0")(h, emb, train)
    h = attention("middle_block_1")(h)
    h = res_block(h.shape[-1], "middle_block_2")(h, emb, train)

    index = 0
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
        h = res_block(mult * ch, f"output_blocks_{index}_0")(h, emb, train)
        sub = 1
        if ds in self.attention_resolutions:
          h = attention(f"output_blocks_{index}_{sub}")(h)
          sub += 1
        if level and i == self.num_res_blocks:
          h = Upsample(self.conv_resample, dtype=self.dtype,
                       name=f"output_blocks_{index}_{sub}")(h)
          ds //= 2
        index += 1

    h = h.astype(jnp.float32)
    h = nn.silu(GroupNorm32(name="out_0")(h))
    return Conv2d(self.out_channels, zero_init=True, name="out_2")(h)


# float16 is left out: the reference needs loss scaling for it, which training
# does not do; bfloat16 keeps float32's exponent range.
COMPUTE_DTYPES = ("float32", "bfloat16")
_DTYPES = {name: getattr(jnp, name) for name in COMPUTE_DTYPES}


def attention_rates(model_cfg: Mapping[str, Any], image_size: int) -> tuple[int, ...]:
  """Pixel attention resolutions as downsample rates (image_size // res).

  A resolution the UNet never reaches is a ConfigError: the reference would
  silently skip it.
  """
  reached = {image_size // 2**level: 2**level
             for level in range(len(tuple(model_cfg["channel_mult"])))}
  for res in model_cfg["attention_resolutions"]:
    if res not in reached:
      raise ConfigError(f"model.attention_resolutions contains {res!r}, a resolution the "
                        f"model never reaches (image_size {image_size}, levels "
                        f"{sorted(reached, reverse=True)})")
  return tuple(sorted({reached[res] for res in model_cfg["attention_resolutions"]}))


def unet_from_config(model_cfg: Mapping[str, Any], image_size: int) -> UNet:
  """Builds the UNet from the config's `model` section.

  Pixel attention resolutions become downsample rates (image_size // res);
  learned sigma gives 6 output channels; num_classes 0 is unconditional.
  Settings the reference would silently ignore or crash on raise ConfigError
  (a ValueError) from mem_diffusion.config.
  """
  image_size = int(image_size)
  config_lib.validate_model_config(model_cfg, image_size)
  num_classes = int(model_cfg["num_classes"])
  return UNet(
      in_channels=3,
      model_channels=int(model_cfg["model_channels"]),
      out_channels=6 if model_cfg["learn_sigma"] else 3,
      num_res_blocks=int(model_cfg["num_res_blocks"]),
      attention_resolutions=attention_rates(model_cfg, image_size),
      dropout=float(model_cfg["dropout"]),
      channel_mult=tuple(int(m) for m in model_cfg["channel_mult"]),
      conv_resample=bool(model_cfg["conv_resample"]),
      num_classes=num_classes or None,
      num_heads=int(model_cfg["num_heads"]),
      use_scale_shift_norm=bool(model_cfg["use_scale_shift_norm"]),
      dtype=_DTYPES[model_cfg["compute_dtype"]],
  )
