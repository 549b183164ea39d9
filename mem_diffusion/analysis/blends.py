"""Blend test: projection of a sample onto the convex hull of training images.

A blend of two training images passes the 1/3 ratio test (d1 ~ d2), so each
sample is projected onto the convex hull of its k nearest (deduplicated)
training images plus a few candidate partners of a two-way blend with the
nearest one; rho = residual / d1. See `replicates.analyze` for how the flag is
set.
"""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from mem_diffusion.analysis import neighbors


# ----------------------------------------------------------------------------
# Blend test: projection onto the convex hull of the k nearest images.

def _project_simplex(v: np.ndarray) -> np.ndarray:
  """Euclidean projection of each row onto the probability simplex."""
  u = -np.sort(-v, axis=1)
  css = np.cumsum(u, axis=1) - 1.0
  ind = np.arange(1, v.shape[1] + 1)
  count = np.sum(u - css / ind > 0, axis=1)
  theta = css[np.arange(v.shape[0]), count - 1] / count
  return np.maximum(v - theta[:, None], 0.0)


def simplex_least_squares(gram: np.ndarray, iters: int = 300, active: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Minimises w^T G w over the simplex for a batch of PSD (k, k) matrices.

  Accelerated projected gradient with adaptive restart, started at e_1 (the
  nearest image), then polished: on the support it found, the equality-
  constrained problem is solved exactly (one small linear system), and that
  solution is kept when it is feasible and not worse. So the result is the
  exact optimum whenever the support is right, and never worse than the
  iterative one otherwise. `active` (n, k) bool excludes columns (weight 0).

  Returns: (weights (n, k), objective (n,)).
  """
  n, k, _ = gram.shape
  active = np.ones((n, k), bool) if active is None else active
  lip = 2.0 * np.maximum(np.linalg.eigvalsh(gram)[:, -1], 1e-300)
  w = np.zeros((n, k))
  w[:, 0] = 1.0
  y, t = w.copy(), np.ones(n)
  obj = lambda v: np.einsum("ni,ni->n", v, np.matmul(gram, v[..., None])[..., 0])
  f = obj(w)
  for _ in range(iters):
    g = 2.0 * np.matmul(gram, y[..., None])[..., 0]
    w_new = _project_simplex(np.where(active, y - g / lip[:, None], -1e300))
    f_new = obj(w_new)
    t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
    restart = f_new > f
    beta = np.where(restart, 0.0, (t - 1.0) / t_new)
    y = w_new + beta[:, None] * (w_new - w)
    t = np.where(restart, 1.0, t_new)
    w, f = w_new, f_new
  # Polish: KKT system on the support (off-support weights pinned to 0).
  supp = w > 1e-9
  a = np.zeros((n, k + 1, k + 1))
  a[:, :k, :k] = 2.0 * gram * (supp[:, :, None] & supp[:, None, :])
  a[:, np.arange(k), np.arange(k)] += ~supp
  a[:, :k, k] = supp
  a[:, k, :k] = supp
  rhs = np.zeros((n, k + 1))
  rhs[:, k] = 1.0
  well = np.linalg.cond(a) < 1e12
  if well.any():
    sol = np.linalg.solve(a[well], rhs[well][..., None])[..., 0][:, :k]
    sol = np.where(supp[well], sol, 0.0)
    f_sol = np.einsum("ni,ni->n", sol, np.matmul(gram[well], sol[..., None])[..., 0])
    better = (sol >= 0).all(axis=1) & (f_sol <= f[well])
    idx = np.nonzero(well)[0][better]
    w[idx], f[idx] = sol[better], f_sol[better]
  return w, np.maximum(f, 0.0)


@jax.jit
def _hull_gram(s_u8, train_u8, hull):
  """Exact int32 Gram matrices of (hull image - sample) differences.

  Differences are integers in [-255, 255] (exact in float32 and TF32) and
  blocks of 256 keep every partial sum below 2^24, so each block product is
  exact; blocks are summed in int32 (D * 255^2 < 2^31).
  """
  y = train_u8[hull].astype(jnp.float32) - s_u8[:, None, :].astype(jnp.float32)
  n, h, d = y.shape
  pad = (-d) % 256
  y = jnp.pad(y, ((0, 0), (0, 0), (0, pad))).reshape(n, h, -1, 256)
  g = jnp.einsum("nicx,njcx->ncij", y, y, precision=lax.Precision.HIGHEST)
  return jnp.round(g).astype(jnp.int32).sum(axis=1)


@functools.partial(jax.jit, static_argnames=("p",))
def _partner_topp(s_pool, a_pool, t_pool, t_norms, *, p):
  """Training images Z closest (pooled) to the segment [a, Z] through the sample.

  A two-way blend s = w a + (1 - w) Z of the nearest image a is exactly on
  that segment; its minor component Z may be far from s (farther than the k
  nearest images when distances vary a lot), so the k-nearest hull misses it.
  Pooling is linear, so the relation holds for block means too, at 1/16 of
  the cost of a full-resolution pass. Only candidates come out of here.
  """
  def score(tile):
    z, zn = tile
    pz = jnp.einsum("nd,md->nm", s_pool, z, precision=lax.Precision.HIGHEST)
    qz = jnp.einsum("nd,md->nm", a_pool, z, precision=lax.Precision.HIGHEST)
    pp = jnp.sum(s_pool * s_pool, 1)[:, None]
    qq = jnp.sum(a_pool * a_pool, 1)[:, None]
    pq = jnp.sum(s_pool * a_pool, 1)[:, None]
    uu = pp - 2 * pz + zn[None, :]
    vv = qq - 2 * qz + zn[None, :]
    uv = pq - pz - qz + zn[None, :]
    lam = jnp.clip(uv / jnp.maximum(vv, 1e-6), 0.0, 1.0)
    res = uu - 2 * lam * uv + lam * lam * vv
    # Z == a spans no segment; padding rows (norm 1e30) are never partners.
    return jnp.where((vv > 1e-3 * (qq + 1.0)) & (zn[None, :] < 1e29), res, jnp.inf)

  _, i = neighbors.top_k_scan(score, (t_pool, t_norms), p, s_pool.shape[0])
  return i


def blend_partners(samples: np.ndarray, train: np.ndarray, nn1: np.ndarray, p: int, *,
                   chunk_size: int | None = None, train_chunk: int = 4096) -> np.ndarray:
  """p candidate partners Z (train indices) of a two-way blend with train[nn1]."""
  n, m_train = samples.shape[0], train.shape[0]
  p = min(p, m_train)
  s_pool, _ = neighbors.pool_sums(samples.reshape(n, -1), samples.shape[1:])
  t_pool, _ = neighbors.pool_sums(train.reshape(m_train, -1), train.shape[1:])
  ts = neighbors.train_tile_size(m_train, train_chunk)
  t_norms = np.einsum("nd,nd->n", t_pool, t_pool)
  t_pool_dev = jnp.asarray(neighbors.tile_rows(t_pool, ts, 0.0))
  t_norms_dev = jnp.asarray(neighbors.tile_rows(t_norms, ts, 1e30))
  cs = neighbors.sample_chunk(n, chunk_size)
  out = np.empty((n, p), np.int64)
  for s in range(0, n, cs):
    rows = min(cs, n - s)
    sp = np.zeros((cs, s_pool.shape[1]), np.float32)
    ap = np.zeros_like(sp)
    sp[:rows] = s_pool[s:s + rows]
    ap[:rows] = t_pool[nn1[s:s + rows]]
    out[s:s + rows] = np.asarray(_partner_topp(jnp.asarray(sp), jnp.asarray(ap), t_pool_dev,
                                               t_norms_dev, p=p))[:rows]
  return out


def blend_projection(samples: np.ndarray, train: np.ndarray, hull: np.ndarray, d1: np.ndarray,
                     *, chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """rho = distance to the convex hull of `hull` images / d1, and the weights.

  The Gram matrix of (hull image - sample) differences is exact, scaled by
  d1^2, so rho = sqrt(min w^T G w). A vertex listed twice in a row is used
  once. Samples with d1 = 0 get rho = 0 and weight 1 on the nearest image.
  """
  n, k = hull.shape
  flat_s = jnp.asarray(samples.reshape(n, -1))
  flat_t = jnp.asarray(train.reshape(train.shape[0], -1))
  active = ~(np.argmax(hull[:, :, None] == hull[:, None, :], axis=2) < np.arange(k))
  rho = np.zeros(n)
  weights = np.zeros((n, k))
  weights[:, 0] = 1.0
  todo = np.nonzero(d1 > 0)[0]
  cs = int(min(chunk_size, max(8, -(-todo.size // 8) * 8)))
  grams = np.empty((todo.size, k, k))
  for s in range(0, todo.size, cs):
    rows = todo[s:s + cs]
    sel = np.concatenate([rows, np.full(cs - rows.size, rows[0], rows.dtype)])
    grams[s:s + rows.size] = np.asarray(_hull_gram(flat_s[sel], flat_t, jnp.asarray(hull[sel])))[
        :rows.size]
  if todo.size:
    grams /= (d1[todo] ** 2)[:, None, None]
    w, f = simplex_least_squares(grams, active=active[todo])
    rho[todo], weights[todo] = np.sqrt(f), w
  return rho, weights
