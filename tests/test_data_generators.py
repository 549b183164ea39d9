"""Dummy-image generators: determinism, nestedness, recipes, entropy.

Images are 8x8 (16x16 where scale matters) to keep compile and run time low;
the full-size Mondrian control is in docs/data.md (mem_diffusion.data.checks).
"""

import math

import numpy as np
import pytest

from mem_diffusion.data import checks, generators, geometric, mondrian

S = 8
N = 2000


@pytest.fixture(scope="module")
def gm_set():
  return generators.gm_images(0, np.arange(N), S)


@pytest.fixture(scope="module")
def mondrian_train():
  return mondrian.mondrian_images(0, np.arange(500), S)


def _gen(name, indices, batch_size=generators.DEFAULT_GEN_BATCH, seed=0):
  if name == "mondrian":
    return mondrian.mondrian_images(seed, indices, S, batch_size=batch_size)
  if name == "gm":
    return generators.gm_images(seed, indices, S, batch_size=batch_size)
  if name == "geometric":
    return geometric.geometric_images(seed, indices, S, batch_size=batch_size)
  if name == "mondrian_earth":
    return mondrian.earth_images(seed, indices, S, batch_size=batch_size)
  if name == "mondrian_pool":
    return mondrian.pool_images(seed, indices, S, batch_size=batch_size)
  cars = np.random.default_rng(5).integers(0, 256, (64, S, S, 3), dtype=np.uint8)
  return generators.hybrid_images(seed, indices, cars[indices], 0.25,
                                  batch_size=batch_size)


@pytest.mark.parametrize("name", ["mondrian", "mondrian_earth", "mondrian_pool", "gm",
                                  "geometric", "hybrid"])
def test_deterministic_nested_and_batch_size_free(name):
  big = _gen(name, np.arange(40))
  assert big.dtype == np.uint8 and big.shape == (40, S, S, 3)
  np.testing.assert_array_equal(big, _gen(name, np.arange(40)))
  # A smaller set is a prefix of a larger one, whatever the chunk size.
  np.testing.assert_array_equal(_gen(name, np.arange(20), batch_size=7), big[:20])
  # Any single image can be re-created from its index alone.
  np.testing.assert_array_equal(_gen(name, np.array([33]), batch_size=7)[0], big[33])
  assert len({im.tobytes() for im in big}) == 40
  assert not np.array_equal(_gen(name, np.arange(40), seed=1), big)


def _p_below(a, sigma=generators.GM_NOISE_STD, grid=20001):
  """P(U + N < a), U ~ U[0, 1], N ~ N(0, sigma^2): integral of Phi over u."""
  u = np.linspace(0.0, 1.0, grid)
  phi = np.array([0.5 * (1 + math.erf((a - x) / (sigma * math.sqrt(2)))) for x in u])
  return float(np.trapezoid(phi, u) if hasattr(np, "trapezoid") else np.trapz(phi, u))


def test_gm_pixel_statistics_match_recipe(gm_set):
  x = gm_set.astype(np.float64)
  # Stored values round to the nearest of 0..255, so 0 <=> U + N < 0.5/255.
  p0 = _p_below(0.5 / 255)
  p255 = 1.0 - _p_below(254.5 / 255)
  assert 0.19 < p0 < 0.20  # ~0.195: the recipe's clip fraction at each end
  assert abs((x == 0).mean() - p0) < 0.006
  assert abs((x == 255).mean() - p255) < 0.006
  assert abs(x.mean() / 255 - 0.5) < 0.01


def test_gm_draws_bases_uniformly(gm_set):
  bases = np.asarray(generators.gm_bases(0, S)).reshape(generators.GM_NUM_BASES, -1)
  x = gm_set.reshape(N, -1).astype(np.float64) / 255
  d2 = (x ** 2).sum(1)[:, None] + (bases ** 2).sum(1)[None] - 2 * x @ bases.T
  counts = np.bincount(d2.argmin(1), minlength=generators.GM_NUM_BASES)
  assert (counts > 0).all() and counts.max() < 45  # 20 expected per base
  # Residual to the assigned base: E[(clip(U + N, 0, 1) - U)^2] per pixel.
  rng = np.random.default_rng(0)
  u = rng.random(1_000_000)
  want = np.mean((np.clip(u + 0.5 * rng.standard_normal(u.size), 0, 1) - u) ** 2)
  got = d2.min(1).mean() / x.shape[1]
  assert abs(got / want - 1) < 0.03


