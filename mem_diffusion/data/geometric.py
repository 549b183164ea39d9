"""Simple geometric elements: circle, grid, gradient or line on a plain ground.

Each image draws one element type uniformly, then its layout (position, size,
thickness, orientation) and two colours (gradients: three, the middle one at a
random stop). Shapes are described in the unit
square by signed distance functions and drawn with a one-pixel linear ramp
across the edge (coverage = clip(0.5 - distance_in_pixels, 0, 1)), so edges
are smooth at every canvas size and geometry scales with the canvas.

Every family has at least eight continuous degrees of freedom, which keeps
near-duplicate pairs (1/3 ratio test) out of sets of a few thousand images.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mem_diffusion.data import generators

KINDS = ("circle", "grid", "gradient", "line")


def _colours(key):
  """Ground and ink colours at least 0.25 apart (circularly) in every channel,
  so the element is always visible."""
  k_bg, k_d = jax.random.split(key)
  bg = jax.random.uniform(k_bg, (3,))
  fg = jnp.mod(bg + jax.random.uniform(k_d, (3,), minval=0.25, maxval=0.75), 1.0)
  return bg, fg


def _direction(theta):
  return jnp.stack([jnp.cos(theta), jnp.sin(theta)])


def _circle(key, p, px):
  k_c, k_r, k_t = jax.random.split(key, 3)
  c = jax.random.uniform(k_c, (2,), minval=0.2, maxval=0.8)
  r = jax.random.uniform(k_r, minval=0.08, maxval=0.4)
  t = jax.random.uniform(k_t, minval=0.03, maxval=1.0) * r  # ring ... near-disc
  d = jnp.abs(jnp.linalg.norm(p - c, axis=-1) - r) - t / 2
  return jnp.clip(0.5 - d / px, 0.0, 1.0)


def _grid(key, p, px):
  k_a, k_s, k_t, k_o = jax.random.split(key, 4)
  theta = jax.random.uniform(k_a, maxval=jnp.pi / 2)
  spacing = jax.random.uniform(k_s, (2,), minval=0.12, maxval=0.35)
  t = jax.random.uniform(k_t, minval=0.02, maxval=0.07)
  off = jax.random.uniform(k_o, (2,)) * spacing
  u = p @ _direction(theta)
  v = p @ _direction(theta + jnp.pi / 2)
  du = jnp.abs(jnp.mod(u - off[0] + spacing[0] / 2, spacing[0]) - spacing[0] / 2)
  dv = jnp.abs(jnp.mod(v - off[1] + spacing[1] / 2, spacing[1]) - spacing[1] / 2)
  d = jnp.minimum(du, dv) - t / 2
  return jnp.clip(0.5 - d / px, 0.0, 1.0)


def _gradient(key, p, px):
  del px  # a gradient has no edge
  k_a, k_l, k_c = jax.random.split(key, 3)
  direction = _direction(jax.random.uniform(k_a, maxval=2 * jnp.pi))
  length = jax.random.uniform(k_l, minval=0.3, maxval=1.4)
  centre = jax.random.uniform(k_c, (2,), minval=0.3, maxval=0.7)
  return jnp.clip((p - centre) @ direction / length + 0.5, 0.0, 1.0)


def _line(key, p, px):
  k_c, k_a, k_l, k_t = jax.random.split(key, 4)
  c = jax.random.uniform(k_c, (2,), minval=0.2, maxval=0.8)
  direction = _direction(jax.random.uniform(k_a, maxval=jnp.pi))
  half = jax.random.uniform(k_l, minval=0.15, maxval=0.6)
  t = jax.random.uniform(k_t, minval=0.02, maxval=0.12)
  a = c - half * direction
  s = jnp.clip((p - a) @ direction, 0.0, 2 * half)
  d = jnp.linalg.norm(p - (a + s[..., None] * direction), axis=-1) - t / 2
  return jnp.clip(0.5 - d / px, 0.0, 1.0)


def geometric_float(key: jax.Array, image_size: int) -> jax.Array:
  k_kind, k_shape, k_col = jax.random.split(key, 3)
  kind = jax.random.randint(k_kind, (), 0, len(KINDS))
  centres = (jnp.arange(image_size, dtype=jnp.float32) + 0.5) / image_size
  p = jnp.stack(jnp.meshgrid(centres, centres, indexing="xy"), axis=-1)  # (y, x, [x, y])
  px = 1.0 / image_size
  alphas = jnp.stack([f(k_shape, p, px) for f in (_circle, _grid, _gradient, _line)])
  alpha = alphas[kind][:, :, None]
  bg, fg = _colours(k_col)
  two_tone = bg * (1.0 - alpha) + fg * alpha
  # Gradients pass through a third colour at a random stop: a two-colour ramp
  # is too smooth a family (a 4,000-image set had one 1/3-ratio near pair).
  k_mid, k_stop = jax.random.split(jax.random.fold_in(k_col, 1))
  mid = jax.random.uniform(k_mid, (3,))
  stop = jax.random.uniform(k_stop, minval=0.3, maxval=0.7)
  lo = jnp.clip(alpha / stop, 0.0, 1.0)
  hi = jnp.clip((alpha - stop) / (1.0 - stop), 0.0, 1.0)
  three_stop = jnp.where(alpha < stop, bg * (1 - lo) + mid * lo, mid * (1 - hi) + fg * hi)
  return jnp.where(kind == KINDS.index("gradient"), three_stop, two_tone)


@jax.jit
def _kinds(stream, indices):
  def one(i):
    k_kind = jax.random.split(jax.random.fold_in(stream, i), 3)[0]
    return jax.random.randint(k_kind, (), 0, len(KINDS))
  return jax.vmap(one)(indices)


@generators.on_cpu
def geometric_kinds(seed: int, indices) -> list[str]:
  """Which element each image shows (for previews and audits)."""
  stream = generators.stream_key(seed, generators.STREAM_GEOMETRIC)
  ids = np.asarray(_kinds(stream, np.asarray(indices, np.uint32)))
  return [KINDS[k] for k in ids]


@functools.lru_cache(maxsize=None)
def _per_image(image_size: int):
  return lambda key: generators.to_uint8(geometric_float(key, image_size))


@generators.on_cpu
def geometric_images(seed: int, indices, image_size: int, *,
                     batch_size: int = generators.DEFAULT_GEN_BATCH) -> np.ndarray:
  return generators.render_indexed(
      _per_image(image_size),
      generators.stream_key(seed, generators.STREAM_GEOMETRIC), indices,
      batch_size=batch_size)
