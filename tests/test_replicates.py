"""Exact nearest neighbours, duplicates, blend test and analyze() (the CLI: test_replicates_cli.py)."""

import itertools
import json

import numpy as np
import pytest

from mem_diffusion.analysis import blends
from mem_diffusion.analysis import neighbors
from mem_diffusion.analysis import replicates
from mem_diffusion.analysis import synthetic



def brute_knn(samples, train, k):
  """Reference: int64 sums of squared differences, stable sort (lower index wins)."""
  a = samples.reshape(samples.shape[0], -1).astype(np.int64)
  b = train.reshape(train.shape[0], -1).astype(np.int64)
  d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
  order = np.argsort(d, axis=1, kind="stable")[:, :k]
  return order, np.take_along_axis(d, order, axis=1)


@pytest.fixture(scope="module")
def small_set():
  rng = np.random.default_rng(101)
  train = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
  train[17] = train[40]  # exact duplicate: tie broken towards 17
  noisy = train[:60].astype(int) + rng.integers(-4, 5, (60, 8, 8, 3))
  samples = np.concatenate([np.clip(noisy, 0, 255).astype(np.uint8),
                            rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), train[40:41]])
  return samples, train


@pytest.mark.parametrize("chunk_size,train_chunk", [(8, 64), (32, 1000), (1024, 4096)])
def test_nearest_k_exact_and_chunk_invariant(small_set, chunk_size, train_chunk):
  samples, train = small_set
  idx, sq = replicates.nearest_k(samples, train, 5, chunk_size=chunk_size, train_chunk=train_chunk)
  ref_i, ref_d = brute_knn(samples, train, 5)
  np.testing.assert_array_equal(idx, ref_i)
  np.testing.assert_array_equal(sq, ref_d)
  assert idx[-1, 0] == 17 and idx[-1, 1] == 40 and sq[-1, 1] == 0


def test_nearest_two_float64_distances(small_set):
  samples, train = small_set
  nn1, nn2, d1, d2 = replicates.nearest_two(samples, train, chunk_size=16)
  ref_i, ref_d = brute_knn(samples, train, 2)
  np.testing.assert_array_equal(nn1, ref_i[:, 0])
  np.testing.assert_array_equal(nn2, ref_i[:, 1])
  assert d1.dtype == np.float64
  np.testing.assert_array_equal(d1, np.sqrt(ref_d[:, 0].astype(np.float64)))
  np.testing.assert_array_equal(d2, np.sqrt(ref_d[:, 1].astype(np.float64)))


def test_near_identical_bright_images_where_float32_cancels():
  rng = np.random.default_rng(7)
  base = rng.integers(240, 256, (1, 32, 32, 3)).astype(np.int64)
  tweaks = rng.integers(-2, 1, (64, 32, 32, 3)) * (rng.random((64, 32, 32, 3)) < 0.01)
  train = np.clip(base + tweaks, 0, 255).astype(np.uint8)
  samples = np.clip(base + rng.integers(-2, 1, (16, 32, 32, 3)) * (rng.random((16, 32, 32, 3)) < 0.01),
                    0, 255).astype(np.uint8)
  ref_i, ref_d = brute_knn(samples, train, 3)
  # The naive float32 expansion gets this wrong (the reason for exact re-ranking).
  a = samples.reshape(16, -1).astype(np.float32)
  b = train.reshape(64, -1).astype(np.float32)
  naive = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
  assert not np.array_equal(np.argmin(naive, axis=1), ref_i[:, 0])
  idx, sq = replicates.nearest_k(samples, train, 3, chunk_size=8, train_chunk=16)
  np.testing.assert_array_equal(idx, ref_i)
  np.testing.assert_array_equal(sq, ref_d)