def test_lowpass_mask_definition():
  m = generators.lowpass_mask(32, 0.25, "corner_radius")
  k = np.fft.fftfreq(32) * 32
  r2 = k[:, None] ** 2 + k[None, :] ** 2
  assert m[4, 4] == 1 and m[-4, 4] == 1 and m[5, 3] == 0  # r^2 = 32 = (0.25 * 16 * sqrt 2)^2 kept
  assert m.sum() == (r2 <= 32).sum()
  np.testing.assert_array_equal(generators.lowpass_mask(32, 0.25, "nyquist_radius"), r2 <= 16)
  for kind in generators.HYBRID_MASKS:
    assert generators.lowpass_mask(8, 1.0, kind).min() == (kind != "nyquist_radius")
  with pytest.raises(ValueError, match="hybrid_cutoff"):
    generators.lowpass_mask(8, 0.0)
  with pytest.raises(ValueError, match="data.hybrid_mask='radius'"):
    generators.lowpass_mask(8, 0.25, "radius")


@pytest.mark.parametrize("size,want", [
    (32, {"corner_radius": 101, "nyquist_radius": 49, "bin_fraction": 256}),
    (8, {"corner_radius": 9, "nyquist_radius": 5, "bin_fraction": 16}),
])
def test_bins_kept_per_reading(size, want):
  r2 = generators.frequency_radius2(size)
  for kind, bins in want.items():
    m = generators.lowpass_mask(size, 0.25, kind)
    assert m.sum() == bins, kind
    assert ((m == 0) | (m == 1)).all() == (kind != "bin_fraction"), kind
  # bin_fraction: whole rings lowest |k| first, then one ring shared evenly.
  m = generators.lowpass_mask(size, 0.25, "bin_fraction")
  shared = (m > 0) & (m < 1)
  assert np.unique(m[shared]).size == 1 and np.unique(r2[shared]).size == 1
  assert r2[m == 1].max() < r2[shared].min() and r2[shared].max() < r2[m == 0].min()
  assert (shared.sum(), m[shared][0]) == (8, 3 / 8)  # 253 + 3 (32x32), 13 + 3 (8x8)


@pytest.mark.parametrize("size", [7, 8, 16, 32])
@pytest.mark.parametrize("kind", generators.HYBRID_MASKS)
def test_mask_is_hermitian_so_the_hybrid_is_real(size, kind):
  m = generators.lowpass_mask(size, 0.3, kind)
  conj = (-np.arange(size)) % size  # index of -k in fft2 layout
  np.testing.assert_array_equal(m, m[conj][:, conj])
  rng = np.random.default_rng(size)
  low, high = rng.random((2, size, size, 3))
  spec = (m[:, :, None] * np.fft.fft2(low, axes=(0, 1))
          + (1 - m[:, :, None]) * np.fft.fft2(high, axes=(0, 1)))
  assert np.abs(np.fft.ifft2(spec, axes=(0, 1)).imag).max() < 1e-12


