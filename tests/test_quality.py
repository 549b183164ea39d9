"""Quality figures: feature distances and the d1 comparison behave as documented."""

import numpy as np
import pytest

from mem_diffusion.analysis import quality
from mem_diffusion.analysis import synthetic


def _blur(x):
  f = x.astype(np.float64)
  f = (f + np.roll(f, 1, 1) + np.roll(f, -1, 1)) / 3
  f = (f + np.roll(f, 1, 2) + np.roll(f, -1, 2)) / 3
  return np.clip(np.round(f), 0, 255).astype(np.uint8)


def _noise(x, rng):
  return np.clip(np.round(x + rng.normal(0, 12, x.shape)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sets():
  rng = np.random.default_rng(44)
  imgs = synthetic._random_images(rng, 900, 16)  # pylint: disable=protected-access
  return imgs[:300], imgs[300:600], imgs[600:], rng  # train, heldout, clean samples


def test_features_deterministic_and_finite(sets):
  _, heldout, _, _ = sets
  f1, f2 = quality.features(heldout), quality.features(heldout[::-1])
  assert np.isfinite(f1).all() and f1.shape[0] == 300
  np.testing.assert_array_equal(f1, f2[::-1])


def test_frechet_exact_cases():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 6))
  assert quality.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
  shift = np.arange(6.0)
  assert quality.frechet_distance(x, x + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-9)
  # One dimension: (m1 - m2)^2 + (s1 - s2)^2 with sample standard deviations.
  z = x[:, :1]
  m, sd = z.mean(), z.std(ddof=1)
  expected = (m - (2 * m + 1)) ** 2 + (sd - 2 * sd) ** 2
  assert quality.frechet_distance(z, 2 * z + 1) == pytest.approx(expected, rel=1e-9)


def test_ks_two_sample_hand_case():
  stat, p = quality.ks_two_sample(np.array([1.0, 2, 3, 4]), np.array([3.5, 5, 6, 7]))
  assert stat == pytest.approx(0.75)
  assert 0 < p < 1
  assert quality.ks_two_sample(np.arange(10.0), np.arange(10.0))[0] == 0.0


def test_quality_ranks_clean_above_blurred_and_noisy(sets, tmp_path):
  train, heldout, clean, rng = sets
  reports = {name: quality.quality_report(s, heldout, train)
             for name, s in [("clean", clean), ("blur", _blur(clean)), ("noise", _noise(clean, rng))]}
  c = reports["clean"]["features"]
  assert abs(c["kid"]) < 0.05 and abs(c["kid_heldout_split"]) < 0.05
  for bad in ("blur", "noise"):
    f = reports[bad]["features"]
    assert f["frechet"] > 1.5 * c["frechet"], bad
    assert f["kid"] > 0.3, bad
  assert reports["clean"]["d1"]["ks_statistic"] < reports["blur"]["d1"]["ks_statistic"]
  assert 0.7 < reports["clean"]["d1"]["median_ratio"] < 1.3


def test_quality_d1_flags_copies(sets, tmp_path):
  train, heldout, _, rng = sets
  copies = np.clip(train[:100].astype(int) + rng.integers(-3, 4, (100, 16, 16, 3)), 0, 255)
  fig = tmp_path / "d1.png"
  r = quality.quality_report(copies.astype(np.uint8), heldout, train, figure_path=str(fig))
  assert r["d1"]["frac_samples_below_heldout_p05"] == 1.0
  assert r["d1"]["median_ratio"] < 0.5 and r["d1"]["ks_statistic"] == 1.0
  assert fig.stat().st_size > 1000


def test_quality_rejects_mismatched_sets(sets):
  train, heldout, clean, _ = sets
  with pytest.raises(ValueError, match="sizes differ"):
    quality.quality_report(clean, heldout, np.zeros((5, 8, 8, 3), np.uint8))


@pytest.mark.parametrize("num_heldout,available,expected", [
    (1, 300, "eval.num_heldout=1 allows fewer than the 4"),
    (1000, 2, "fewer than 4 held-out real images of the original class exist"),
])
def test_missing_quality_names_the_limit_that_applied(sets, tmp_path, num_heldout, available,
                                                      expected):
  """The report says whether the setting or the data left too few held-out images."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from mem_diffusion.run import evaluate  # pylint: disable=g-import-not-at-top
  train, heldout, samples, _ = sets
  eval_cfg = default.get_config().eval
  eval_cfg.num_heldout = num_heldout
  kept = heldout[:min(num_heldout, available)]
  report = evaluate.evaluate_arrays(samples[:32], train, kept if len(kept) >= 4 else None,
                                    eval_cfg=eval_cfg, out_dir=str(tmp_path))
  assert expected in report["quality"]["unavailable"]
