"""The `model` section's allowed values, checked against the image size.

unet_from_config runs these before building anything, and so does
mem_diffusion.validate before a run starts: a UNet the reference would crash
on (channels GroupNorm cannot split, attention at a resolution the network
never reaches, an image that cannot be halved often enough) is refused here
with the key to change, instead of inside a jitted init.
"""

from __future__ import annotations

from typing import Any, Mapping

from mem_diffusion.config_checks import check_section, int_in, one_of, real_in, require
from mem_diffusion.models.layers import NUM_GROUPS

# float16 is left out: the reference needs loss scaling for it, which train.py
# does not do; bfloat16 keeps float32's exponent range.
COMPUTE_DTYPES = ("float32", "bfloat16")
MAX_LEVELS = 7  # 2**6 = 64x downsampling already takes a 512 image to 8 pixels

LIMITS = (
    int_in("model.model_channels", 1, 1024, "the reference uses 128 (CIFAR) to 256 "
           "(ImageNet); also a multiple of the GroupNorm groups at every level"),
    int_in("model.channel_mult", 1, 8, "channels of each level in units of model_channels",
           each=True),
    int_in("model.num_res_blocks", 1, 16, "blocks per level"),
    int_in("model.attention_resolutions", 1, 512, "pixel sizes where attention runs",
           each=True),
    int_in("model.num_heads", 1, 1024, "must divide the channels of each attention level"),
    real_in("model.dropout", 0.0, 1.0, "1 would drop every activation", open_hi=True),
    int_in("model.num_classes", 0, 1000, "0 = unconditional; the embedding table has one row "
           "per class"),
    one_of("model.compute_dtype", COMPUTE_DTYPES, "params stay float32 either way"),
)


def attention_rates(model_cfg: Mapping[str, Any], image_size: int) -> tuple[int, ...]:
  """Pixel attention resolutions as downsample rates (image_size // res)."""
  levels = len(tuple(model_cfg["channel_mult"]))
  reached = {image_size // 2**level: 2**level for level in range(levels)}
  rates = []
  for res in model_cfg["attention_resolutions"]:
    require(int(res) in reached,
            f"model.attention_resolutions contains {res}, a resolution the model never "
            f"reaches (image_size {image_size}, levels {sorted(reached, reverse=True)})")
    rates.append(reached[int(res)])
  return tuple(sorted(set(rates)))


def validate_model_config(model_cfg: Mapping[str, Any], image_size: int) -> None:
  """Raises ConfigError naming the first `model.*` key the UNet cannot take."""
  check_section(LIMITS, model_cfg)
  mult = tuple(model_cfg["channel_mult"])
  mc, heads = model_cfg["model_channels"], model_cfg["num_heads"]
  require(model_cfg["num_classes"] != 1,
          "model.num_classes=1: use 0 (unconditional) or >= 2")
  require(1 <= len(mult) <= MAX_LEVELS,
          f"model.channel_mult={mult}: expected 1..{MAX_LEVELS} levels")
  factor = 2 ** (len(mult) - 1)
  require(image_size % factor == 0,
          f"data.image_size={image_size} is not divisible by 2**(len(channel_mult)-1)"
          f"={factor} (model.channel_mult={mult})")
  for m in sorted(set(mult)):
    require((m * mc) % NUM_GROUPS == 0,
            f"model.model_channels={mc} x channel_mult {m} = {m * mc} channels is not "
            f"divisible by the {NUM_GROUPS} GroupNorm groups")
  for rate in attention_rates(model_cfg, image_size):
    channels = mc * mult[rate.bit_length() - 1]
    require(channels % heads == 0,
            f"model.num_heads={heads} does not divide {channels} channels "
            f"(model_channels={mc} x channel_mult {channels // mc}) at an attention level")