def _old_hybrid_per_image(key, bases, mask, low_uint8):
  """The hybrid before data.hybrid_mask existed: a boolean corner-radius mask."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  high = generators.gm_float(key, bases)
  low = low_uint8.astype(jnp.float32) / 255.0
  mixed = jnp.where(mask[:, :, None], jnp.fft.fft2(low, axes=(0, 1)),
                    jnp.fft.fft2(high, axes=(0, 1)))
  return generators.to_uint8(jnp.clip(jnp.real(jnp.fft.ifft2(mixed, axes=(0, 1))), 0.0, 1.0))


@pytest.mark.parametrize("size", [8, 16])
def test_corner_radius_reproduces_the_old_hybrid_pixels(size):
  k = np.round(np.fft.fftfreq(size) * size).astype(np.int64)
  r2 = k[:, None] ** 2 + k[None, :] ** 2
  old_mask = r2.astype(np.float64) <= 0.25 ** 2 * float(r2.max())
  cars = np.random.default_rng(9).integers(0, 256, (20, size, size, 3), dtype=np.uint8)
  ids = np.arange(20)
  old = generators.render_indexed(
      _old_hybrid_per_image, generators.stream_key(0, generators.STREAM_HYBRID), ids, cars,
      consts=(generators.gm_bases(0, size), old_mask))
  new = generators.hybrid_images(0, ids, cars, 0.25, mask="corner_radius")
  np.testing.assert_array_equal(new, old)
  # The default reading (bin_fraction) gives other pixels.
  assert not np.array_equal(generators.hybrid_images(0, ids, cars, 0.25), old)


def test_hybrid_formula_against_numpy():
  rng = np.random.default_rng(0)
  low, high = rng.random((2, 16, 16, 3)).astype(np.float32)
  for kind in generators.HYBRID_MASKS:
    mask = generators.lowpass_mask(16, 0.25, kind)
    m = mask[:, :, None]
    f = m * np.fft.fft2(low, axes=(0, 1)) + (1 - m) * np.fft.fft2(high, axes=(0, 1))
    want = np.clip(np.fft.ifft2(f, axes=(0, 1)).real, 0, 1)
    got = np.asarray(generators.hybrid_float(low, high, mask.astype(np.float32)))
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=kind)


def test_hybrid_keeps_car_low_frequencies():
  cars = np.random.default_rng(1).integers(0, 256, (6, S, S, 3), dtype=np.uint8)
  # cutoff 1: the car keeps the whole spectrum, so the hybrid is the car.
  for kind in ("corner_radius", "bin_fraction"):
    np.testing.assert_array_equal(
        generators.hybrid_images(0, np.arange(6), cars, 1.0, mask=kind), cars)
  hyb = generators.hybrid_images(0, np.arange(6), cars, 0.25).astype(np.float64)
  gm = generators.hybrid_gm_sources(0, np.arange(6), S).astype(np.float64)
  mean = lambda a: a.mean(axis=(1, 2))
  # The DC term comes from the car, not from the GM image (clipping aside).
  assert np.abs(mean(hyb) - mean(cars)).mean() < np.abs(mean(hyb) - mean(gm)).mean()


def test_geometric_has_all_kinds_and_smooth_edges():
  kinds = geometric.geometric_kinds(0, np.arange(24))
  assert set(kinds) == set(geometric.KINDS)
  # Circles and lines leave most of the ground untouched.
  imgs = _gen("geometric", np.arange(24)).reshape(24, -1, 3)
  for kind, im in zip(kinds, imgs):
    if kind in ("circle", "line"):
      _, counts = np.unique(im, axis=0, return_counts=True)
      assert counts.max() >= im.shape[0] // 3, kind
  import jax  # pylint: disable=g-import-not-at-top
  centres = (np.arange(32) + 0.5) / 32
  p = np.stack(np.meshgrid(centres, centres, indexing="xy"), -1).astype(np.float32)
  alpha = np.asarray(geometric._circle(jax.random.key(0), p, 1 / 32))
  assert ((alpha > 0.02) & (alpha < 0.98)).sum() > 10  # anti-aliased edge pixels
  assert alpha.max() == 1.0 and alpha.min() == 0.0


def test_mondrian_smaller_canvas_is_same_composition():
  m8 = mondrian.mondrian_images(0, np.arange(16), 8).astype(np.float64)
  m16 = mondrian.mondrian_images(0, np.arange(16), 16).astype(np.float64)
  down = m16.reshape(16, 8, 2, 8, 2, 3).mean(axis=(2, 4))
  # Box filtering commutes with box averaging (up to rounding and line overlaps).
  assert np.abs(m8 - down).mean() < 6.0
  held = mondrian.mondrian_images(0, np.arange(16), 8, heldout=True).astype(np.float64)
  assert np.abs(m8 - held).mean() > 30.0  # the held-out stream is a different one


def test_mondrian_fresh_draw_control(mondrian_train):
  fresh = mondrian.mondrian_images(0, np.arange(500), S, heldout=True)
  ratio, _ = checks.fresh_draw_ratio(fresh, mondrian_train)
  assert ratio <= 0.01
  dup, _ = checks.self_duplicate_ratio(mondrian_train)
  assert dup == 0.0
  # The check can fail: near-copies of train images are flagged.
  noisy = np.clip(mondrian_train[:50].astype(int) + np.random.default_rng(0).integers(
      -2, 3, mondrian_train[:50].shape), 0, 255).astype(np.uint8)
  ratio_copies, _ = checks.fresh_draw_ratio(noisy, mondrian_train)
  assert ratio_copies == 1.0
  with_dup = np.concatenate([mondrian_train[:100], noisy[:1]])
  assert checks.self_duplicate_ratio(with_dup)[0] > 0


def test_nearest_two_is_exact():
  rng = np.random.default_rng(0)
  refs = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
  q = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
  idx, dist = checks.nearest_two(q, refs, chunk=3)
  brute = np.sqrt(((q.reshape(7, 1, -1).astype(np.int64)
                    - refs.reshape(1, 30, -1).astype(np.int64)) ** 2).sum(-1))
  np.testing.assert_array_equal(idx, np.argsort(brute, axis=1, kind="stable")[:, :2])
  np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :2], rtol=0, atol=1e-9)


def test_generated_train_sets_have_no_near_duplicates(gm_set):
  assert checks.self_duplicate_ratio(gm_set)[0] == 0.0
  geo = _gen("geometric", np.arange(1000))
  assert checks.self_duplicate_ratio(geo)[0] == 0.0
