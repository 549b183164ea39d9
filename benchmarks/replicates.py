"""Replicate detection: whole analysis vs one float32 matmul vs float64 brute force.

4k samples against 16k training images (32x32x3 uint8, synthetic: noisy
copies, 2- and 3-way blends, novel images, a few duplicated training images).
All three are timed in the same process, after a warm-up that compiles the
jitted code, so the ratios compare like with like on the same (shared) cores:

  detection_s   replicates.analyze: dedupe, exact k-NN, ratio and blend tests
  matmul_s      one jitted float32 (samples x train^T) matmul, the
                irreducible work of any L2 nearest-neighbour search
  brute_f64_s   chunked float64 NumPy: |a|^2 + |b|^2 - 2ab (exact for
                integer pixels), argmin, mask, argmin

Prints one JSON line. Target: identical answers, detection_s / matmul_s <= 3.

  python benchmarks/replicates.py [--samples 4000 --train 16000 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from mem_diffusion.analysis import replicates
from mem_diffusion.analysis import synthetic


def brute_force_two(samples: np.ndarray, train: np.ndarray, chunk: int = 512):
  a_all = samples.reshape(samples.shape[0], -1).astype(np.float64)
  b = train.reshape(train.shape[0], -1).astype(np.float64)
  nb = np.einsum("nd,nd->n", b, b)
  nn1 = np.empty(a_all.shape[0], np.int64)
  nn2 = np.empty_like(nn1)
  d1 = np.empty(a_all.shape[0])
  d2 = np.empty_like(d1)
  for s in range(0, a_all.shape[0], chunk):
    a = a_all[s:s + chunk]
    d = np.einsum("nd,nd->n", a, a)[:, None] + nb[None, :] - 2.0 * (a @ b.T)
    rows = np.arange(a.shape[0])
    i1 = np.argmin(d, axis=1)
    v1 = d[rows, i1].copy()
    d[rows, i1] = np.inf
    i2 = np.argmin(d, axis=1)
    nn1[s:s + chunk], nn2[s:s + chunk] = i1, i2
    d1[s:s + chunk], d2[s:s + chunk] = np.sqrt(v1), np.sqrt(d[rows, i2])
  return nn1, nn2, d1, d2


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--samples", type=int, default=4000)
  p.add_argument("--train", type=int, default=16000)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--seed", type=int, default=2024)
  args = p.parse_args()

  n_each = args.samples // 8
  data = synthetic.synthetic_set(
      args.seed, num_train=args.train - 40, num_train_dups=40, num_copies=2 * n_each,
      num_blend2=2 * n_each, num_blend3=n_each, num_novel=args.samples - 5 * n_each)
  samples, train = data["samples"], data["train"]

  # Warm-up (compilation) on the real shapes, then timed runs.
  t0 = time.perf_counter()
  replicates.analyze(samples, train)
  first_s = time.perf_counter() - t0
  det = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    report, per = replicates.analyze(samples, train)
    det.append(time.perf_counter() - t0)

  a = jnp.asarray(samples.reshape(samples.shape[0], -1).astype(np.float32))
  b = jnp.asarray(train.reshape(train.shape[0], -1).astype(np.float32))
  mm = jax.jit(lambda x, y: x @ y.T)
  mm(a, b).block_until_ready()
  mat = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    mm(a, b).block_until_ready()
    mat.append(time.perf_counter() - t0)

  rep, _ = replicates.find_duplicates(train)
  uniq = np.unique(rep)
  t0 = time.perf_counter()
  nn1, nn2, d1, d2 = brute_force_two(samples, train[uniq])
  brute_s = time.perf_counter() - t0
  nn1, nn2 = uniq[nn1], uniq[nn2]
  identical = bool(np.array_equal(nn1, per["nn1_dedup"]) and np.array_equal(nn2, per["nn2_dedup"])
                   and np.array_equal(d1, per["d1_dedup"]) and np.array_equal(d2, per["d2_dedup"])
                   and np.array_equal(d1 / d2 < 1 / 3, per["is_replicate_dedup"]))
  # The seed's rule: the train set as stored (a duplicated image's copy has d2 = 0).
  nn1, nn2, d1, d2 = brute_force_two(samples, train)
  identical &= bool(np.array_equal(nn1, per["nn1"]) and np.array_equal(nn2, per["nn2"])
                    and np.array_equal(d1, per["d1"]) and np.array_equal(d2, per["d2"])
                    and np.array_equal(replicates.distance_ratio(d1, d2) < 1 / 3,
                                       per["is_replicate"]))
  kind = data["kind"]
  detection_s, matmul_s = min(det), min(mat)
  print(json.dumps({
      "samples": int(samples.shape[0]), "train": int(train.shape[0]),
      "detection_s": round(detection_s, 3), "detection_first_call_s": round(first_s, 3),
      "matmul_f32_s": round(matmul_s, 3), "brute_f64_s": round(brute_s, 3),
      "detection_over_matmul": round(detection_s / matmul_s, 2),
      "identical_to_f64": identical,
      "exact_fallback_rows": report["exact_fallback_rows"],
      "duplicate_pairs": report["num_duplicate_train_pairs"],
      "copies_flagged": float(per["is_replicate_dedup"][kind == 0].mean()),
      "copies_flagged_seed_rule": float(per["is_replicate"][kind == 0].mean()),
      "blend2_flagged_blend": float(per["is_blend"][kind == 2].mean()),
      "blend2_flagged_any": float((per["is_blend"] | per["is_replicate_dedup"])[kind == 2].mean()),
      "blend3_flagged_any": float((per["is_blend"] | per["is_replicate_dedup"])[kind == 3].mean()),
      "novel_flagged": float((per["is_blend"] | per["is_replicate_dedup"])[kind == 4].mean()),
      "backend": jax.default_backend(),
  }))


if __name__ == "__main__":
  main()
