"""The 1/3 replicate test, the blend test, duplicates, and the replicates CLI.

The exact nearest-neighbour search lives in `neighbors` (its docstring says
why the answers equal a float64 brute force); the convex-hull projection in
`blends`.


Duplicates and blends
---------------------
Duplicated training images make d1 = d2 and hide copies, so `analyze` first
collapses exact duplicates (identical pixels) and near-duplicates (RMS pixel
difference <= `dup_rms`, default 2 levels of 255, i.e. invisible; grouped
transitively) onto their lowest index, and tests against those representatives.
A blend of training images passes the 1/3 test (d1 ~ d2), so each sample is
also projected onto the convex hull of its k nearest representatives; rho =
residual / d1, and a non-replicate is a blend when rho < threshold and the
second-largest convex weight is >= 0.1.

"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import numpy as np

from mem_diffusion import files
from mem_diffusion import neighbors
from mem_diffusion import npz_io
from mem_diffusion.blends import blend_partners, blend_projection
# Re-exported: the nearest-neighbour search is part of this module's API.
from mem_diffusion.neighbors import find_duplicates, nearest_k, nearest_two  # pylint: disable=unused-import

Z95 = 1.959963984540054


# ----------------------------------------------------------------------------
# The report.

def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float]:
  """Wilson score interval for a binomial proportion ([0, 1] when n = 0)."""
  if n <= 0:
    return [0.0, 1.0]
  p = successes / n
  denom = 1.0 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return [max(0.0, centre - half), min(1.0, centre + half)]


_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def quantiles(x: np.ndarray) -> dict[str, float]:
  x = np.asarray(x, np.float64)
  return {f"q{int(round(q * 100)):02d}": float(np.quantile(x, q)) for q in _QUANTILES}


def _rates(is_rep: np.ndarray, is_blend: np.ndarray) -> dict[str, Any]:
  n = int(is_rep.size)
  r, b = int(is_rep.sum()), int(is_blend.sum())
  mem = int((is_rep | is_blend).sum())
  return {
      "num_samples": n,
      "num_replicates": r, "replicate_ratio": r / n, "replicate_ci95": wilson_interval(r, n),
      "num_blends": b, "blend_ratio": b / n, "blend_ci95": wilson_interval(b, n),
      "memorized_ratio": mem / n, "memorized_ci95": wilson_interval(mem, n),
  }


def analyze(samples: np.ndarray, train: np.ndarray, *, sample_labels: np.ndarray | None = None,
            train_labels: np.ndarray | None = None, threshold: float = 1 / 3,
            blend_k: int = 8, blend_threshold: float = 1 / 3, min_second_weight: float = 0.1,
            blend_partners_k: int = 4, dup_rms: float = 2.0, chunk_size: int | None = None
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Replicate and blend tests of uint8 samples against a uint8 training set.

  Args:
    samples, train: uint8 (N, H, W, 3) and (M, H, W, 3).
    sample_labels, train_labels: optional int labels (per-class ratios; the
      class of the replicated training images).
    threshold: a sample is a replicate when d1 / d2 < threshold (study: 1/3).
    blend_k: neighbours spanning the hull of the blend test (0 disables it).
    blend_threshold, min_second_weight: a non-replicate is a blend when
      rho < blend_threshold and its second-largest hull weight >= this.
    blend_partners_k: the hull also gets this many candidate partners of a
      two-way blend with the nearest image (`blend_partners`): the minor
      component of an unbalanced blend is often not among the k nearest.
    dup_rms: near-duplicate training images (RMS pixel difference <= this)
      are merged with exact duplicates before testing; 0 = exact only.
    chunk_size: samples per jitted step.

  Returns:
    (report, per_sample): a JSON-ready dict, and arrays nn1, nn2 (indices into
    the ORIGINAL train array, each the lowest index of its duplicate group),
    d1, d2 (float64), ratio, rho (NaN for replicates: not tested),
    is_replicate, is_blend, hull (N, k + p) (the k nearest, then the blend
    partners; a vertex listed twice is used once) and weights (N, k + p) of
    the blend projection (all 0 for replicates).
  """
  start = time.perf_counter()
  samples = npz_io.check_images(samples, "samples")
  train = npz_io.check_images(train, "train")
  if samples.shape[1:] != train.shape[1:]:
    raise ValueError(f"image sizes differ: samples {samples.shape[1:]} vs train {train.shape[1:]}")
  if not 0 < threshold <= 1:
    raise ValueError(f"threshold={threshold} must be in (0, 1]")
  if blend_k < 0 or blend_k == 1:
    raise ValueError(f"blend_k={blend_k} must be 0 (no blend test) or >= 2")
  n = samples.shape[0]
  if sample_labels is not None:
    sample_labels = npz_io.check_labels(sample_labels, n, "sample_labels")
  if train_labels is not None:
    train_labels = npz_io.check_labels(train_labels, train.shape[0], "train_labels")

  rep, dup_pairs = find_duplicates(train, dup_rms=dup_rms, chunk_size=chunk_size or 1024)
  uniq = np.unique(rep)
  if uniq.size < 2:
    raise ValueError(f"the training set has {uniq.size} distinct image(s) after deduplication; "
                     "the ratio test needs at least 2")
  k = max(2, min(blend_k, uniq.size))
  ref = train[uniq]
  idx, sq = nearest_k(samples, ref, k, chunk_size=chunk_size)
  knn = uniq[idx]  # uniq is sorted, so ties still go to the lower original index
  dist = np.sqrt(sq.astype(np.float64))
  d1, d2 = dist[:, 0], dist[:, 1]
  ratio = d1 / d2
  is_rep = ratio < threshold
  if blend_k >= 2:
    hull = knn
    if blend_partners_k > 0:
      partners = blend_partners(samples, ref, idx[:, 0], blend_partners_k, chunk_size=chunk_size)
      hull = np.concatenate([knn, uniq[partners]], axis=1)
    rho = np.full(n, np.nan)
    weights = np.full((n, hull.shape[1]), np.nan)
    test = ~is_rep  # replicates need no blend test
    if test.any():
      rho[test], weights[test] = blend_projection(samples[test], train, hull[test], d1[test])
    weights = np.where(np.isnan(weights), 0.0, weights)
    second = -np.sort(-weights, axis=1)[:, 1]
    is_blend = ~is_rep & (rho < blend_threshold) & (second >= min_second_weight)
  else:
    hull, rho, weights = knn, np.ones(n), np.eye(k)[np.zeros(n, int)]
    is_blend = np.zeros(n, bool)

  report: dict[str, Any] = {
      "num_samples": n,
      "num_train": int(train.shape[0]),
      "num_train_unique": int(uniq.size),
      "image_shape": list(samples.shape[1:]),
      "threshold": float(threshold),
      "blend_k": int(blend_k),
      "blend_partners_k": int(blend_partners_k),
      "blend_threshold": float(blend_threshold),
      "min_second_weight": float(min_second_weight),
      "dup_rms": float(dup_rms),
  }
  report.update(_rates(is_rep, is_blend))
  report.update({
      "num_distinct_replicated_train": int(np.unique(knn[is_rep, 0]).size),
      "num_duplicate_train_pairs": len(dup_pairs),
      "duplicate_train_pairs": dup_pairs,
      "ratio_quantiles": quantiles(ratio),
      "d1_quantiles": quantiles(d1),
      "rho_quantiles": quantiles(rho[~is_rep]) if (~is_rep).any() else {},
      "exact_fallback_rows": int(neighbors.last_stats.get("fallback_rows", 0)),
  })
  if sample_labels is not None:
    report["per_class"] = {
        str(c): _rates(is_rep[sample_labels == c], is_blend[sample_labels == c])
        for c in np.unique(sample_labels).tolist()}
  if train_labels is not None:
    nn_labels = train_labels[knn[:, 0]]
    report["replicated_train_class_counts"] = {
        str(c): int(v) for c, v in zip(*np.unique(nn_labels[is_rep], return_counts=True))}
    if sample_labels is not None:
      report["nn1_same_class_ratio"] = float(np.mean(nn_labels == sample_labels))
  report["seconds"] = time.perf_counter() - start
  per_sample = {
      "nn1": knn[:, 0], "nn2": knn[:, 1], "d1": d1, "d2": d2, "ratio": ratio, "rho": rho,
      "is_replicate": is_rep, "is_blend": is_blend, "hull": hull, "weights": weights,
  }
  return report, per_sample