def test_certificate_failure_falls_back_to_exact(small_set):
  samples, train = small_set
  # m = k leaves no room between the k-th and m-th candidate: every row is
  # recomputed by the float64 fallback, which must give the same answer.
  idx, sq = replicates.nearest_k(samples, train, 4, chunk_size=16, num_candidates=4)
  assert neighbors.last_stats["fallback_rows"] > 0
  ref_i, ref_d = brute_knn(samples, train, 4)
  np.testing.assert_array_equal(idx, ref_i)
  np.testing.assert_array_equal(sq, ref_d)


def test_find_duplicates_exact_and_near():
  rng = np.random.default_rng(3)
  train = rng.integers(0, 256, (50, 16, 16, 3), dtype=np.uint8)
  train[30] = train[4]
  train[31] = train[4]
  near = np.clip(train[9].astype(int) + rng.choice([-1, 1], train[9].shape), 0, 255)
  train[33] = near.astype(np.uint8)  # RMS <= 1: a near duplicate of 9
  far = np.clip(train[12].astype(int) + rng.choice([-5, 5], train[12].shape), 0, 255)
  train[35] = far.astype(np.uint8)  # RMS ~ 5 > 2: a distinct image
  rep, pairs = replicates.find_duplicates(train, dup_rms=2.0)
  assert [4, 30] in pairs and [4, 31] in pairs and [9, 33] in pairs
  assert rep[30] == rep[31] == 4 and rep[33] == 9 and rep[35] == 35
  assert np.unique(rep).size == 47
  rep0, pairs0 = replicates.find_duplicates(train, dup_rms=0.0)
  assert rep0[33] == 33 and [9, 33] not in pairs0 and np.unique(rep0).size == 48


def _enumerate_simplex_ls(g):
  """Reference: best feasible KKT point over all supports."""
  k = g.shape[0]
  best = np.inf
  for size in range(1, k + 1):
    for s in itertools.combinations(range(k), size):
      s = list(s)
      a = np.zeros((size + 1, size + 1))
      a[:size, :size] = 2 * g[np.ix_(s, s)]
      a[:size, size] = a[size, :size] = 1
      rhs = np.zeros(size + 1)
      rhs[size] = 1
      try:
        sol = np.linalg.solve(a, rhs)
      except np.linalg.LinAlgError:
        continue
      if (sol[:size] >= -1e-12).all():
        w = np.zeros(k)
        w[s] = sol[:size]
        best = min(best, w @ g @ w)
  return best


def test_simplex_least_squares_matches_enumeration():
  rng = np.random.default_rng(0)
  grams = []
  for _ in range(6):
    y = rng.normal(size=(5, 40)) + rng.normal(size=(1, 40))
    grams.append(y @ y.T)
  grams = np.stack(grams)
  grams /= grams[:, :1, :1]
  w, f = blends.simplex_least_squares(grams)
  assert np.allclose(w.sum(1), 1) and (w >= 0).all()
  ref = np.array([_enumerate_simplex_ls(g) for g in grams])
  np.testing.assert_allclose(f, ref, rtol=1e-5, atol=1e-9)


def test_wilson_interval_hand_checked():
  # 5 of 20 at z = 1.96: centre (0.25 + 0.09604) / 1.19208, half-width
  # 1.95996 * sqrt(0.009375 + 0.0024007) / 1.19208 -> [0.11186, 0.46870].
  lo, hi = replicates.wilson_interval(5, 20)
  assert abs(lo - 0.111862) < 1e-5 and abs(hi - 0.468701) < 1e-5
  assert replicates.wilson_interval(0, 10)[0] == 0.0
  assert replicates.wilson_interval(0, 0) == [0.0, 1.0]


@pytest.fixture(scope="module")
def analyzed():
  data = synthetic.synthetic_set(11, num_train=300, num_copies=30, num_blend2=30, num_blend3=15,
                                  num_novel=30, num_train_dups=4, image_size=16, copy_noise=4.0,
                                  blend_weights=(0.3, 0.7))
  labels = (np.arange(data["samples"].shape[0]) % 2).astype(np.int64)
  report, per = replicates.analyze(data["samples"], data["train"], sample_labels=labels,
                                   train_labels=np.zeros(data["train"].shape[0], np.int64),
                                   chunk_size=32)
  return data, report, per


