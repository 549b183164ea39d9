"""Mondrian-style compositions: the original class of the paper's first run.

A picture lives in the unit square: a fixed number of split steps each cut one
existing rectangle (chosen with probability proportional to its area) by an
axis-aligned line at a continuous position (axis chosen in proportion to the
rectangle's side lengths, so long thin cells get cut across). Every cut leaves
a black line of 1-2 px (at 32x32; thickness scales with the canvas, so a 16x16
picture is the same composition rendered smaller). Cells take a colour from a
red/blue/yellow/white/black palette plus a small per-cell jitter.

Rendering is an exact box filter for cells and lines (pixel coverage of a
rectangle is the product of two 1-D interval overlaps); overlapping lines
combine as 1 - prod(1 - coverage). So edges are anti-aliased, never stepped.

Two populations share this construction and differ only in the palette:
'mondrian' (the paper's red/blue/yellow/white/black) and 'mondrian_earth'
(green/orange/greys), the second class of data.dataset='mondrian_classes'.
Its pictures are as complex as the first class's, so a gap in memorization
between the two classes comes from their counts, not from their difficulty;
no cell of it is red, blue or yellow, so the two are told apart at a glance.

Entropy matters: the study needs fresh draws that are not near-copies of a
2,000-image train set (see checks.py). The continuous split positions,
line thicknesses and colour jitter are what provide it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mem_diffusion.data import generators

MIN_SPLITS = 4
MAX_SPLITS = 12
SPLIT_RANGE = (0.15, 0.85)  # where along the chosen side a cut may fall
LINE_PX_AT_32 = (1.0, 2.0)  # line thickness range in pixels of a 32x32 canvas
COLOUR_JITTER = 0.04
PALETTE = np.array([
    [0.96, 0.95, 0.91],  # white
    [0.84, 0.10, 0.11],  # red
    [0.10, 0.20, 0.62],  # blue
    [0.98, 0.84, 0.10],  # yellow
    [0.06, 0.06, 0.07],  # black
], np.float32)
PALETTE_PROBS = np.array([0.44, 0.17, 0.17, 0.15, 0.07], np.float32)
# The second population: same roles (a light ground, three colours, a dark
# accent) and the same probabilities, other hues.
EARTH_PALETTE = np.array([
    [0.78, 0.78, 0.74],  # light grey
    [0.20, 0.52, 0.22],  # green
    [0.93, 0.52, 0.12],  # orange
    [0.45, 0.45, 0.47],  # mid grey
    [0.18, 0.22, 0.16],  # dark olive
], np.float32)
POPULATIONS = {"mondrian": PALETTE, "mondrian_earth": EARTH_PALETTE}
# Held-out stream indices from here on are the hybrid pool (`pool_images`);
# eval's held-out Mondrians are the indices below it.
POOL_OFFSET = 2**31


def _overlap(lo: jax.Array, hi: jax.Array, size: int) -> jax.Array:
  """Fraction of each pixel [i/S, (i+1)/S] covered by [lo, hi]; (..., S)."""
  edges = jnp.arange(size, dtype=jnp.float32) / size
  a = jnp.maximum(lo[..., None], edges)
  b = jnp.minimum(hi[..., None], edges + 1.0 / size)
  return jnp.clip(b - a, 0.0, None) * size


def _compose(key: jax.Array, palette: np.ndarray = PALETTE):
  """The random composition: leaf rectangles, their colours, line bands."""
  k_n, k_split, k_col, k_jit, k_thick = jax.random.split(key, 5)
  n_cuts = jax.random.randint(k_n, (), MIN_SPLITS, MAX_SPLITS + 1)
  n_rect = MAX_SPLITS + 1
  rects = jnp.zeros((n_rect, 4), jnp.float32).at[0].set(
      jnp.array([0.0, 0.0, 1.0, 1.0]))  # x0, y0, x1, y1
  lines = jnp.zeros((MAX_SPLITS, 4), jnp.float32)
  thick = jax.random.uniform(k_thick, (MAX_SPLITS,), minval=LINE_PX_AT_32[0],
                             maxval=LINE_PX_AT_32[1]) / 32.0

  def cut(j, carry):
    rects, lines = carry
    k_pick, k_axis, k_pos = jax.random.split(jax.random.fold_in(k_split, j), 3)
    w = rects[:, 2] - rects[:, 0]
    h = rects[:, 3] - rects[:, 1]
    exists = jnp.arange(n_rect) <= j
    logits = jnp.where(exists & (w * h > 0), jnp.log(jnp.maximum(w * h, 1e-12)),
                       -jnp.inf)
    r = jax.random.categorical(k_pick, logits)
    x0, y0, x1, y1 = rects[r]
    vertical = jax.random.uniform(k_axis) * (w[r] + h[r]) < w[r]
    frac = jax.random.uniform(k_pos, minval=SPLIT_RANGE[0], maxval=SPLIT_RANGE[1])
    xs = x0 + frac * (x1 - x0)
    ys = y0 + frac * (y1 - y0)
    t = thick[j] / 2
    first = jnp.where(vertical, jnp.stack([x0, y0, xs, y1]),
                      jnp.stack([x0, y0, x1, ys]))
    second = jnp.where(vertical, jnp.stack([xs, y0, x1, y1]),
                       jnp.stack([x0, ys, x1, y1]))
    band = jnp.where(vertical, jnp.stack([xs - t, y0, xs + t, y1]),
                     jnp.stack([x0, ys - t, x1, ys + t]))
    active = j < n_cuts
    rects = jnp.where(active, rects.at[r].set(first).at[j + 1].set(second), rects)
    lines = jnp.where(active, lines.at[j].set(band), lines)
    return rects, lines

  rects, lines = jax.lax.fori_loop(0, MAX_SPLITS, cut, (rects, lines))
  choice = jax.random.choice(k_col, len(palette), (n_rect,),
                             p=jnp.asarray(PALETTE_PROBS))
  colours = jnp.asarray(palette)[choice] + COLOUR_JITTER * jax.random.normal(
      k_jit, (n_rect, 3))
  return rects, jnp.clip(colours, 0.0, 1.0), lines


def mondrian_float(key: jax.Array, image_size: int,
                   palette: np.ndarray = PALETTE) -> jax.Array:
  rects, colours, lines = _compose(key, palette)
  cov_x = _overlap(rects[:, 0], rects[:, 2], image_size)  # (R, S)
  cov_y = _overlap(rects[:, 1], rects[:, 3], image_size)
  # Leaves partition the square, so coverages sum to one at every pixel.
  img = jnp.einsum("ry,rx,rc->yxc", cov_y, cov_x, colours)
  lx = _overlap(lines[:, 0], lines[:, 2], image_size)
  ly = _overlap(lines[:, 1], lines[:, 3], image_size)
  line_cov = ly[:, :, None] * lx[:, None, :]  # (L, S, S); unused lines are 0
  alpha = 1.0 - jnp.prod(1.0 - line_cov, axis=0)
  return img * (1.0 - alpha)[:, :, None]


@functools.lru_cache(maxsize=None)
def _per_image(image_size: int, population: str = "mondrian"):
  palette = POPULATIONS[population]
  return lambda key: generators.to_uint8(mondrian_float(key, image_size, palette))


@generators.on_cpu
def mondrian_images(seed: int, indices, image_size: int, *, heldout: bool = False,
                    batch_size: int = generators.DEFAULT_GEN_BATCH) -> np.ndarray:
  """Mondrian images of the train stream, or of a disjoint held-out stream
  (fresh draws for the quality figure and the fresh-draw control)."""
  tag = generators.STREAM_MONDRIAN_HELDOUT if heldout else generators.STREAM_MONDRIAN
  return generators.render_indexed(_per_image(image_size),
                                   generators.stream_key(seed, tag), indices,
                                   batch_size=batch_size)


@generators.on_cpu
def pool_images(seed: int, indices, image_size: int, *,
                batch_size: int = generators.DEFAULT_GEN_BATCH) -> np.ndarray:
  """Pool Mondrian i: held-out stream index POOL_OFFSET + i.

  The low-frequency sources of Mondrian hybrids, the Mondrian counterpart of
  the CIFAR car pool. Eval's held-out images are the held-out stream's
  indices below POOL_OFFSET (`heldout_available` says so), so a pool image is
  neither a train image nor a held-out one.
  """
  indices = np.asarray(indices, dtype=np.int64)
  if np.any(indices < 0) or np.any(indices >= POOL_OFFSET):
    raise ValueError(f"pool Mondrian indices must lie in [0, {POOL_OFFSET})")
  return mondrian_images(seed, POOL_OFFSET + indices, image_size, heldout=True,
                         batch_size=batch_size)


@generators.on_cpu
def earth_images(seed: int, indices, image_size: int, *,
                 batch_size: int = generators.DEFAULT_GEN_BATCH) -> np.ndarray:
  """The second population ('mondrian_earth' palette), from its own stream."""
  return generators.render_indexed(_per_image(image_size, "mondrian_earth"),
                                   generators.stream_key(seed, generators.STREAM_MONDRIAN_EARTH),
                                   indices, batch_size=batch_size)
