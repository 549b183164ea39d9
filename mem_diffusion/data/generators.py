"""Seeded, jitted dummy-image generators: shared machinery, GM and hybrids.

Every image is a pure function of (stream key, index): image i is rendered from
`fold_in(stream, i)` alone. Generation therefore runs in fixed-size padded
chunks whose size cannot change any image, a 1k set is exactly the first half
of the 2k set, and any single image can be re-created for an audit.

Images leave this module as uint8 NHWC, rounded (round half to even) from
[0, 1] floats, i.e. what a PNG of the float picture would hold. That is the
form the replicate test and the pipeline see, so it is the form we fix here.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Stream tags: fold_in(root, tag) gives each source its own independent stream.
# Changing one of these numbers changes every set of that source: never do it.
STREAM_MONDRIAN = 1
STREAM_MONDRIAN_HELDOUT = 2
STREAM_GM = 3
STREAM_HYBRID = 4
STREAM_GEOMETRIC = 5
STREAM_CAR_SPLIT = 6  # CIFAR class splits: fold_in(stream, class)
_GM_BASE_TAG = 0xBA5E  # inside the GM stream: the 100 fixed base images

GM_NUM_BASES = 100
GM_NOISE_STD = 0.5
DEFAULT_GEN_BATCH = 256


def on_cpu(fn):
  """Runs `fn` with JAX's default device set to the host CPU.

  Sets are generated on the CPU on every machine: a GPU's sin/exp/FFT round
  differently, and a few pixels one step apart would make the "same" set
  differ between the machine that trains and the one that evaluates.
  """
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      return fn(*args, **kwargs)
  return wrapped


def root_key(seed: int) -> jax.Array:
  """The data root key. threefry is named explicitly so that a global
  `jax_default_prng_impl` setting cannot silently change every data set."""
  return jax.random.key(int(seed), impl="threefry2x32")


def stream_key(seed: int, tag: int) -> jax.Array:
  return jax.random.fold_in(root_key(seed), tag)


def to_uint8(x: jax.Array) -> jax.Array:
  """[0, 1] float -> uint8 by rounding, as writing a PNG would."""
  return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.uint8)


@on_cpu
def render_indexed(
    per_image: Callable[..., jax.Array],
    key: jax.Array,
    indices: np.ndarray,
    *args,
    consts: tuple = (),
    batch_size: int = DEFAULT_GEN_BATCH,
) -> np.ndarray:
  """Renders `per_image(fold_in(key, i), *consts, *args_i)` for every index i.

  `args` are arrays with a leading axis aligned with `indices` (e.g. the car
  each hybrid uses); `consts` are shared by all images (e.g. the GM bases).
  Chunks are padded to `batch_size` so one compiled program serves every
  chunk; padding rows are dropped.
  """
  indices = np.asarray(indices, dtype=np.int64)
  if indices.ndim != 1:
    raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if np.any(indices < 0) or np.any(indices >= 2**32):
    raise ValueError("image indices must lie in [0, 2**32)")
  fn = _batched(per_image)
  out = []
  for start in range(0, len(indices), batch_size):
    idx = indices[start:start + batch_size]
    n = len(idx)
    pad = batch_size - n
    idx_p = np.concatenate([idx, np.zeros(pad, np.int64)]).astype(np.uint32)
    chunk_args = []
    for a in args:
      a_c = np.asarray(a[start:start + batch_size])
      if pad:
        a_c = np.concatenate([a_c, np.zeros((pad,) + a_c.shape[1:], a_c.dtype)])
      chunk_args.append(a_c)
    out.append(np.asarray(fn(key, idx_p, consts, *chunk_args))[:n])
  if not out:
    return np.zeros((0,), np.uint8)
  return np.concatenate(out)


@functools.lru_cache(maxsize=None)
def _batched(per_image):
  # lax.map, not vmap: the per-image program is then compiled once for one
  # image and only the trip count depends on the chunk size. With vmap, XLA
  # vectorises differently per batch shape and a few pixels (sin/cos, norms)
  # came out one rounding step apart between chunk sizes 256 and 37.
  def run(key, idx, consts, *args):
    return jax.lax.map(
        lambda xs: per_image(jax.random.fold_in(key, xs[0]), *consts, *xs[1:]),
        (idx,) + args)
  return jax.jit(run)


# ---- GM: Gaussian mixture ------------------------------------------------------


def gm_bases(seed: int, image_size: int) -> jax.Array:
  """The 100 fixed mixture centres: i.i.d. U[0, 1] pixels, (100, H, W, 3)."""
  key = jax.random.fold_in(stream_key(seed, STREAM_GM), _GM_BASE_TAG)
  return jax.random.uniform(key, (GM_NUM_BASES, image_size, image_size, 3),
                            dtype=jnp.float32)


def gm_float(key: jax.Array, bases: jax.Array) -> jax.Array:
  """One GM image in [0, 1]: a uniformly drawn base + N(0, 0.5^2) per pixel."""
  k_pick, k_noise = jax.random.split(key)
  c = jax.random.randint(k_pick, (), 0, bases.shape[0])
  noise = GM_NOISE_STD * jax.random.normal(k_noise, bases.shape[1:], jnp.float32)
  return jnp.clip(bases[c] + noise, 0.0, 1.0)


def _gm_per_image(key, bases):
  return to_uint8(gm_float(key, bases))


@on_cpu
def gm_images(seed: int, indices, image_size: int, *,
              batch_size: int = DEFAULT_GEN_BATCH) -> np.ndarray:
  return render_indexed(_gm_per_image, stream_key(seed, STREAM_GM), indices,
                        consts=(gm_bases(seed, image_size),),
                        batch_size=batch_size)


# ---- hybrid: low frequencies of a car + high frequencies of a GM image ------------


def lowpass_mask(image_size: int, cutoff: float) -> np.ndarray:
  """Boolean (S, S) mask of the frequencies the car keeps, in fft2 layout.

  With integer frequency indices kx, ky in [-S/2, S/2) (numpy fftfreq * S),
  radius r = sqrt(kx^2 + ky^2) and the spectrum's radius R = the largest r on
  the grid (the corner, S / sqrt(2) for even S), the car keeps r <= cutoff * R.
  Compared in squared integers/float64 so boundary points (at S=32, cutoff
  0.25: kx = ky = 4) are kept deterministically. The mask is symmetric under
  k -> -k, so the mixed spectrum stays Hermitian and its inverse real.
  """
  if not 0.0 < cutoff <= 1.0:
    raise ValueError(f"data.hybrid_cutoff must be in (0, 1], got {cutoff}")
  k = np.round(np.fft.fftfreq(image_size) * image_size).astype(np.int64)
  r2 = k[:, None] ** 2 + k[None, :] ** 2
  return r2.astype(np.float64) <= (cutoff ** 2) * float(r2.max())


def hybrid_float(low: jax.Array, high: jax.Array, mask: jax.Array) -> jax.Array:
  """real(ifft2(M * fft2(low) + (1 - M) * fft2(high))) per channel, clipped."""
  f_low = jnp.fft.fft2(low, axes=(0, 1))
  f_high = jnp.fft.fft2(high, axes=(0, 1))
  m = mask[:, :, None]
  mixed = jnp.where(m, f_low, f_high)
  return jnp.clip(jnp.real(jnp.fft.ifft2(mixed, axes=(0, 1))), 0.0, 1.0)


def _hybrid_per_image(key, bases, mask, low_uint8):
  high = gm_float(key, bases)
  low = low_uint8.astype(jnp.float32) / 255.0
  return to_uint8(hybrid_float(low, high, mask))


@on_cpu
def hybrid_images(seed: int, indices, low_sources: np.ndarray, cutoff: float, *,
                  batch_size: int = DEFAULT_GEN_BATCH) -> np.ndarray:
  """Hybrid i = low frequencies of `low_sources[k]` (uint8, aligned with
  `indices`) + high frequencies of a fresh GM image keyed on (seed, i)."""
  low_sources = np.asarray(low_sources)
  if low_sources.dtype != np.uint8 or low_sources.ndim != 4:
    raise ValueError("hybrid low-frequency sources must be uint8 NHWC")
  if len(low_sources) != len(np.asarray(indices)):
    raise ValueError("one low-frequency source per hybrid index is needed")
  size = low_sources.shape[1]
  consts = (gm_bases(seed, size), jnp.asarray(lowpass_mask(size, cutoff)))
  return render_indexed(_hybrid_per_image, stream_key(seed, STREAM_HYBRID),
                        indices, low_sources, consts=consts,
                        batch_size=batch_size)


@on_cpu
def hybrid_gm_sources(seed: int, indices, image_size: int, *,
                      batch_size: int = DEFAULT_GEN_BATCH) -> np.ndarray:
  """The GM images whose high frequencies hybrids `indices` use (uint8), for
  illustrations: same key as in `hybrid_images`, before any mixing."""
  return render_indexed(_gm_per_image, stream_key(seed, STREAM_HYBRID), indices,
                        consts=(gm_bases(seed, image_size),), batch_size=batch_size)
