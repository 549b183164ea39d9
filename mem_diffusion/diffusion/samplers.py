"""Ancestral (p_sample) and DDIM sampling, each chain one compiled lax.scan.

The network is traced once for the whole chain (the scan body), so a
4000-step chain compiles as fast as a 1-step one. Keys: the starting noise
comes from fold_in(key, 0) and the noise of the step at chain index i from
fold_in(fold_in(key, 1), i), so the same key gives the same images whatever
the device count, and a DDIM chain with eta = 0 uses no step noise at all.

Class conditioning, EMA params and dropout rngs all live in the model_fn
closure: model_fn(x, t_model) -> network output.
"""

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from mem_diffusion.diffusion.gaussian import GaussianDiffusion, ModelFn

_NOISE_TAG, _STEP_TAG = 0, 1


def p_sample_step(diffusion: GaussianDiffusion, model_fn: ModelFn, x, t, key,
                  clip_denoised: bool = True):
  """One ancestral step x_t -> x_{t-1}; t is a (N,) int array. No noise at t = 0."""
  out = diffusion.p_mean_variance(model_fn, x, t, clip_denoised)
  noise = jax.random.normal(key, x.shape, x.dtype)
  nonzero = (t != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
  return out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise


def ddim_step(diffusion: GaussianDiffusion, model_fn: ModelFn, x, t, key=None,
              eta: float = 0.0, clip_denoised: bool = True):
  """One DDIM step x_t -> x_{t-1} (Song et al. eq. 12); key unused when eta == 0.

  epsilon is re-derived from the (clipped) predicted x0, so clipping also
  moves the direction term, as in the reference.
  """
  out = diffusion.p_mean_variance(model_fn, x, t, clip_denoised)
  x0 = out["pred_xstart"]
  eps = diffusion.predict_eps_from_xstart(x, t, x0)
  abar = diffusion._at(diffusion.alphas_cumprod, t, x.ndim)
  abar_prev = diffusion._at(diffusion.alphas_cumprod_prev, t, x.ndim)
  sigma = (eta * jnp.sqrt((1 - abar_prev) / (1 - abar))
           * jnp.sqrt(1 - abar / abar_prev))
  mean = x0 * jnp.sqrt(abar_prev) + jnp.sqrt(1 - abar_prev - sigma ** 2) * eps
  if isinstance(eta, (int, float)) and eta == 0.0:
    return mean
  if key is None:
    raise ValueError("ddim_step with eta != 0 needs a key")
  noise = jax.random.normal(key, x.shape, x.dtype)
  nonzero = (t != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
  return mean + nonzero * sigma * noise


def _chain(diffusion, model_fn, shape, key, noise, ddim, eta, clip_denoised, progress):
  x = noise if noise is not None else jax.random.normal(
      jax.random.fold_in(key, _NOISE_TAG), shape, jnp.float32)
  step_key = jax.random.fold_in(key, _STEP_TAG)
  n = diffusion.num_timesteps

  def body(x, i):
    t = jnp.full((shape[0],), i, jnp.int32)
    k = jax.random.fold_in(step_key, i)
    if ddim:
      x = ddim_step(diffusion, model_fn, x, t, k, eta=eta, clip_denoised=clip_denoised)
    else:
      x = p_sample_step(diffusion, model_fn, x, t, k, clip_denoised)
    if progress is not None:
      jax.debug.callback(progress, n - i, n)
    return x, None

  x, _ = jax.lax.scan(body, x, jnp.arange(n - 1, -1, -1, dtype=jnp.int32))
  return x


@functools.lru_cache(maxsize=32)
def _compiled_chain(diffusion, model_fn, shape, ddim, eta, clip_denoised, progress):
  # Cached on identities so eager callers reusing one model_fn compile once.
  return jax.jit(lambda key, noise: _chain(
      diffusion, model_fn, shape, key, noise, ddim, eta, clip_denoised, progress))


def sample(diffusion: GaussianDiffusion, model_fn: ModelFn, shape: Sequence[int], key, *,
           ddim: bool = False, eta: float = 0.0, clip_denoised: bool = True,
           noise: Optional[jax.Array] = None,
           progress: Optional[Callable[[int, int], None]] = None) -> jax.Array:
  """Runs the whole reverse chain and returns x_0 (NHWC float32, in [-1, 1] if clipped).

  shape: the NHWC batch shape. noise: optional x_T (default: from key).
  progress: optional host callback progress(steps_done, total) called each step.
  The chain is one jitted scan; inside an outer jit (the recommended use,
  with params as arguments of that jit) it is simply inlined. Called
  eagerly, the compiled chain is cached per (diffusion, model_fn, shape, ...).
  """
  shape = tuple(int(s) for s in shape)
  if noise is not None and tuple(noise.shape) != shape:
    raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
  fn = _compiled_chain(diffusion, model_fn, shape, bool(ddim), float(eta),
                       bool(clip_denoised), progress)
  return fn(key, noise)
