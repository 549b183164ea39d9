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
STREAM_MONDRIAN_EARTH = 7  # class 1 of data.dataset='mondrian_classes'
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


HYBRID_MASKS = ("corner_radius", "nyquist_radius", "bin_fraction")
DEFAULT_HYBRID_MASK = "bin_fraction"


def frequency_radius2(image_size: int) -> np.ndarray:
  """Squared integer frequency radius kx^2 + ky^2 per bin, in fft2 layout.

  Frequencies are numpy's fftfreq(S) * S, i.e. in [-S/2, S/2). The value is
  the same for k and -k (for even S, -(-S/2) aliases to -S/2 itself), so any
  mask that is a function of it is Hermitian-symmetric.
  """
  k = np.round(np.fft.fftfreq(image_size) * image_size).astype(np.int64)
  return k[:, None] ** 2 + k[None, :] ** 2


def lowpass_mask(image_size: int, cutoff: float, kind: str = DEFAULT_HYBRID_MASK) -> np.ndarray:
  """float64 (S, S) weight of the car's spectrum per frequency bin, fft2 layout.

  The seed's "25% low frequency of a car" (cutoff 0.25) has three readings:
  - 'corner_radius': |k| <= cutoff * R with R the spectrum's largest radius,
    its corner (S / sqrt(2) for even S). 101 of 1,024 bins at S = 32.
  - 'nyquist_radius': |k| <= cutoff * S / 2 (a fraction of the Nyquist
    frequency along an axis). 49 of 1,024 bins at S = 32.
  - 'bin_fraction': the car gets exactly cutoff * S^2 bins' worth, lowest |k|
    first. Whole rings of equal |k| are taken while they fit; the ring where
    the count runs out is shared: each of its bins gets the same weight
    (remaining / ring size), so no direction is preferred and there is no
    tie to break. 256 of 1,024 bins at S = 32.
  Radii are compared as squared integers against a float64 bound, so bins
  on the boundary are kept deterministically (corner, S = 32, cutoff 0.25:
  kx = ky = 4 is kept). Every weight is a function of |k|, so the mask is
  symmetric under k -> -k: the mixed spectrum stays Hermitian and its inverse
  real. Weights are 0 or 1 except on the shared 'bin_fraction' ring.
  """
  if not 0.0 < cutoff <= 1.0:
    raise ValueError(f"data.hybrid_cutoff must be in (0, 1], got {cutoff}")
  if kind not in HYBRID_MASKS:
    raise ValueError(f"data.hybrid_mask={kind!r}: expected one of {HYBRID_MASKS}")
  r2 = frequency_radius2(image_size)
  if kind == "corner_radius":
    return (r2.astype(np.float64) <= (cutoff ** 2) * float(r2.max())).astype(np.float64)
  if kind == "nyquist_radius":
    return (r2.astype(np.float64) <= (cutoff ** 2) * (image_size / 2) ** 2).astype(np.float64)
  budget = cutoff * image_size * image_size
  radii, sizes = np.unique(r2, return_counts=True)
  taken = np.cumsum(sizes)
  full = taken <= budget  # rings that fit whole
  weight = np.zeros(radii.size)
  weight[full] = 1.0
  partial = int(np.count_nonzero(full))
  if partial < radii.size:
    done = float(taken[partial - 1]) if partial else 0.0
    weight[partial] = (budget - done) / sizes[partial]
  return weight[np.searchsorted(radii, r2)]


def hybrid_float(low: jax.Array, high: jax.Array, mask: jax.Array) -> jax.Array:
  """real(ifft2(M * fft2(low) + (1 - M) * fft2(high))) per channel, clipped.

  Bins with weight exactly 1 or 0 are selected, not multiplied, so a 0/1
  mask gives the same pixels as a boolean one (and as before weights
  existed).
  """
  f_low = jnp.fft.fft2(low, axes=(0, 1))
  f_high = jnp.fft.fft2(high, axes=(0, 1))
  m = mask[:, :, None]
  mixed = jnp.where(m >= 1, f_low, jnp.where(m <= 0, f_high, m * f_low + (1 - m) * f_high))
  return jnp.clip(jnp.real(jnp.fft.ifft2(mixed, axes=(0, 1))), 0.0, 1.0)


def _hybrid_per_image(key, bases, mask, low_uint8):
  high = gm_float(key, bases)
  low = low_uint8.astype(jnp.float32) / 255.0
  return to_uint8(hybrid_float(low, high, mask))


@on_cpu
def hybrid_images(seed: int, indices, low_sources: np.ndarray, cutoff: float, *,
                  mask: str = DEFAULT_HYBRID_MASK,
                  batch_size: int = DEFAULT_GEN_BATCH) -> np.ndarray:
  """Hybrid i = low frequencies of `low_sources[k]` (uint8, aligned with
  `indices`) + high frequencies of a fresh GM image keyed on (seed, i);
  `mask` names the reading of `cutoff` (`lowpass_mask`)."""
  low_sources = np.asarray(low_sources)
  if low_sources.dtype != np.uint8 or low_sources.ndim != 4:
    raise ValueError("hybrid low-frequency sources must be uint8 NHWC")
  if len(low_sources) != len(np.asarray(indices)):
    raise ValueError("one low-frequency source per hybrid index is needed")
  size = low_sources.shape[1]
  # Every bin of a ring gets the same float32 weight: the mask stays symmetric.
  weights = lowpass_mask(size, cutoff, mask).astype(np.float32)
  consts = (gm_bases(seed, size), jnp.asarray(weights))
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
