"""Train sets made of Mondrians only: Mondrian hybrids (held-out Mondrians in
place of the cars) and the two populations of 'mondrian_classes'. 8x8, a
handful of images: no CIFAR-10, a few generator compiles."""

import json

import numpy as np
import pytest

from configs import default
from mem_diffusion import data
from mem_diffusion.data import checks, generators, mondrian

S = 8
N_ORIG, N_DUMMY = 6, 8


def _cfg(**kw):
  c = default.get_config().data
  c.dataset, c.image_size, c.num_original = "mondrian", S, N_ORIG
  c.dummy_kind, c.num_dummy = "hybrid", N_DUMMY
  for k, v in kw.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope="module")
def hybrid_set():
  return data.build_train_set(_cfg())


def test_mondrian_hybrids_are_built_from_pool_mondrians(hybrid_set, tmp_path):
  ts = hybrid_set
  assert ts.num_classes == 2 and ts.num_original == N_ORIG and len(ts) == N_ORIG + N_DUMMY
  np.testing.assert_array_equal(ts.labels, [0] * N_ORIG + [1] * N_DUMMY)
  assert set(ts.sources[:N_ORIG]) == {"mondrian"} and set(ts.sources[N_ORIG:]) == {"hybrid"}
  np.testing.assert_array_equal(ts.indices[N_ORIG:], np.arange(N_DUMMY))
  # No car behind a Mondrian hybrid: car_indices stay -1 and the manifest
  # rows carry no car_index.
  assert (ts.car_indices == -1).all()
  path = tmp_path / "manifest.json"
  data.write_manifest(ts, str(path), _cfg())
  rows = json.loads(path.read_text())["images"]
  assert rows[-1] == {"source": "hybrid", "index": N_DUMMY - 1, "label": 1}
  # The same formula, cutoff and mask as the car hybrids, pool Mondrian i for hybrid i.
  ids = np.arange(N_DUMMY)
  pool = mondrian.pool_images(0, ids, S)
  want = generators.hybrid_images(0, ids, pool, 0.25, mask="bin_fraction")
  np.testing.assert_array_equal(ts.images[N_ORIG:], want)
  np.testing.assert_array_equal(ts.images[:N_ORIG],
                                mondrian.mondrian_images(0, np.arange(N_ORIG), S))


def test_mondrian_hybrids_are_deterministic_per_seed_and_nested(hybrid_set):
  again = data.build_train_set(_cfg())
  np.testing.assert_array_equal(again.images, hybrid_set.images)
  smaller = data.build_train_set(_cfg(num_dummy=3))
  np.testing.assert_array_equal(smaller.images, hybrid_set.images[:N_ORIG + 3])
  other = data.build_train_set(_cfg(seed=1))
  assert not np.array_equal(other.images[N_ORIG:], hybrid_set.images[N_ORIG:])


def test_pool_is_neither_train_nor_heldout(hybrid_set):
  cfg = _cfg()
  pool = mondrian.pool_images(0, np.arange(N_DUMMY), S)
  train = mondrian.mondrian_images(0, np.arange(200), S)
  held = data.heldout_images(cfg, 200)
  np.testing.assert_array_equal(held, mondrian.mondrian_images(0, np.arange(200), S, heldout=True))
  assert data.heldout_available(cfg) == mondrian.POOL_OFFSET
  for ref in (train, held):
    # No pool image and no hybrid is a near-copy of a train or held-out Mondrian.
    assert checks.fresh_draw_ratio(pool, ref)[0] == 0.0
    assert checks.fresh_draw_ratio(hybrid_set.images[N_ORIG:], ref)[0] == 0.0
  with pytest.raises(ValueError, match="pool Mondrian indices"):
    mondrian.pool_images(0, np.array([mondrian.POOL_OFFSET]), S)


def test_mondrian_hybrid_low_frequencies_come_from_the_pool(hybrid_set):
  ids = np.arange(N_DUMMY)
  pool = mondrian.pool_images(0, ids, S)
  # cutoff 1: the pool Mondrian keeps its whole spectrum, so the hybrid is it.
  whole = data.build_train_set(_cfg(hybrid_cutoff=1.0))
  np.testing.assert_array_equal(whole.images[N_ORIG:], pool)
  hyb = hybrid_set.images[N_ORIG:].astype(np.float64)
  gm = generators.hybrid_gm_sources(0, ids, S).astype(np.float64)
  mean = lambda a: a.mean(axis=(1, 2))
  # The DC term comes from the pool Mondrian, not from the GM image (clipping aside).
  assert np.abs(mean(hyb) - mean(pool)).mean() < np.abs(mean(hyb) - mean(gm)).mean()
  # Low-pass both: the hybrid's low band is the pool Mondrian's, up to clipping/rounding.
  m = generators.lowpass_mask(S, 0.25, "corner_radius")[:, :, None]
  low = lambda a: np.fft.ifft2(m * np.fft.fft2(a, axes=(1, 2)), axes=(1, 2)).real
  assert np.abs(low(hyb) - low(pool)).mean() < 0.5 * np.abs(low(gm) - low(pool)).mean()


def _blue_share(images):
  """Share of pixels that are clearly blue (a colour only class 0 has)."""
  x = images.astype(np.int64)
  return float(np.mean(x[..., 2] - np.maximum(x[..., 0], x[..., 1]) > 80))


def test_mondrian_classes_two_populations():
  cfg = _cfg(dataset="mondrian_classes", class_counts=(100, 150), dummy_kind="", num_dummy=0)
  ts = data.build_train_set(cfg)
  assert ts.num_classes == 2 and ts.num_original == 250 and len(ts) == 250
  np.testing.assert_array_equal(ts.labels, [0] * 100 + [1] * 150)
  assert set(ts.sources[:100]) == {"mondrian"} and set(ts.sources[100:]) == {"mondrian_earth"}
  # Class 0 is the standard Mondrian train stream; class 1 has its own stream.
  np.testing.assert_array_equal(ts.images[:100], mondrian.mondrian_images(0, np.arange(100), S))
  np.testing.assert_array_equal(ts.images[100:], mondrian.earth_images(0, np.arange(150), S))
  # Visibly different: class 0 has blue cells, class 1 none.
  assert _blue_share(ts.images[:100]) > 0.03 and _blue_share(ts.images[100:]) == 0.0
  assert checks.fresh_draw_ratio(ts.images[100:], ts.images[:100])[0] == 0.0
  # Held-out images (eval's quality reference) are class 0's held-out stream.
  np.testing.assert_array_equal(data.heldout_images(cfg, 16),
                                mondrian.mondrian_images(0, np.arange(16), S, heldout=True))
  # Dummies come after both classes with the next label.
  with_gm = data.build_train_set(_cfg(dataset="mondrian_classes", class_counts=(2, 3),
                                      dummy_kind="gm", num_dummy=4))
  np.testing.assert_array_equal(with_gm.labels, [0, 0, 1, 1, 1, 2, 2, 2, 2])
  assert with_gm.num_classes == 3 and with_gm.num_original == 5
