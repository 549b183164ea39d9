"""Exact nearest training images, the 1/3 replicate test, and a blend test.

Why exact, and how it stays fast
--------------------------------
The study's number is the share of samples W with d1 / d2 < 1/3 (d1, d2: L2
distances over raw 0..255 pixels to the nearest and second-nearest training
image). Distances from a float32 matmul expansion |a|^2 + |b|^2 - 2ab cancel
badly at this scale, and TF32 (GPU) / bfloat16 (TPU) matmuls are worse, so
borderline samples flip. This module does the heavy work in a matmul and
still returns exactly what a float64 brute force returns:

1. Fast pass (jitted, chunked over samples and over training tiles): pixels
   are centred to the integers -128..127 and the contraction is split in
   blocks of K = 1024 values. Those integers are exact in float32, TF32 and
   bfloat16, each product (<= 2^14) is exact in a float32 accumulator, and
   every partial sum of a block is an integer of magnitude <= K * 2^14 = 2^24,
   hence exactly representable: on IEEE float32 hardware the block dot
   products are exact whatever the summation order. Blocks are summed in
   int32, so the squared distances are exact integers; they are rounded once
   to float32 (relative error 2^-24) only to pick the m smallest with
   `lax.top_k` (fast on every backend), ties going to the lower index.
2. Exact re-ranking: the m candidates of each sample are re-scored with int32
   sums of squared uint8 differences (exact: D * 255^2 < 2^31) and sorted by
   (distance, index).
3. Certificate: we do not rely on the exactness argument of step 1 (some
   accelerators accumulate with fewer bits). Allowing every accumulation in
   the fast pass a relative error of 2u (u = 2^-24; truncating accumulators
   included), a block dot product is off by at most 2 K u sum|a_i b_i| <=
   2 K u |a_c| |b_c|, so a squared distance is off by at most
   E = 4 K u |a| max|b| + (#blocks) + t 2^-23 (int rounding and the float32
   key). Every training image left out has fast value >= t (the m-th
   candidate's), so exact distance >= t - E. If the k-th exact distance among
   the candidates is < t - E, the exact k nearest are provably among the
   candidates. Rows that fail the check (rare: near-ties between the k-th and
   the m-th neighbour, e.g. many near-duplicates) are recomputed against the
   whole training set in float64, which is exact for integer pixels (all
   intermediate values < 2^53). `last_stats['fallback_rows']` counts them.

Duplicates and blends
---------------------
Duplicated training images make d1 = d2 and hide copies, so `analyze` first
collapses exact duplicates (identical pixels) and near-duplicates (RMS pixel
difference <= `dup_rms`, default 2 levels of 255, i.e. invisible; grouped
transitively) onto their lowest index, and tests against those representatives.
A blend of training images passes the 1/3 test (d1 ~ d2), so each sample is
also projected onto the convex hull of its k nearest representatives; rho =
residual / d1, and a non-replicate is a blend when rho < threshold and the
second-largest convex weight is >= 0.1.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from mem_diffusion import npz_io

_K = 1024  # contraction block: partial sums stay <= 1024 * 128^2 = 2^24
_PAD_NORM = 1 << 30  # squared norm of padding rows: farther than any real image
_MAX_DIM = (1 << 30) // (255 * 255)  # values per image for exact int32 distances
Z95 = 1.959963984540054

last_stats: dict[str, Any] = {}


# ----------------------------------------------------------------------------
# Exact k nearest neighbours.

def _flatten(images: np.ndarray, name: str) -> np.ndarray:
  images = npz_io.check_images(images, name)
  flat = images.reshape(images.shape[0], -1)
  if flat.shape[1] > _MAX_DIM:
    raise ValueError(f"{name}: {flat.shape[1]} values per image; exact int32 distances "
                     f"support at most {_MAX_DIM}")
  return flat


def _centred_blocks(flat_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """int -128..127 values as float32 (N, C, K) blocks and exact int32 squared norms."""
  n, d = flat_u8.shape
  c = -(-d // _K)
  x = flat_u8.astype(np.int32) - 128
  norms = np.einsum("nd,nd->n", x, x).astype(np.int32)
  blocks = np.zeros((n, c * _K), np.float32)
  blocks[:, :d] = x
  return blocks.reshape(n, c, _K), norms


@functools.partial(jax.jit, static_argnames=("m",))
def _fast_topm(a_blocks, a_norms, t_blocks, t_norms, *, m):
  """m smallest (float32 key, index) per sample, scanning training tiles."""
  def step(carry, xs):
    best_v, best_i = carry
    b_blocks, b_norms, offset = xs
    dots = jnp.einsum("nck,mck->cnm", a_blocks, b_blocks, preferred_element_type=jnp.float32)
    dot = jnp.round(dots).astype(jnp.int32).sum(0)
    d = a_norms[:, None] + b_norms[None, :] - 2 * dot
    v, i = lax.top_k(-d.astype(jnp.float32), m)
    # Earlier tiles (lower indices) first: top_k keeps the lower position on ties.
    cat_v = jnp.concatenate([best_v, v], axis=1)
    cat_i = jnp.concatenate([best_i, i + offset], axis=1)
    v, j = lax.top_k(cat_v, m)
    return (v, jnp.take_along_axis(cat_i, j, axis=1)), None

  n = a_blocks.shape[0]
  tiles, ts = t_norms.shape
  init = (jnp.full((n, m), -jnp.inf, jnp.float32), jnp.zeros((n, m), jnp.int32))
  offsets = jnp.arange(tiles, dtype=jnp.int32) * ts
  (v, i), _ = lax.scan(step, init, (t_blocks, t_norms, offsets))
  return -v, i


@jax.jit
def _exact_sqdist(a_u8, train_u8, cand):
  """Exact int32 squared distances of each sample to its candidate rows."""
  diff = train_u8[cand].astype(jnp.int32) - a_u8[:, None, :].astype(jnp.int32)
  return jnp.sum(diff * diff, axis=-1)


def _exact_rows_f64(a_u8: np.ndarray, train_u8: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Brute force in float64 (exact for integer pixels), ties to the lower index."""
  a = a_u8.astype(np.float64)
  na = np.einsum("nd,nd->n", a, a)
  d = np.empty((a.shape[0], train_u8.shape[0]), np.float64)
  for s in range(0, train_u8.shape[0], 4096):
    b = train_u8[s:s + 4096].astype(np.float64)
    d[:, s:s + 4096] = na[:, None] + np.einsum("nd,nd->n", b, b)[None, :] - 2.0 * (a @ b.T)
  order = np.argsort(d, axis=1, kind="stable")[:, :k]
  return order, np.take_along_axis(d, order, axis=1).astype(np.int64)


