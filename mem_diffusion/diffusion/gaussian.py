"""Gaussian diffusion of IDDPM: forward process, reverse means/variances, losses.

`GaussianDiffusion` holds only float64 numpy schedule arrays and a few flags;
its methods are pure jnp and gather float32 copies of the schedule by t, which
reproduces the reference's float64-then-float32 arithmetic. A respaced
diffusion is the same class with a shorter schedule and a `timestep_map` back
to the original chain, so every method works unchanged on it.

Images are NHWC; the network output has the image's channels (epsilon or x0)
followed, with learned sigma, by as many variance channels v in [-1, 1].
"""

import dataclasses
import math
from typing import Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mem_diffusion.diffusion import likelihood
from mem_diffusion.diffusion import respace
from mem_diffusion.diffusion import schedules

MEAN_TYPES = ("epsilon", "xstart")
VAR_TYPES = ("learned_range", "fixed_large", "fixed_small")
LOSS_TYPES = ("hybrid", "mse", "kl")

# model_fn(x_t, t_model) -> output, closing over params, labels and rng.
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"unknown {name} {value!r} (expected one of {allowed})")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashable by identity (jit static arg)
class GaussianDiffusion:
  """A (possibly respaced) diffusion chain; build it with `make_diffusion`."""
  betas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  alphas_cumprod_next: np.ndarray
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  log_one_minus_alphas_cumprod: np.ndarray
  sqrt_recip_alphas_cumprod: np.ndarray
  sqrt_recipm1_alphas_cumprod: np.ndarray
  posterior_variance: np.ndarray
  posterior_log_variance_clipped: np.ndarray
  posterior_mean_coef1: np.ndarray
  posterior_mean_coef2: np.ndarray
  timestep_map: np.ndarray  # int64: index in this chain -> original timestep
  original_num_steps: int
  mean_type: str = "epsilon"
  var_type: str = "learned_range"
  loss_type: str = "hybrid"
  rescale_timesteps: bool = True

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])

  @property
  def learn_sigma(self) -> bool:
    return self.var_type == "learned_range"

  # ---- helpers ---------------------------------------------------------------
  def _at(self, arr: np.ndarray, t, ndim: int):
    """arr[t] as float32, shaped to broadcast against an ndim-D batch."""
    vals = jnp.asarray(np.asarray(arr, dtype=np.float32))[t]
    return vals.reshape(vals.shape + (1,) * (ndim - vals.ndim))

  def model_timesteps(self, t):
    """The float32 timesteps the network sees for chain indices t.

    The original-chain index (through timestep_map), times 1000/T_original
    when rescale_timesteps, so a respaced chain calls the network exactly as
    the chain it was trained on.
    """
    orig = jnp.asarray(self.timestep_map.astype(np.int32))[t].astype(jnp.float32)
    if self.rescale_timesteps:
      orig = orig * np.float32(1000.0 / self.original_num_steps)
    return orig

  def respaced(self, use_timesteps: Sequence[int]) -> "GaussianDiffusion":
    """The chain restricted to use_timesteps (indices into this chain).

    Betas are 1 - alpha_bar_i / alpha_bar_prev_kept and are not clipped again.
    """
    keep = sorted(set(int(i) for i in use_timesteps))
    if not keep or keep[0] < 0 or keep[-1] >= self.num_timesteps:
      raise ValueError(f"respacing needs timesteps in [0, {self.num_timesteps}), got {keep[:3]}...")
    last = 1.0
    new_betas = []
    for i in keep:
      new_betas.append(1.0 - self.alphas_cumprod[i] / last)
      last = self.alphas_cumprod[i]
    return make_diffusion(
        np.asarray(new_betas, dtype=np.float64), mean_type=self.mean_type,
        var_type=self.var_type, loss_type=self.loss_type,
        rescale_timesteps=self.rescale_timesteps,
        timestep_map=self.timestep_map[np.asarray(keep)],
        original_num_steps=self.original_num_steps)

  # ---- forward process -------------------------------------------------------
  def q_mean_variance(self, x0, t):
    """Mean, variance and log variance of q(x_t | x_0)."""
    mean = self._at(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
    var = self._at(1.0 - self.alphas_cumprod, t, x0.ndim)
    log_var = self._at(self.log_one_minus_alphas_cumprod, t, x0.ndim)
    return mean, jnp.broadcast_to(var, x0.shape), jnp.broadcast_to(log_var, x0.shape)

  def q_sample(self, x0, t, noise):
    """A draw of x_t ~ q(x_t | x_0) for the given standard normal noise."""
    return (self._at(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
            + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)

  def q_posterior_mean_variance(self, x0, xt, t):
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
    mean = (self._at(self.posterior_mean_coef1, t, xt.ndim) * x0
            + self._at(self.posterior_mean_coef2, t, xt.ndim) * xt)
    var = jnp.broadcast_to(self._at(self.posterior_variance, t, xt.ndim), xt.shape)
    log_var = jnp.broadcast_to(
        self._at(self.posterior_log_variance_clipped, t, xt.ndim), xt.shape)
    return mean, var, log_var

  def predict_xstart_from_eps(self, xt, t, eps):
    return (self._at(self.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt
            - self._at(self.sqrt_recipm1_alphas_cumprod, t, xt.ndim) * eps)

  def predict_eps_from_xstart(self, xt, t, x0):
    return ((self._at(self.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt - x0)
            / self._at(self.sqrt_recipm1_alphas_cumprod, t, xt.ndim))

  # ---- reverse process -------------------------------------------------------
  def _split_output(self, output, x):
    output = jnp.asarray(output, jnp.float32)
    c = x.shape[-1]
    expected = 2 * c if self.learn_sigma else c
    if output.shape != x.shape[:-1] + (expected,):
      raise ValueError(
          f"model output shape {output.shape} does not fit x {x.shape} with "
          f"var_type={self.var_type!r} (expected {expected} channels)")
    if self.learn_sigma:
      return output[..., :c], output[..., c:]
    return output, None

  def p_mean_variance_from_output(self, output, x, t, clip_denoised: bool = True):
    """p(x_{t-1} | x_t) given the raw network output at (x, t)."""
    out, var_values = self._split_output(output, x)
    if self.var_type == "learned_range":
      # v in [-1, 1] interpolates the log variance between beta_tilde (clipped
      # at t=0 to beta_tilde_1) and beta.
      min_log = self._at(self.posterior_log_variance_clipped, t, x.ndim)
      max_log = self._at(np.log(self.betas), t, x.ndim)
      frac = (var_values + 1) / 2
      log_variance = frac * max_log + (1 - frac) * min_log
      variance = jnp.exp(log_variance)
    else:
      if self.var_type == "fixed_large":
        # beta_t, except at t=0 where beta_tilde_1 gives a better decoder NLL.
        var = np.append(self.posterior_variance[1], self.betas[1:])
        log_var = np.log(var)
      else:
        var, log_var = self.posterior_variance, self.posterior_log_variance_clipped
      variance = jnp.broadcast_to(self._at(var, t, x.ndim), x.shape)
      log_variance = jnp.broadcast_to(self._at(log_var, t, x.ndim), x.shape)
    if self.mean_type == "xstart":
      pred_xstart = out
    else:
      pred_xstart = self.predict_xstart_from_eps(x, t, out)
    if clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
    return {"mean": mean, "variance": variance, "log_variance": log_variance,
            "pred_xstart": pred_xstart}

  def p_mean_variance(self, model_fn: ModelFn, x, t, clip_denoised: bool = True):
    """Calls the network at (x, t) and returns p(x_{t-1} | x_t) and pred_xstart."""
    output = model_fn(x, self.model_timesteps(t))
    return self.p_mean_variance_from_output(output, x, t, clip_denoised)

  # ---- losses ----------------------------------------------------------------
  def vb_terms_bpd(self, output, x0, xt, t):
    """The bound term at t in bits per dim: decoder NLL at t=0, else a KL.

    The predicted x0 is not clipped here (as in the reference's losses).
    """
    true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, xt, t)
    p = self.p_mean_variance_from_output(output, xt, t, clip_denoised=False)
    kl = likelihood.mean_flat(likelihood.normal_kl(
        true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
    nll = -likelihood.mean_flat(likelihood.discretized_gaussian_log_likelihood(
        x0, p["mean"], 0.5 * p["log_variance"])) / math.log(2.0)
    return jnp.where(t == 0, nll, kl)

  def training_losses(self, model_fn: ModelFn, x0, t, noise) -> Dict[str, jax.Array]:
    """Per-example losses {'loss', 'mse', 'vb'} at chain indices t.

    - 'hybrid' (the reference's RESCALED_MSE): mse + vb * T/1000, where vb is
      computed with the predicted mean frozen (stop_gradient), so it trains
      only the variance channels. T is this chain's length.
    - 'mse' (the reference's MSE): mse, plus the unscaled vb with learned sigma.
    - 'kl' (the reference's KL, not RESCALED_KL): the bound term alone,
      gradients flowing through mean and variance.
    Without learned sigma 'hybrid' and 'mse' are the plain MSE (vb = 0).
    """
    xt = self.q_sample(x0, t, noise)
    output = jnp.asarray(model_fn(xt, self.model_timesteps(t)), jnp.float32)
    zeros = jnp.zeros(x0.shape[:1], jnp.float32)
    if self.loss_type == "kl":
      vb = self.vb_terms_bpd(output, x0, xt, t)
      return {"loss": vb, "mse": zeros, "vb": vb}
    out, var_values = self._split_output(output, xt)
    if self.learn_sigma:
      frozen = jnp.concatenate([jax.lax.stop_gradient(out), var_values], axis=-1)
      vb = self.vb_terms_bpd(frozen, x0, xt, t)
      if self.loss_type == "hybrid":
        # Keeps the bound from swamping the MSE: the reference's 1/1000 factor.
        vb = vb * np.float32(self.num_timesteps / 1000.0)
    else:
      vb = zeros
    target = noise if self.mean_type == "epsilon" else x0
    mse = likelihood.mean_flat(jnp.square(target - out))
    return {"loss": mse + vb, "mse": mse, "vb": vb}

  def prior_bpd(self, x0):
    """KL(q(x_T | x_0) || N(0, I)) in bits per dim, per example."""
    t = jnp.full(x0.shape[:1], self.num_timesteps - 1, jnp.int32)
    mean, _, log_var = self.q_mean_variance(x0, t)
    return likelihood.mean_flat(likelihood.normal_kl(mean, log_var, 0.0, 0.0)) / math.log(2.0)


def make_diffusion(betas, *, mean_type: str = "epsilon", var_type: str = "learned_range",
                   loss_type: str = "hybrid", rescale_timesteps: bool = True,
                   timestep_map: Optional[np.ndarray] = None,
                   original_num_steps: Optional[int] = None) -> GaussianDiffusion:
  """Derives every schedule array from betas, in float64."""
  _check("model mean type", mean_type, MEAN_TYPES)
  _check("model variance type", var_type, VAR_TYPES)
  _check("loss", loss_type, LOSS_TYPES)
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size == 0:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
  if not ((betas > 0).all() and (betas <= 1).all()):
    raise ValueError("betas must lie in (0, 1]")
  n = betas.shape[0]
  if timestep_map is None:
    timestep_map = np.arange(n, dtype=np.int64)
  timestep_map = np.asarray(timestep_map, dtype=np.int64)
  if timestep_map.shape != (n,):
    raise ValueError(f"timestep_map has shape {timestep_map.shape}, expected ({n},)")
  alphas = 1.0 - betas
  ac = np.cumprod(alphas, axis=0)
  ac_prev = np.append(1.0, ac[:-1])
  ac_next = np.append(ac[1:], 0.0)
  post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
  # beta_tilde_0 = 0; its log is replaced by that of beta_tilde_1.
  post_log_var = np.log(np.append(post_var[1], post_var[1:])) if n > 1 else np.log(post_var)
  with np.errstate(divide="ignore"):
    log_one_minus = np.log(1.0 - ac)
  return GaussianDiffusion(
      betas=betas, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev,
      alphas_cumprod_next=ac_next, sqrt_alphas_cumprod=np.sqrt(ac),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
      log_one_minus_alphas_cumprod=log_one_minus,
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
      posterior_variance=post_var, posterior_log_variance_clipped=post_log_var,
      posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
      posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
      timestep_map=timestep_map,
      original_num_steps=int(original_num_steps or n),
      mean_type=mean_type, var_type=var_type, loss_type=loss_type,
      rescale_timesteps=bool(rescale_timesteps))


def diffusion_from_config(diffusion_cfg, learn_sigma: bool, respacing: str = "") -> GaussianDiffusion:
  """The diffusion of a config's `diffusion` section, respaced by `respacing`.

  Variance: learned range with learn_sigma, else fixed_small when
  sigma_small, else fixed_large (the reference script's mapping).
  """
  steps = int(diffusion_cfg.steps)
  var_type = ("learned_range" if learn_sigma
              else "fixed_small" if diffusion_cfg.get("sigma_small", False) else "fixed_large")
  base = make_diffusion(
      schedules.get_betas(diffusion_cfg.schedule, steps),
      mean_type="xstart" if diffusion_cfg.get("predict_xstart", False) else "epsilon",
      var_type=var_type, loss_type=diffusion_cfg.get("loss", "hybrid"),
      rescale_timesteps=diffusion_cfg.get("rescale_timesteps", True))
  if not respacing:
    return base
  return base.respaced(respace.space_timesteps(steps, respacing))