def test_analyze_known_answers(analyzed):
  data, report, per = analyzed
  kind, src = data["kind"], data["source"]
  copies = kind == 0
  # The 4 duplicated training images are the copies appended at 300..303.
  duplicated = [i for i, _ in report["duplicate_train_pairs"]]
  copies_of_dup = copies & np.isin(src[:, 0], duplicated)
  # Duplicate-aware: every noisy copy is a replicate of its source.
  assert per["is_replicate_dedup"][copies].all()
  np.testing.assert_array_equal(per["nn1_dedup"][copies], src[copies, 0])
  # The seed's rule: a copy of a duplicated image has d1 = d2 (both copies are
  # equally near), so it is not a replicate; every other copy is.
  np.testing.assert_array_equal(per["is_replicate"][copies], ~copies_of_dup[copies])
  np.testing.assert_array_equal(per["ratio"][copies_of_dup], 1.0)
  np.testing.assert_array_equal(per["nn1"][copies], src[copies, 0])
  assert per["is_blend"][kind == 2].mean() >= 0.9
  assert (per["is_blend"] | per["is_replicate_dedup"])[kind == 3].mean() >= 0.6
  assert not (per["is_blend"] | per["is_replicate_dedup"] | per["is_replicate"])[kind == 4].any()
  assert not (per["is_blend"] & per["is_replicate_dedup"]).any()
  assert report["num_train"] == 304 and report["num_train_unique"] == 300
  assert len(report["duplicate_train_pairs"]) == 4 and report["num_duplicate_train_groups"] == 4
  assert all(j >= 300 for _, j in report["duplicate_train_pairs"])
  # Duplicate-aware indices never point at a duplicate's later copy; the
  # seed's nn2 does when the two nearest are the two stored copies.
  assert per["nn1_dedup"].max() < 300 and per["nn2_dedup"].max() < 300
  assert per["nn1"].max() < 300 and (per["nn2"][copies_of_dup] >= 300).all()
  np.testing.assert_allclose(per["ratio"], per["d1"] / per["d2"])
  np.testing.assert_allclose(per["ratio_dedup"], per["d1_dedup"] / per["d2_dedup"])
  n = kind.size
  for suffix in ("", "_dedup"):
    hits = int(per[f"is_replicate{suffix}"].sum())
    assert report[f"num_replicates{suffix}"] == hits
    assert report[f"replicate_ratio{suffix}"] == hits / n
    assert report[f"replicate_ci95{suffix}"] == replicates.wilson_interval(hits, n)
  assert report["num_replicates_dedup"] - report["num_replicates"] == copies_of_dup.sum()
  assert set(report["per_class"]) == {"0", "1"}
  assert sum(c["num_samples"] for c in report["per_class"].values()) == n
  assert sum(c["num_replicates_dedup"] for c in report["per_class"].values()) == (
      report["num_replicates_dedup"])
  assert report["replicated_train_class_counts"] == {"0": int(per["is_replicate"].sum())}
  json.dumps(report)


def _brute_ratios(samples, train, dup_rms):
  """Reference in float64: the seed's d1/d2 against train as stored, and the
  duplicate-aware one against the lowest index of each duplicate group."""
  a = samples.reshape(len(samples), -1).astype(np.float64)
  b = train.reshape(len(train), -1).astype(np.float64)
  dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
  # Groups: RMS difference <= dup_rms, closed transitively (connected components).
  rms = np.sqrt(((b[:, None, :] - b[None, :, :]) ** 2).mean(-1))
  group = np.arange(len(b))
  changed = True
  while changed:
    lowest = np.array([group[rms[i] <= dup_rms].min() for i in range(len(b))])
    changed = not np.array_equal(lowest, group)
    group = lowest
  reps = np.unique(group)

  def ratio(d):
    d = np.sort(d, axis=1)
    return np.array([1.0 if d2 == 0 else d1 / d2 for d1, d2 in d[:, :2]])

  return ratio(dist), ratio(dist[:, reps]), len(b) - len(reps)


