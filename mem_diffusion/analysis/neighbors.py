"""Exact k nearest training images of uint8 images, and duplicate detection.

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
   products and sums are integers far below 2^53).

The streaming top-k over training tiles (`top_k_scan`, with `tile_rows`) is
public: the blend test's partner search (`blends`) scans the same way.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from mem_diffusion import npz_io

_K = 1024  # contraction block: partial sums stay <= 1024 * 128^2 = 2^24
_PAD_NORM = 1 << 30  # squared norm of padding rows: farther than any real image
_MAX_DIM = (1 << 30) // (255 * 255)  # values per image for exact int32 distances

# Near-duplicate training images: RMS pixel difference (0..255) at or below
# this is invisible. The config key eval.dup_rms defaults to it.
DEFAULT_DUP_RMS = 2.0

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


def top_k_scan(score_tile, tiles, k: int, num_queries: int) -> tuple[jax.Array, jax.Array]:
  """The k lowest scores per query over training tiles, and their row indices.

  The one streaming top-k of the package (nearest images here, blend
  partners in `blends`): memory stays at one (queries, tile) score block
  however large the training set. Traceable: call it inside `jax.jit`.

  Args:
    score_tile: maps one tile (a pytree slice of `tiles`, leading axis the
      tile's rows) to float32 (num_queries, tile_size) scores; lower = nearer.
      Padding rows must score +inf or a value above every real one.
    tiles: pytree whose leaves have leading axes (num_tiles, tile_size), e.g.
      from `tile_rows`.
    k: how many to keep, k <= total rows.
    num_queries: rows of the score blocks.

  Returns:
    (scores (num_queries, k) ascending, int32 row indices (num_queries, k)).
    Ties go to the lower row index: within a tile `lax.top_k` keeps the lower
    position, and the running best (earlier tiles, lower rows) is placed
    before the new tile when the two are merged.
  """
  num_tiles, tile_size = jax.tree_util.tree_leaves(tiles)[0].shape[:2]

  def step(carry, xs):
    best_v, best_i = carry
    tile, offset = xs
    v, i = lax.top_k(-score_tile(tile), min(k, tile_size))
    cat_v = jnp.concatenate([best_v, v], axis=1)
    cat_i = jnp.concatenate([best_i, i + offset], axis=1)
    v, j = lax.top_k(cat_v, k)
    return (v, jnp.take_along_axis(cat_i, j, axis=1)), None

  init = (jnp.full((num_queries, k), -jnp.inf, jnp.float32),
          jnp.zeros((num_queries, k), jnp.int32))
  offsets = jnp.arange(num_tiles, dtype=jnp.int32) * tile_size
  (v, i), _ = lax.scan(step, init, (tiles, offsets))
  return -v, i


def tile_rows(x: np.ndarray, tile_size: int, fill) -> np.ndarray:
  """(M, ...) -> (ceil(M / tile_size), tile_size, ...), padded with `fill`.

  The host-side half of `top_k_scan`: callers pick a `fill` that scores
  worse than any real row (see `top_k_scan`).
  """
  tiles = -(-x.shape[0] // tile_size)
  pad = np.full((tiles * tile_size - x.shape[0],) + x.shape[1:], fill, x.dtype)
  return np.concatenate([x, pad]).reshape((tiles, tile_size) + x.shape[1:])


def train_tile_size(num_train: int, train_chunk: int) -> int:
  """Rows per scanned tile: `train_chunk`, or all rows (rounded up to 8) if fewer."""
  return int(min(train_chunk, -(-num_train // 8) * 8))


@functools.partial(jax.jit, static_argnames=("m",))
def _fast_topm(a_blocks, a_norms, t_blocks, t_norms, *, m):
  """m smallest (float32 key, index) per sample, scanning training tiles."""
  def score(tile):
    b_blocks, b_norms = tile
    dots = jnp.einsum("nck,mck->cnm", a_blocks, b_blocks, preferred_element_type=jnp.float32)
    dot = jnp.round(dots).astype(jnp.int32).sum(0)
    return (a_norms[:, None] + b_norms[None, :] - 2 * dot).astype(jnp.float32)

  return top_k_scan(score, (t_blocks, t_norms), m, a_blocks.shape[0])


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


def sample_chunk(n: int, chunk_size: int | None) -> int:
  """Samples per jitted step: `chunk_size` (default 1024), at most n rounded up to 8."""
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
  cs = sample_chunk(n, chunk_size)
  ts = train_tile_size(m_train, train_chunk)

  b_blocks, b_norms = _centred_blocks(b)
  t_blocks = jnp.asarray(tile_rows(b_blocks, ts, 0.0))
  t_norms = jnp.asarray(tile_rows(b_norms, ts, _PAD_NORM))
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
  (a copy of a duplicated image gets d1 = d2 = 0): the study's rule.
  """
  idx, sq = nearest_k(samples, train, 2, chunk_size=chunk_size)
  d = np.sqrt(sq.astype(np.float64))
  return idx[:, 0], idx[:, 1], d[:, 0], d[:, 1]


# ----------------------------------------------------------------------------
# Duplicated training images.

def pool_sums(flat_u8: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, int]:
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


def find_duplicates(train: np.ndarray, *, dup_rms: float = DEFAULT_DUP_RMS, chunk_size: int = 1024
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
    pooled, b = pool_sums(flat[uniq], train.shape[1:])
    norms = np.einsum("nd,nd->n", pooled.astype(np.float64), pooled.astype(np.float64))
    limit = float(dup_rms) ** 2 * flat.shape[1]
    r, r_norm = jnp.asarray(pooled), jnp.asarray(norms.astype(np.float32))
    cs = sample_chunk(uniq.size, chunk_size)
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
