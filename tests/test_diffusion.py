"""Schedules, respacing, q/p math and losses of mem_diffusion.diffusion."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from configs import default
from mem_diffusion import diffusion as D
from mem_diffusion.diffusion import likelihood
from mem_diffusion.diffusion import timestep_samplers as ts

GOLDEN = "tests/data/diffusion_cosine4000.npz"


# ---- schedules -------------------------------------------------------------------


def test_linear_schedule_scales_with_steps():
  b = D.get_betas("linear", 1000)
  assert b.dtype == np.float64 and b.shape == (1000,)
  np.testing.assert_allclose([b[0], b[-1]], [1e-4, 0.02], rtol=1e-12)
  b4 = D.get_betas("linear", 4000)
  np.testing.assert_allclose([b4[0], b4[-1]], [0.25e-4, 0.005], rtol=1e-12)


def test_cosine_schedule_follows_alpha_bar_and_clips():
  steps = 100
  b = D.get_betas("cosine", steps)
  f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  ac = np.cumprod(1 - b)
  want = np.array([f((i + 1) / steps) / f(0) for i in range(steps)])
  np.testing.assert_allclose(ac[:-1], want[:-1], rtol=1e-10)  # the last beta is clipped
  assert b[-1] == 0.999 and b.max() == 0.999 and b[:-1].max() < 0.999


def test_schedules_match_reference_file():
  data = np.load(GOLDEN)
  diff = D.make_diffusion(D.get_betas("cosine", 4000))
  for k in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
            "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
    np.testing.assert_allclose(getattr(diff, k), data["base/" + k], rtol=1e-9, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("name", ["quadratic", "", "Cosine"])
def test_unknown_schedule_raises(name):
  with pytest.raises(ValueError, match="schedule"):
    D.get_betas(name, 10)


def test_config_errors_name_the_bad_value():
  cfg = default.get_config().diffusion
  cfg.loss = "l1"
  with pytest.raises(ValueError, match="'l1'"):
    D.diffusion_from_config(cfg, learn_sigma=True)
  cfg = default.get_config().diffusion
  with pytest.raises(ValueError, match="'ddimx'"):
    D.diffusion_from_config(cfg, learn_sigma=True, respacing="ddimx")


def test_diffusion_from_config_variance_and_mean_types():
  cfg = ml_collections.ConfigDict(dict(steps=50, schedule="linear", loss="mse",
                                       predict_xstart=True, sigma_small=True,
                                       rescale_timesteps=False))
  d = D.diffusion_from_config(cfg, learn_sigma=False)
  assert (d.var_type, d.mean_type, d.loss_type, d.num_timesteps) == ("fixed_small", "xstart", "mse", 50)
  cfg.sigma_small = False
  assert D.diffusion_from_config(cfg, learn_sigma=False).var_type == "fixed_large"
  assert D.diffusion_from_config(cfg, learn_sigma=True).var_type == "learned_range"
  d = D.diffusion_from_config(default.get_config().diffusion, True, respacing="ddim250")
  assert d.num_timesteps == 250 and d.original_num_steps == 4000


# ---- respacing -------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["250", "ddim250", "10,10,5"])
def test_respacing_matches_reference(spec):
  want = np.load(GOLDEN)["respace/" + spec]
  assert D.space_timesteps(4000, spec) == list(want)


@pytest.mark.parametrize("steps,spec,want", [
    (10, "", list(range(10))),
    (10, "10", list(range(10))),
    (10, "ddim5", [0, 2, 4, 6, 8]),
    (10, "ddim4", [0, 3, 6, 9]),
    (10, "ddim10", list(range(10))),
    (9, "5", [0, 2, 4, 6, 8]),
    (10, "2,1", [0, 4, 5]),  # sections of 5 steps: ends of the first, start of the second
    (11, "1,1", [0, 6]),  # the first section takes the extra step
    (6, "3", [0, 2, 5]),  # stride 2.5: round(2.5) == 2, half to even as Python
    (10, [3, 2], [0, 2, 4, 5, 9]),
])
def test_respacing_cases(steps, spec, want):
  assert D.space_timesteps(steps, spec) == want


@pytest.mark.parametrize("steps,spec", [(10, "ddim7"), (10, "ddim1"), (10, "ddim11"),
                                        (10, "11"), (10, "6,1"), (10, "a,b"), (10, "-1")])
def test_impossible_respacing_raises(steps, spec):
  with pytest.raises(ValueError):
    D.space_timesteps(steps, spec)


def test_respaced_chain_keeps_marginals_and_calls_network_with_original_t():
  base = D.make_diffusion(D.get_betas("cosine", 4000))
  keep = D.space_timesteps(4000, "10,10,5")
  sp = base.respaced(keep)
  np.testing.assert_allclose(sp.alphas_cumprod, base.alphas_cumprod[keep], rtol=1e-8)
  assert sp.betas[-1] > 0.999  # not clipped again
  t = jnp.arange(sp.num_timesteps)
  np.testing.assert_array_equal(sp.model_timesteps(t), np.asarray(keep, np.float32) * 0.25)
  no_rescale = D.make_diffusion(D.get_betas("cosine", 4000), rescale_timesteps=False).respaced(keep)
  np.testing.assert_array_equal(no_rescale.model_timesteps(t), np.asarray(keep, np.float32))


# ---- q and p -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
  return D.make_diffusion(D.get_betas("cosine", 50))


# Test inputs come from numpy: eager jax.random calls compile several kernels each.
def _images(seed, n=4, hw=4):
  """uint8-like images scaled to [-1, 1], both edge values included."""
  k = np.random.default_rng(seed).integers(0, 256, (n, hw, hw, 3))
  k.flat[:2] = (0, 255)
  return jnp.asarray(k.astype(np.float32) / 127.5 - 1.0)


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def test_q_sample_and_posterior_are_consistent(small):
  x0 = _images(0)
  noise = _normal(1, x0.shape)
  t = jnp.array([0, 1, 25, 49])
  @jax.jit  # one compilation instead of dozens of eager ops
  def run(x0, noise, t):
    xt = small.q_sample(x0, t, noise)
    return (xt,) + small.q_posterior_mean_variance(x0, xt, t) + (
        small.predict_eps_from_xstart(xt, t, x0),)

  xt, mean, var, log_var, eps = run(x0, noise, t)
  ac = small.alphas_cumprod[np.asarray(t)][:, None, None, None]
  np.testing.assert_allclose(xt, np.sqrt(ac) * x0 + np.sqrt(1 - ac) * noise, rtol=1e-5, atol=1e-6)
  assert mean.shape == var.shape == log_var.shape == x0.shape
  np.testing.assert_allclose(mean[0], x0[0], atol=1e-6)  # t=0: the posterior mean is x0
  np.testing.assert_allclose(log_var[0], np.log(small.posterior_variance[1]), rtol=1e-6)
  # Recovering eps from the true x0 and back is the identity.
  np.testing.assert_allclose(eps[1:], noise[1:], atol=2e-3)


def test_p_mean_variance_variance_types(small):
  x = _normal(2, (3, 4, 4, 3))
  t = jnp.array([0, 10, 49])
  idx = np.asarray(t)
  def fn(v):
    return lambda xx, tt: jnp.concatenate([jnp.zeros_like(xx), jnp.full_like(xx, v)], -1)
  pmv = lambda d, f, **kw: jax.jit(lambda x, t: d.p_mean_variance(f, x, t, **kw))(x, t)
  hi = pmv(small, fn(1.0))["log_variance"][:, 0, 0, 0]
  lo = pmv(small, fn(-1.0))["log_variance"][:, 0, 0, 0]
  np.testing.assert_allclose(hi, np.log(small.betas[idx]), rtol=1e-6)
  np.testing.assert_allclose(lo, small.posterior_log_variance_clipped[idx], rtol=1e-6)
  fixed = lambda kind: D.make_diffusion(small.betas, var_type=kind)
  zero = lambda xx, tt: jnp.zeros_like(xx)
  large = pmv(fixed("fixed_large"), zero)["variance"][:, 0, 0, 0]
  want = small.betas[idx].copy()
  want[0] = small.posterior_variance[1]  # the reference's t=0 choice
  np.testing.assert_allclose(large, want, rtol=1e-6)
  small_v = pmv(fixed("fixed_small"), zero)["variance"][:, 0, 0, 0]
  np.testing.assert_allclose(small_v, small.posterior_variance[idx], rtol=1e-6, atol=1e-12)
  with pytest.raises(ValueError, match="channels"):
    small.p_mean_variance(zero, x, t)  # learned sigma needs 6 channels


def test_xstart_prediction_and_clipping(small):
  x = _normal(3, (2, 4, 4, 3))
  t = jnp.array([5, 30])
  d = D.make_diffusion(small.betas, mean_type="xstart", var_type="fixed_small")
  three = lambda xx, tt: 3.0 * jnp.ones_like(xx)

  @jax.jit
  def run(x, t):
    clipped = d.p_mean_variance(three, x, t)
    raw = d.p_mean_variance(three, x, t, clip_denoised=False)
    return clipped, raw, d.q_posterior_mean_variance(raw["pred_xstart"], x, t)[0]

  clipped, raw, mean = run(x, t)
  np.testing.assert_allclose(clipped["pred_xstart"], 1.0)
  np.testing.assert_allclose(raw["pred_xstart"], 3.0)
  np.testing.assert_allclose(raw["mean"], mean, rtol=1e-6)


# ---- likelihood and losses -------------------------------------------------------


def test_discretized_likelihood_against_exact_normal():
  x = jnp.array([-1.0, -1 + 2 / 255, 0.0, 1 - 2 / 255, 1.0])
  means = jnp.array([-0.9, -1.0, 0.01, 1.0, 0.95])
  log_scales = jnp.full(5, math.log(0.05))
  got = np.exp(likelihood.discretized_gaussian_log_likelihood(x, means, log_scales))
  s = 0.05
  xn, mn = np.asarray(x, np.float64), np.asarray(means, np.float64)
  upper = stats.norm.cdf((xn - mn + 1 / 255) / s)
  lower = stats.norm.cdf((xn - mn - 1 / 255) / s)
  want = upper - lower
  want[0] = upper[0]  # edge bins extend to -inf / +inf
  want[-1] = 1 - lower[-1]
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4)  # tanh CDF approximation
  # Hopeless predictions are floored at 1e-12, not -inf.
  far = likelihood.discretized_gaussian_log_likelihood(jnp.array([0.0]), jnp.array([0.9]),
                                                       jnp.array([math.log(1e-3)]))
  np.testing.assert_allclose(far, math.log(1e-12), rtol=1e-6)


def test_normal_kl():
  assert float(likelihood.normal_kl(0.3, -1.0, 0.3, -1.0)) == pytest.approx(0.0, abs=1e-7)
  # KL(N(0,1) || N(1, e^2)) = 0.5 (-1 + 2 + e^-2 + e^-2)
  want = 0.5 * (1 + 2 * math.exp(-2))
  assert float(likelihood.normal_kl(0.0, 0.0, 1.0, 2.0)) == pytest.approx(want, rel=1e-6)


def _affine_model(params, x, t):
  # eps channels from params['a'], variance channels from params['b'].
  return jnp.concatenate([params["a"] * x, jnp.tanh(params["b"] + 0 * x)], axis=-1)


@pytest.mark.parametrize("loss", ["hybrid", "mse", "kl"])
def test_loss_gradients_and_scaling(small, loss):
  d = D.make_diffusion(small.betas, loss_type=loss)
  x0 = _images(4)
  noise = _normal(5, x0.shape)
  t = jnp.array([0, 3, 20, 49])
  params = {"a": jnp.float32(0.5), "b": jnp.float32(0.2)}

  def total(p, key):
    return jnp.sum(d.training_losses(lambda x, tt: _affine_model(p, x, tt), x0, t, noise)[key])

  g_vb, g_mse = jax.jit(lambda p: (jax.grad(total)(p, "vb"), jax.grad(total)(p, "mse")))(params)
  assert float(jnp.abs(g_vb["b"])) > 0  # the bound trains the variance
  assert float(g_mse["b"]) == 0
  if loss == "kl":
    assert float(jnp.abs(g_vb["a"])) > 0  # the full bound trains the mean too
  else:
    assert float(g_vb["a"]) == 0  # stop-gradient on the mean
  losses = lambda d: jax.jit(lambda p: d.training_losses(
      lambda x, tt: _affine_model(p, x, tt), x0, t, noise))(params)
  out = losses(d)
  np.testing.assert_allclose(out["loss"], out["mse"] + out["vb"], rtol=1e-6)
  ref = losses(D.make_diffusion(small.betas, loss_type="mse"))
  scale = {"hybrid": 50 / 1000, "mse": 1.0, "kl": 1.0}[loss]
  np.testing.assert_allclose(out["vb"], ref["vb"] * scale, rtol=1e-6)


def test_fixed_variance_losses_have_no_bound_term(small):
  d = D.make_diffusion(small.betas, var_type="fixed_large", loss_type="hybrid")
  x0 = _images(6)
  noise = _normal(7, x0.shape)
  out = d.training_losses(lambda x, t: 0.5 * x, x0, jnp.array([0, 1, 2, 3]), noise)
  np.testing.assert_array_equal(out["vb"], 0.0)
  xt = d.q_sample(x0, jnp.array([0, 1, 2, 3]), noise)
  np.testing.assert_allclose(out["mse"], np.mean((noise - 0.5 * xt) ** 2, axis=(1, 2, 3)), rtol=1e-5)


# ---- timestep samplers --------------------------------------------------------------


def test_uniform_sampler():
  t, w = ts.uniform(jax.random.key(0), 4096, 7)
  assert t.dtype == jnp.int32 and set(np.asarray(t).tolist()) == set(range(7))
  np.testing.assert_array_equal(w, 1.0)


def test_loss_second_moment_warmup_weights_and_order():
  T = 4
  s = ts.create("loss_second_moment", T)
  st = s.init()
  update = jax.jit(s.update)
  # Not warmed up: uniform, weights 1.
  st = update(st, jnp.array([0, 1, 2]), jnp.ones(3) * 5)
  np.testing.assert_allclose(s.probs(st), 0.25)
  # Repeated t in one batch: entries are pushed in batch order, oldest dropped.
  losses = np.arange(1, 13, dtype=np.float32)  # 12 losses at t=3
  st = update(st, jnp.full(12, 3), jnp.asarray(losses))
  np.testing.assert_array_equal(st.history[3], losses[2:])
  assert int(st.counts[3]) == 10
  np.testing.assert_allclose(s.probs(st), 0.25)  # t=0..2 have < 10 losses
  for t, val in ((0, 1.0), (1, 2.0), (2, 2.0)):
    st = update(st, jnp.full(10, t), jnp.full(10, val))
  rms = np.array([1.0, 2.0, 2.0, np.sqrt(np.mean(losses[2:] ** 2))])
  want = 0.999 * rms / rms.sum() + 0.001 / T
  np.testing.assert_allclose(s.probs(st), want, rtol=1e-5)
  t, w = jax.jit(s.sample, static_argnums=2)(st, jax.random.key(1), 20000)
  np.testing.assert_allclose(w, 1.0 / (T * want[np.asarray(t)]), rtol=1e-5)
  freq = np.bincount(np.asarray(t), minlength=T) / 20000
  np.testing.assert_allclose(freq, want, atol=0.02)
  # Plain arrays: survives a flatten/unflatten round trip (what a checkpoint does).
  leaves, tree = jax.tree_util.tree_flatten(st)
  assert all(isinstance(l, jax.Array) for l in leaves) and len(leaves) == 2
  back = jax.tree_util.tree_unflatten(tree, [np.asarray(l) for l in leaves])
  np.testing.assert_allclose(s.probs(back), want, rtol=1e-5)


def test_unknown_timestep_sampler():
  with pytest.raises(ValueError, match="'importance'"):
    ts.create("importance", 10)