def test_seed_ratio_vs_dedup_ratio_on_a_duplicated_image():
  """Done-when of the issue: a copy of a duplicated training image is not a
  replicate under the seed's rule (d1 = d2 = 0) and is one under the
  duplicate-aware rule; both ratios equal a float64 brute force."""
  rng = np.random.default_rng(1212)
  train = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
  train[25] = train[7]  # image 7 is stored twice
  near = np.clip(train[11].astype(int) + rng.choice([-1, 1], train[11].shape), 0, 255)
  train[30] = near.astype(np.uint8)  # RMS 1: a near duplicate of 11
  noisy = lambda i: np.clip(train[i].astype(int) + rng.integers(-3, 4, train[i].shape),
                            0, 255).astype(np.uint8)
  samples = np.stack([train[7], noisy(7), noisy(11), noisy(3), noisy(20),
                      rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)])
  report, per = replicates.analyze(samples, train, blend_k=0, dup_rms=2.0)
  seed_ref, dedup_ref, merged = _brute_ratios(samples, train, 2.0)
  np.testing.assert_array_equal(per["ratio"], seed_ref)
  np.testing.assert_array_equal(per["ratio_dedup"], dedup_ref)
  # The exact copy of the duplicated image 7: seed NOT replicated, dedup replicated.
  assert per["d1"][0] == per["d2"][0] == 0 and per["ratio"][0] == 1.0
  assert not per["is_replicate"][0] and per["is_replicate_dedup"][0]
  assert (per["nn1"][0], per["nn2"][0], per["nn1_dedup"][0]) == (7, 25, 7)
  np.testing.assert_array_equal(per["is_replicate"], seed_ref < 1 / 3)
  np.testing.assert_array_equal(per["is_replicate_dedup"], dedup_ref < 1 / 3)
  assert per["is_replicate"].tolist() == [False, False, False, True, True, False]
  assert per["is_replicate_dedup"].tolist() == [True, True, True, True, True, False]
  n = len(samples)
  assert report["replicate_ratio"] == (seed_ref < 1 / 3).sum() / n == 2 / 6
  assert report["replicate_ratio_dedup"] == (dedup_ref < 1 / 3).sum() / n == 5 / 6
  assert report["replicate_ci95_dedup"] == replicates.wilson_interval(5, 6)
  assert report["duplicate_train_pairs"] == [[7, 25], [11, 30]] and merged == 2
  assert report["num_duplicate_train_groups"] == 2 and report["num_train_unique"] == 38
  # dup_rms = 0 merges only exact copies: the near pair 11/30 is left alone.
  report0, per0 = replicates.analyze(samples, train, blend_k=0, dup_rms=0.0)
  np.testing.assert_array_equal(per0["ratio_dedup"], _brute_ratios(samples, train, 0.0)[1])
  assert report0["duplicate_train_pairs"] == [[7, 25]] and not per0["is_replicate_dedup"][2]
  np.testing.assert_array_equal(per0["ratio"], per["ratio"])  # the seed's rule ignores dup_rms


def test_analyze_rejects_bad_inputs():
  good = np.zeros((4, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match="at least 2"):
    replicates.analyze(good, np.zeros((5, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="sizes differ"):
    replicates.analyze(good, np.zeros((5, 16, 16, 3), np.uint8))
  with pytest.raises(ValueError, match="dtype float32"):
    replicates.analyze(good.astype(np.float32), good)
  with pytest.raises(ValueError, match="blend_k"):
    replicates.analyze(good, np.arange(10 * 192, dtype=np.uint8).reshape(10, 8, 8, 3), blend_k=1)


# ----------------------------------------------------------------------------
# Command line.