# ----------------------------------------------------------------------------
# Command line.

def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m mem_diffusion.replicates",
      description="Exact replicate (d1/d2 < threshold) and blend tests of samples against a "
                  "training set, both improved-diffusion npz files (arr_0 uint8 NHWC, "
                  "optional arr_1 labels).")
  p.add_argument("--samples", required=True, help="samples npz")
  p.add_argument("--train", required=True, help="training images npz")
  p.add_argument("--out", required=True, help="report.json to write")
  p.add_argument("--per-sample", default="", help="optional npz of per-sample arrays")
  p.add_argument("--grid", default="", help="optional PNG: sample | 1st NN | 2nd NN rows")
  p.add_argument("--hist", default="", help="optional PNG: histogram of d1/d2")
  p.add_argument("--threshold", type=float, default=1 / 3)
  p.add_argument("--blend-k", type=int, default=8)
  p.add_argument("--dup-rms", type=float, default=2.0)
  p.add_argument("--chunk-size", type=int, default=1024)
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  from mem_diffusion import report as report_lib  # pylint: disable=import-outside-toplevel
  try:
    for flag in ("out", "per_sample", "grid", "hist"):  # before any compute
      if getattr(args, flag):
        files.check_output_path(getattr(args, flag), "--" + flag.replace("_", "-"))
    samples, sample_labels = npz_io.load_npz(args.samples, name=args.samples)
    train, train_labels = npz_io.load_npz(args.train, name=args.train)
    if samples.shape[1:] != train.shape[1:]:
      raise npz_io.InputError(f"image sizes differ: {args.samples} has {samples.shape[1:]}, "
                              f"{args.train} has {train.shape[1:]}")
    report, per_sample = analyze(samples, train, sample_labels=sample_labels,
                                 train_labels=train_labels, threshold=args.threshold,
                                 blend_k=args.blend_k, dup_rms=args.dup_rms,
                                 chunk_size=args.chunk_size)
  except (ValueError, OSError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2
  report["samples_path"], report["train_path"] = args.samples, args.train
  files.write_json(args.out, report)
  if args.per_sample:
    np.savez(args.per_sample, **per_sample)
  if args.grid:
    report_lib.nearest_neighbors_figure(samples, train, per_sample, args.grid)
  if args.hist:
    report_lib.ratio_histogram(per_sample["ratio"], args.hist, args.threshold)
  print(f"replicates {report['num_replicates']}/{report['num_samples']} = "
        f"{report['replicate_ratio']:.4f} (95% CI {report['replicate_ci95'][0]:.4f}-"
        f"{report['replicate_ci95'][1]:.4f}), blends {report['num_blends']}, "
        f"unique train {report['num_train_unique']}/{report['num_train']} -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
