"""The Flax IDDPM UNet (improved-diffusion's UNetModel); no TensorFlow here."""

from mem_diffusion.models.unet import UNet, unet_from_config

__all__ = ["UNet", "unet_from_config"]
