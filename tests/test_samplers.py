"""Ancestral and DDIM sampling chains: one compilation, determinism, correctness.

Most tests use 'rbg' keys: on CPU a threefry normal costs several seconds of
XLA compile time per chain, rbg a fraction, and the samplers treat keys
opaquely (fold_in + normal). One test runs with the default key type.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mem_diffusion import diffusion as D
from mem_diffusion.diffusion import samplers

SHAPE = (3, 4, 4, 3)


def key(seed):
  return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def chain():
  # A 20-step respaced cosine chain over 200 original steps.
  base = D.make_diffusion(D.get_betas("cosine", 200))
  return base, base.respaced(D.space_timesteps(200, "20"))


def _toy_model(counter):
  """eps = 0.5 x, variance value v = 0; counts how often it is traced."""
  def model_fn(x, t_model):
    counter.append(1)
    return jnp.concatenate([0.5 * x, jnp.zeros_like(x)], axis=-1)
  return model_fn


@pytest.mark.parametrize("ddim,default_key", [(False, True), (True, False)])
def test_whole_chain_traces_model_once_and_same_key_same_images(chain, ddim, default_key):
  _, sp = chain
  counter = []
  fn = _toy_model(counter)
  mk = jax.random.key if default_key else key
  a = samplers.sample(sp, fn, SHAPE, mk(0), ddim=ddim)
  b = samplers.sample(sp, fn, SHAPE, mk(1), ddim=ddim)
  a2 = samplers.sample(sp, fn, SHAPE, mk(0), ddim=ddim)
  assert len(counter) == 1  # 20 steps, 3 calls: one trace
  assert a.shape == SHAPE and bool(jnp.all(jnp.abs(a) <= 1.0 + 1e-6))
  np.testing.assert_array_equal(a, a2)
  assert np.abs(np.asarray(a - b)).max() > 1e-3


def test_chain_inside_outer_jit_with_params_as_arguments(chain):
  _, sp = chain
  counter = []

  @jax.jit
  def run(scale, k):
    def model_fn(x, t):
      counter.append(1)
      return jnp.concatenate([scale * x, jnp.zeros_like(x)], axis=-1)
    return samplers.sample(sp, model_fn, SHAPE, k)

  a = run(jnp.float32(0.5), key(3))
  b = run(jnp.float32(0.4), key(3))
  assert len(counter) == 1 and np.abs(np.asarray(a - b)).max() > 1e-3


def test_ddim_noise_depends_on_key_only_when_eta_positive(chain):
  _, sp = chain
  fn = _toy_model([])
  x_T = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32))
  seen = []
  progress = lambda done, total: seen.append((int(done), int(total)))
  run = lambda k, eta, **kw: samplers.sample(sp, fn, SHAPE, k, ddim=True, eta=eta, noise=x_T, **kw)
  # eta = 0: a deterministic map of x_T, whatever the key.
  np.testing.assert_array_equal(run(key(1), 0.0, progress=progress), run(key(2), 0.0, progress=progress))
  jax.effects_barrier()
  assert sorted(seen) == sorted([(i, 20) for i in range(1, 21)] * 2)  # every step reported
  # eta = 1: step noise from the key; same key, same images.
  a, a2, b = run(key(1), 1.0), run(key(1), 1.0), run(key(2), 1.0)
  np.testing.assert_array_equal(a, a2)
  assert np.abs(np.asarray(a - b)).max() > 1e-3


@pytest.mark.parametrize("ddim,eta", [(False, 0.0), (True, 0.5)])
def test_oracle_model_recovers_class_data(chain, ddim, eta):
  """With data = one point per class, the ideal eps model makes every chain end there.

  The model sees only (x, t_model) and recovers alpha_bar from the original
  timestep, so a respaced chain calling it with its own indices would fail.
  """
  base, sp = chain
  labels = jnp.array([0, 1, 2])
  points = jnp.asarray(np.linspace(-0.9, 0.9, 3 * 16 * 3, dtype=np.float32).reshape(3, 4, 4, 3))
  ac = jnp.asarray(base.alphas_cumprod.astype(np.float32))

  def oracle(x, t_model):
    idx = jnp.round(t_model * base.num_timesteps / 1000).astype(jnp.int32)
    a = ac[idx][:, None, None, None]
    target = points[labels]  # class conditioning through the closure
    eps = (x - jnp.sqrt(a) * target) / jnp.sqrt(1 - a)
    return jnp.concatenate([eps, jnp.zeros_like(x)], axis=-1)

  out = samplers.sample(sp, oracle, SHAPE, key(5), ddim=ddim, eta=eta)
  np.testing.assert_allclose(out, points[labels], atol=2e-3)


def test_ddim_step_with_the_oracle_stays_on_the_noise_path(chain):
  """One eta=0 DDIM step maps q_sample(x0, t, e) to q_sample(x0, t-1, e)."""
  base, sp = chain
  x0 = jnp.asarray(np.linspace(-0.8, 0.8, 3 * 16 * 3, dtype=np.float32).reshape(SHAPE))
  e = jnp.asarray(np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32))
  t = jnp.array([15, 10, 5])
  oracle = lambda x, tm: jnp.concatenate([e, jnp.zeros_like(x)], axis=-1)
  step = jax.jit(lambda t: (samplers.ddim_step(sp, oracle, sp.q_sample(x0, t, e), t, eta=0.0),
                            sp.q_sample(x0, t - 1, e)))
  got, want = step(jnp.array([15, 10, 5]))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_noise_shape_raises(chain):
  _, sp = chain
  with pytest.raises(ValueError, match="shape"):
    samplers.sample(sp, _toy_model([]), SHAPE, key(0), noise=jnp.zeros((1, 4, 4, 3)))
