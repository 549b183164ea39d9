"""Gaussian diffusion of IDDPM (Nichol & Dhariwal 2021) in JAX. No TensorFlow."""

from mem_diffusion.diffusion.gaussian import GaussianDiffusion
from mem_diffusion.diffusion.gaussian import diffusion_from_config
from mem_diffusion.diffusion.gaussian import make_diffusion
from mem_diffusion.diffusion.respace import space_timesteps
from mem_diffusion.diffusion.schedules import get_betas