def _default_chunk(n: int, chunk_size: int | None) -> int:
  cs = chunk_size or 1024
  return int(max(8, min(cs, -(-n // 8) * 8)))


def nearest_k(samples: np.ndarray, train: np.ndarray, k: int, *, chunk_size: int | None = None,
              train_chunk: int = 4096, num_candidates: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
  """Exact k nearest training images of every sample under L2 over raw pixels.

  Args:
    samples: uint8 (N, H, W, 3).
    train: uint8 (M, H, W, 3), M >= k.
    k: neighbours per sample.
    chunk_size: samples per jitted step (memory ~ chunk_size * train_chunk * 12 B).
    train_chunk: training images per scanned tile.
    num_candidates: m, candidates kept by the fast pass (default max(16, 2k)).

  Returns:
    (indices int64 (N, k), squared distances int64 (N, k)), sorted by
    (distance, index): identical to a float64 brute force with stable ties.
  """
  a = _flatten(samples, "samples")
  b = _flatten(train, "train")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"image sizes differ: samples {samples.shape[1:]} vs train {train.shape[1:]}")
  n, m_train = a.shape[0], b.shape[0]
  if not 1 <= k <= m_train:
    raise ValueError(f"k={k} needs 1 <= k <= number of training images ({m_train})")
  m = min(num_candidates or max(16, 2 * k), m_train)
  m = max(m, k)
  cs = _default_chunk(n, chunk_size)
  ts = int(min(train_chunk, -(-m_train // 8) * 8))
  tiles = -(-m_train // ts)

  b_blocks, b_norms = _centred_blocks(b)
  pad = tiles * ts - m_train
  b_blocks = np.concatenate([b_blocks, np.zeros((pad,) + b_blocks.shape[1:], np.float32)])
  b_norms_p = np.concatenate([b_norms, np.full((pad,), _PAD_NORM, np.int32)])
  t_blocks = jnp.asarray(b_blocks.reshape(tiles, ts, *b_blocks.shape[1:]))
  t_norms = jnp.asarray(b_norms_p.reshape(tiles, ts))
  train_dev = jnp.asarray(b)
  max_b = math.sqrt(float(b_norms.max()))
  num_blocks = b_blocks.shape[1]

  out_i = np.empty((n, k), np.int64)
  out_d = np.empty((n, k), np.int64)
  fallback = []
  for s in range(0, n, cs):
    chunk = a[s:s + cs]
    rows = chunk.shape[0]
    if rows < cs:
      chunk = np.concatenate([chunk, np.zeros((cs - rows, chunk.shape[1]), np.uint8)])
    a_blocks, a_norms = _centred_blocks(chunk)
    fast_v, cand = _fast_topm(jnp.asarray(a_blocks), jnp.asarray(a_norms), t_blocks, t_norms, m=m)
    exact = _exact_sqdist(jnp.asarray(chunk), train_dev, cand)
    fast_v, cand, exact = (np.asarray(x)[:rows] for x in (fast_v, cand, exact))
    order = np.lexsort((cand, exact), axis=-1)
    cand = np.take_along_axis(cand, order, axis=1).astype(np.int64)
    exact = np.take_along_axis(exact, order, axis=1).astype(np.int64)
    out_i[s:s + rows] = cand[:, :k]
    out_d[s:s + rows] = exact[:, :k]
    if m < m_train:
      t = fast_v[:, -1].astype(np.float64)
      bound = (4 * _K * 2.0**-24 * np.sqrt(a_norms[:rows].astype(np.float64)) * max_b
               + num_blocks + t * 2.0**-23 + 1.0)
      bad = np.nonzero(~(exact[:, k - 1] < t - bound))[0]
      fallback.extend((s + bad).tolist())
  if fallback:
    rows = np.asarray(fallback)
    for s in range(0, rows.size, 256):
      r = rows[s:s + 256]
      out_i[r], out_d[r] = _exact_rows_f64(a[r], b, k)
  last_stats.update(fallback_rows=len(fallback), candidates=m)
  return out_i, out_d


def nearest_two(samples: np.ndarray, train: np.ndarray, *, chunk_size: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Exact two nearest training images: (nn1, nn2, d1, d2), float64 L2 distances.

  Ties go to the lower training index; duplicates in `train` are NOT removed
  here (a copy of a duplicated image gets d2 = 0): `analyze` dedupes first.
  """
  idx, sq = nearest_k(samples, train, 2, chunk_size=chunk_size)
  d = np.sqrt(sq.astype(np.float64))
  return idx[:, 0], idx[:, 1], d[:, 0], d[:, 1]


# ----------------------------------------------------------------------------
# Duplicated training images.

def _pool_sums(flat_u8: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, int]:
  """Centred b x b block sums: |pool(a) - pool(b)|^2 / b^2 <= |a - b|^2."""
  h, w, _ = shape
  b = next(s for s in (4, 2, 1) if h % s == 0 and w % s == 0)
  out = [np.asarray(_pool_jit(jnp.asarray(flat_u8[s:s + 4096]), shape, b))
         for s in range(0, flat_u8.shape[0], 4096)]
  return np.concatenate(out), b


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pool_jit(x, shape, b):
  h, w, c = shape
  x = x.reshape(-1, h // b, b, w // b, b, c).astype(jnp.int32).sum(axis=(2, 4))
  return (x.reshape(x.shape[0], -1) - 128 * b * b).astype(jnp.float32)


@jax.jit
def _close_mask(q, q_norm, r, r_norm, row0, limit):
  """Pairs (i, j > i) whose pooled squared distance is within `limit` (+ margin)."""
  dot = jnp.einsum("nd,md->nm", q, r, precision=lax.Precision.HIGHEST)
  d = q_norm[:, None] + r_norm[None, :] - 2 * dot
  margin = 1e-4 * (q_norm[:, None] + r_norm[None, :]) + 16.0
  upper = jnp.arange(r.shape[0])[None, :] > (row0 + jnp.arange(q.shape[0]))[:, None]
  return (d <= limit + margin) & upper


def find_duplicates(train: np.ndarray, *, dup_rms: float = 2.0, chunk_size: int = 1024
                    ) -> tuple[np.ndarray, list[list[int]]]:
  """Groups exact and near duplicates of the training set.

  Near duplicates are pairs whose RMS pixel difference is <= `dup_rms` (0..255
  scale; 0 = exact duplicates only); groups are closed transitively. Near pairs
  are found without an all-pairs full-resolution pass: block-pooled images
  give a lower bound on the distance, which selects candidate pairs that are
  then checked exactly.

  Returns:
    rep: int64 (M,), the lowest index of each image's group.
    pairs: sorted [i, j] (i < j) linking each duplicate to its group: exact
      copies as [first, j], near pairs as found.
  """
  flat = _flatten(train, "train")
  m = flat.shape[0]
  rows = np.ascontiguousarray(flat).view(np.dtype((np.void, flat.shape[1]))).ravel()
  _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
  parent = first[inverse.ravel()].astype(np.int64)
  pairs = {(int(parent[j]), j) for j in np.nonzero(parent != np.arange(m))[0].tolist()}
  uniq = np.sort(first)
  if dup_rms > 0 and uniq.size > 1:
    pooled, b = _pool_sums(flat[uniq], train.shape[1:])
    norms = np.einsum("nd,nd->n", pooled.astype(np.float64), pooled.astype(np.float64))
    limit = float(dup_rms) ** 2 * flat.shape[1]
    r, r_norm = jnp.asarray(pooled), jnp.asarray(norms.astype(np.float32))
    cs = _default_chunk(uniq.size, chunk_size)
    cand = []
    for s in range(0, uniq.size, cs):
      q = pooled[s:s + cs]
      qn = norms[s:s + cs]
      n = q.shape[0]
      if n < cs:
        q = np.concatenate([q, np.zeros((cs - n, q.shape[1]), np.float32)])
        qn = np.concatenate([qn, np.zeros(cs - n)])
      mask = np.asarray(_close_mask(jnp.asarray(q), jnp.asarray(qn.astype(np.float32)), r, r_norm,
                                    s, limit * b * b))[:n]
      ii, jj = np.nonzero(mask)
      cand.append(np.stack([ii + s, jj], axis=1))
    cand = np.concatenate(cand)
    for s in range(0, cand.shape[0], 4096):
      c = uniq[cand[s:s + 4096]]
      diff = flat[c[:, 0]].astype(np.int32) - flat[c[:, 1]].astype(np.int32)
      close = np.einsum("nd,nd->n", diff, diff) <= limit
      pairs.update((int(i), int(j)) for i, j in c[close])
    # Union-find over near pairs, each group represented by its lowest index.
    root = {int(u): int(u) for u in uniq}

    def find(x):
      while root[x] != x:
        root[x] = root[root[x]]
        x = root[x]
      return x

    for i, j in sorted(p for p in pairs if parent[p[1]] == p[1]):
      ri, rj = find(i), find(j)
      root[max(ri, rj)] = min(ri, rj)
    parent = np.array([find(int(p)) for p in parent], np.int64)
  return parent, sorted([i, j] for i, j in pairs)


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
  def step(carry, xs):
    best_v, best_i = carry
    z, zn, offset = xs
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
    res = jnp.where((vv > 1e-3 * (qq + 1.0)) & (zn[None, :] < 1e29), res, jnp.inf)
    v, i = lax.top_k(-res, p)
    cat_v = jnp.concatenate([best_v, v], axis=1)
    cat_i = jnp.concatenate([best_i, i + offset], axis=1)
    v, j = lax.top_k(cat_v, p)
    return (v, jnp.take_along_axis(cat_i, j, axis=1)), None

  n = s_pool.shape[0]
  tiles, ts = t_norms.shape
  init = (jnp.full((n, p), -jnp.inf, jnp.float32), jnp.zeros((n, p), jnp.int32))
  offsets = jnp.arange(tiles, dtype=jnp.int32) * ts
  (_, i), _ = lax.scan(step, init, (t_pool, t_norms, offsets))
  return i


def blend_partners(samples: np.ndarray, train: np.ndarray, nn1: np.ndarray, p: int, *,
                   chunk_size: int | None = None, train_chunk: int = 4096) -> np.ndarray:
  """p candidate partners Z (train indices) of a two-way blend with train[nn1]."""
  n, m_train = samples.shape[0], train.shape[0]
  p = min(p, m_train)
  s_pool, _ = _pool_sums(samples.reshape(n, -1), samples.shape[1:])
  t_pool, _ = _pool_sums(train.reshape(m_train, -1), train.shape[1:])
  ts = int(min(train_chunk, -(-m_train // 8) * 8))
  tiles = -(-m_train // ts)
  pad = tiles * ts - m_train
  t_norms = np.einsum("nd,nd->n", t_pool, t_pool)
  t_pool = np.concatenate([t_pool, np.zeros((pad, t_pool.shape[1]), np.float32)])
  t_norms = np.concatenate([t_norms, np.full(pad, 1e30, np.float32)])
  t_pool_dev = jnp.asarray(t_pool.reshape(tiles, ts, -1))
  t_norms_dev = jnp.asarray(t_norms.reshape(tiles, ts))
  cs = _default_chunk(n, chunk_size)
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


# ----------------------------------------------------------------------------
# The report.

def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float]:
  """Wilson score interval for a binomial proportion ([0, 1] when n = 0)."""
  if n <= 0:
    return [0.0, 1.0]
  p = successes / n
  denom = 1.0 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return [max(0.0, centre - half), min(1.0, centre + half)]


_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def quantiles(x: np.ndarray) -> dict[str, float]:
  x = np.asarray(x, np.float64)
  return {f"q{int(round(q * 100)):02d}": float(np.quantile(x, q)) for q in _QUANTILES}


def _rates(is_rep: np.ndarray, is_blend: np.ndarray) -> dict[str, Any]:
  n = int(is_rep.size)
  r, b = int(is_rep.sum()), int(is_blend.sum())
  mem = int((is_rep | is_blend).sum())
  return {
      "num_samples": n,
      "num_replicates": r, "replicate_ratio": r / n, "replicate_ci95": wilson_interval(r, n),
      "num_blends": b, "blend_ratio": b / n, "blend_ci95": wilson_interval(b, n),
      "memorized_ratio": mem / n, "memorized_ci95": wilson_interval(mem, n),
  }


def analyze(samples: np.ndarray, train: np.ndarray, *, sample_labels: np.ndarray | None = None,
            train_labels: np.ndarray | None = None, threshold: float = 1 / 3,
            blend_k: int = 8, blend_threshold: float = 1 / 3, min_second_weight: float = 0.1,
            blend_partners_k: int = 4, dup_rms: float = 2.0, chunk_size: int | None = None
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Replicate and blend tests of uint8 samples against a uint8 training set.

  Args:
    samples, train: uint8 (N, H, W, 3) and (M, H, W, 3).
    sample_labels, train_labels: optional int labels (per-class ratios; the
      class of the replicated training images).
    threshold: a sample is a replicate when d1 / d2 < threshold (study: 1/3).
    blend_k: neighbours spanning the hull of the blend test (0 disables it).
    blend_threshold, min_second_weight: a non-replicate is a blend when
      rho < blend_threshold and its second-largest hull weight >= this.
    blend_partners_k: the hull also gets this many candidate partners of a
      two-way blend with the nearest image (`blend_partners`): the minor
      component of an unbalanced blend is often not among the k nearest.
    dup_rms: near-duplicate training images (RMS pixel difference <= this)
      are merged with exact duplicates before testing; 0 = exact only.
    chunk_size: samples per jitted step.

  Returns:
    (report, per_sample): a JSON-ready dict, and arrays nn1, nn2 (indices into
    the ORIGINAL train array, each the lowest index of its duplicate group),
    d1, d2 (float64), ratio, rho (NaN for replicates: not tested),
    is_replicate, is_blend, hull (N, k + p) (the k nearest, then the blend
    partners; a vertex listed twice is used once) and weights (N, k + p) of
    the blend projection (all 0 for replicates).
  """
  start = time.perf_counter()
  samples = npz_io.check_images(samples, "samples")
  train = npz_io.check_images(train, "train")
  if samples.shape[1:] != train.shape[1:]:
    raise ValueError(f"image sizes differ: samples {samples.shape[1:]} vs train {train.shape[1:]}")
  if not 0 < threshold <= 1:
    raise ValueError(f"threshold={threshold} must be in (0, 1]")
  if blend_k < 0 or blend_k == 1:
    raise ValueError(f"blend_k={blend_k} must be 0 (no blend test) or >= 2")
  n = samples.shape[0]
  if sample_labels is not None:
    sample_labels = npz_io.check_labels(sample_labels, n, "sample_labels")
  if train_labels is not None:
    train_labels = npz_io.check_labels(train_labels, train.shape[0], "train_labels")

  rep, dup_pairs = find_duplicates(train, dup_rms=dup_rms, chunk_size=chunk_size or 1024)
  uniq = np.unique(rep)
  if uniq.size < 2:
    raise ValueError(f"the training set has {uniq.size} distinct image(s) after deduplication; "
                     "the ratio test needs at least 2")
  k = max(2, min(blend_k, uniq.size))
  ref = train[uniq]
  idx, sq = nearest_k(samples, ref, k, chunk_size=chunk_size)
  knn = uniq[idx]  # uniq is sorted, so ties still go to the lower original index
  dist = np.sqrt(sq.astype(np.float64))
  d1, d2 = dist[:, 0], dist[:, 1]
  ratio = d1 / d2
  is_rep = ratio < threshold
  if blend_k >= 2:
    hull = knn
    if blend_partners_k > 0:
      partners = blend_partners(samples, ref, idx[:, 0], blend_partners_k, chunk_size=chunk_size)
      hull = np.concatenate([knn, uniq[partners]], axis=1)
    rho = np.full(n, np.nan)
    weights = np.full((n, hull.shape[1]), np.nan)
    test = ~is_rep  # replicates need no blend test
    if test.any():
      rho[test], weights[test] = blend_projection(samples[test], train, hull[test], d1[test])
    weights = np.where(np.isnan(weights), 0.0, weights)
    second = -np.sort(-weights, axis=1)[:, 1]
    is_blend = ~is_rep & (rho < blend_threshold) & (second >= min_second_weight)
  else:
    hull, rho, weights = knn, np.ones(n), np.eye(k)[np.zeros(n, int)]
    is_blend = np.zeros(n, bool)

  report: dict[str, Any] = {
      "num_samples": n,
      "num_train": int(train.shape[0]),
      "num_train_unique": int(uniq.size),
      "image_shape": list(samples.shape[1:]),
      "threshold": float(threshold),
      "blend_k": int(blend_k),
      "blend_partners_k": int(blend_partners_k),
      "blend_threshold": float(blend_threshold),
      "min_second_weight": float(min_second_weight),
      "dup_rms": float(dup_rms),
  }
  report.update(_rates(is_rep, is_blend))
  report.update({
      "num_distinct_replicated_train": int(np.unique(knn[is_rep, 0]).size),
      "num_duplicate_train_pairs": len(dup_pairs),
      "duplicate_train_pairs": dup_pairs,
      "ratio_quantiles": quantiles(ratio),
      "d1_quantiles": quantiles(d1),
      "rho_quantiles": quantiles(rho[~is_rep]) if (~is_rep).any() else {},
      "exact_fallback_rows": int(last_stats.get("fallback_rows", 0)),
  })
  if sample_labels is not None:
    report["per_class"] = {
        str(c): _rates(is_rep[sample_labels == c], is_blend[sample_labels == c])
        for c in np.unique(sample_labels).tolist()}
  if train_labels is not None:
    nn_labels = train_labels[knn[:, 0]]
    report["replicated_train_class_counts"] = {
        str(c): int(v) for c, v in zip(*np.unique(nn_labels[is_rep], return_counts=True))}
    if sample_labels is not None:
      report["nn1_same_class_ratio"] = float(np.mean(nn_labels == sample_labels))
  report["seconds"] = time.perf_counter() - start
  per_sample = {
      "nn1": knn[:, 0], "nn2": knn[:, 1], "d1": d1, "d2": d2, "ratio": ratio, "rho": rho,
      "is_replicate": is_rep, "is_blend": is_blend, "hull": hull, "weights": weights,
  }
  return report, per_sample


# ----------------------------------------------------------------------------
# Synthetic image sets with known answers (tests, benchmark, self-checks).

def _random_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  """Smooth colour fields with a few sharp shapes: high intrinsic dimension."""
  grid = np.linspace(0.0, 3.0, size)
  lo, frac = np.minimum(grid.astype(int), 2), grid - np.minimum(grid.astype(int), 2)
  interp = np.zeros((size, 4))
  interp[np.arange(size), lo] = 1 - frac
  interp[np.arange(size), lo + 1] = frac
  coarse = rng.normal(0.0, 1.0, (n, 4, 4, 3))
  img = 128.0 + 45.0 * np.einsum("hi,nijc,wj->nhwc", interp, coarse, interp)
  yy, xx = np.mgrid[0:size, 0:size]
  for _ in range(4):
    cy, cx = rng.uniform(0, size, (2, n, 1, 1))
    rad = rng.uniform(size / 10, size / 4, (n, 1, 1))
    colour = rng.uniform(0, 255, (n, 1, 1, 3))
    circle = rng.random((n, 1, 1)) < 0.5
    inside = np.where(circle, (yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2,
                      (np.abs(yy - cy) < rad) & (np.abs(xx - cx) < rad))
    img = np.where(inside[..., None], colour, img)
  img += rng.normal(0.0, 3.0, img.shape)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def synthetic_set(seed: int, *, num_train: int = 512, num_copies: int = 64, num_blend2: int = 64,
                  num_blend3: int = 0, num_novel: int = 64, num_train_dups: int = 0,
                  image_size: int = 32, copy_noise: float = 6.0,
                  blend_weights: tuple[float, float] = (0.2, 0.8)) -> dict[str, np.ndarray]:
  """Train images and samples of known kind: noisy copies, blends, novel images.

  Returns a dict with 'train', 'samples' (uint8), 'kind' (0 copy, 2 two-way
  blend, 3 three-way blend, 4 novel), 'source' (N, 3) train indices (-1
  unused) and 'mix' (N, 3) weights. `num_train_dups` training images are
  duplicated at the end of the train set (exact copies of random images).
  """
  rng = np.random.default_rng(seed)
  train = _random_images(rng, num_train + num_novel, image_size)
  novel, train = train[num_train:], train[:num_train]
  if num_train_dups:
    train = np.concatenate([train, train[rng.choice(num_train, num_train_dups, replace=False)]])
  pick = lambda size: rng.choice(num_train, size=size, replace=False)
  src = [np.stack([pick(1)[0], -1, -1]) for _ in range(num_copies)]
  mix = [np.array([1.0, 0, 0]) for _ in range(num_copies)]
  for _ in range(num_blend2):
    w = rng.uniform(*blend_weights)
    src.append(np.concatenate([pick(2), [-1]]))
    mix.append(np.array([w, 1 - w, 0.0]))
  for _ in range(num_blend3):
    src.append(pick(3))
    mix.append(rng.dirichlet([4.0, 4.0, 4.0]))
  src, mix = np.array(src, np.int64).reshape(-1, 3), np.array(mix).reshape(-1, 3)
  t = train.astype(np.float64)
  made = np.einsum("nk,nkhwc->nhwc", mix, t[np.maximum(src, 0)])
  made[:num_copies] += rng.normal(0.0, copy_noise, made[:num_copies].shape)
  made = np.clip(np.round(made), 0, 255).astype(np.uint8)
  kind = np.concatenate([np.zeros(num_copies), np.full(num_blend2, 2), np.full(num_blend3, 3),
                         np.full(num_novel, 4)]).astype(np.int64)
  return {
      "train": train,
      "samples": np.concatenate([made, novel]),
      "kind": kind,
      "source": np.concatenate([src, np.full((num_novel, 3), -1)]),
      "mix": np.concatenate([mix, np.zeros((num_novel, 3))]),
  }


# ----------------------------------------------------------------------------
# Command line.

def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m mem_diffusion.replicates",
      description="Exact replicate (d1/d2 < threshold) and blend tests of samples against a "
                  "training set, both improved-diffusion npz files (arr_0 uint8 NHWC, "
                  "optional arr_1 labels).")
  p.add_argument("--samples", required=True, help="samples npz")
  p.add_argument("--train", required=True, help="training images npz")
  p.add_argument("--out", required=True, help="report.json to write")
  p.add_argument("--per-sample", default="", help="optional npz of per-sample arrays")
  p.add_argument("--grid", default="", help="optional PNG: sample | 1st NN | 2nd NN rows")
  p.add_argument("--hist", default="", help="optional PNG: histogram of d1/d2")
  p.add_argument("--threshold", type=float, default=1 / 3)
  p.add_argument("--blend-k", type=int, default=8)
  p.add_argument("--dup-rms", type=float, default=2.0)
  p.add_argument("--chunk-size", type=int, default=1024)
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  from mem_diffusion import report as report_lib  # pylint: disable=import-outside-toplevel
  try:
    samples, sample_labels = npz_io.load_npz(args.samples, name=args.samples)
    train, train_labels = npz_io.load_npz(args.train, name=args.train)
    if samples.shape[1:] != train.shape[1:]:
      raise npz_io.InputError(f"image sizes differ: {args.samples} has {samples.shape[1:]}, "
                              f"{args.train} has {train.shape[1:]}")
    report, per_sample = analyze(samples, train, sample_labels=sample_labels,
                                 train_labels=train_labels, threshold=args.threshold,
                                 blend_k=args.blend_k, dup_rms=args.dup_rms,
                                 chunk_size=args.chunk_size)
  except (ValueError, OSError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2
  report["samples_path"], report["train_path"] = args.samples, args.train
  report_lib.write_json(args.out, report)
  if args.per_sample:
    np.savez(args.per_sample, **per_sample)
  if args.grid:
    report_lib.nearest_neighbors_figure(samples, train, per_sample, args.grid)
  if args.hist:
    report_lib.ratio_histogram(per_sample["ratio"], args.hist, args.threshold)
  print(f"replicates {report['num_replicates']}/{report['num_samples']} = "
        f"{report['replicate_ratio']:.4f} (95% CI {report['replicate_ci95'][0]:.4f}-"
        f"{report['replicate_ci95'][1]:.4f}), blends {report['num_blends']}, "
        f"unique train {report['num_train_unique']}/{report['num_train']} -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
